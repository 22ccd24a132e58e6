"""The `preference` FineTune that `genforge review` offers: its manifest, and creating it.

The manifest is what a GitOps user commits (the CLI prints it); the page's "fine-tune on
these ratings" creates the same object through the Kubernetes API with the credentials of
whoever runs `genforge review` (their kubeconfig, or the pod's ServiceAccount in the chart's
review component), so RBAC decides, not genforge.

Defaults, from measurement (docs/benchmarks.md, "Human feedback, end to end"): 60 steps of
16 pairs at learning rate 3e-5 — on the demo's model and on the tests' tiny one, 1e-5 barely
moves the samples toward the rated attribute, 3e-5 moves them clearly (+25 to +45 points of
share) for a few per cent of denoising loss, and the CRD's 1e-4 damages the model (denoising
loss on fresh data +125 %) — and the CRD's β (5000). The Dataset, the pool and the budget are taken from the run that made the
rated version, so the fine-tune runs where and within what its base did.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from ..api import GROUP, VERSION

DEFAULT_STEPS = 60
DEFAULT_BATCH_SIZE = 16
DEFAULT_LEARNING_RATE = 3e-5
MAX_NAME = 63


@dataclasses.dataclass
class FineTuneRequest:
    namespace: str
    model: str
    version: str
    dataset: str
    feedback_uri: str
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    beta: float | None = None  # None: the CRD's default
    hardware: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    name: str | None = None

    def default_name(self, attempt: int = 1) -> str:
        suffix = "-feedback" + (f"-{attempt}" if attempt > 1 else "")
        stem = f"{self.model}-{self.version}".lower()[: MAX_NAME - len(suffix)].rstrip("-.")
        return stem + suffix


def manifest(request: FineTuneRequest, attempt: int = 1) -> dict[str, Any]:
    preference: dict[str, Any] = {"feedbackUri": request.feedback_uri}
    if request.beta is not None:
        preference["beta"] = request.beta
    spec: dict[str, Any] = {
        "baseModel": {"name": request.model, "version": request.version},
        "datasetRef": {"name": request.dataset},
        "method": "preference",
        "preference": preference,
        "training": {"steps": request.steps, "batchSize": request.batch_size,
                     "learningRate": request.learning_rate},
    }
    if request.hardware:
        spec["hardware"] = copy.deepcopy(request.hardware)
    if request.budget:
        spec["budget"] = copy.deepcopy(request.budget)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTune",
        "metadata": {
            "name": request.name or request.default_name(attempt),
            "namespace": request.namespace,
            "labels": {"genforge.dev/model": request.model, "genforge.dev/feedback-of": request.version},
        },
        "spec": spec,
    }


def to_yaml(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body, sort_keys=False)


def source_of(model_body: dict[str, Any], version: str, get) -> dict[str, Any]:
    """The Dataset name, hardware and budget of the run that made `version` (of the GenModel
    `model_body`); `get(kind, name)` reads an object of the model's namespace (None: gone).
    Empty values when the version, or its run, is no longer there."""
    found: dict[str, Any] = {}
    for record in (model_body.get("status") or {}).get("versions") or []:
        if record.get("name") != version:
            continue
        source = record.get("source") or {}
        run = get(source.get("kind"), source.get("name")) if source.get("kind") in ("TrainingRun", "FineTune") else None
        spec = (run or {}).get("spec") or {}
        if (spec.get("datasetRef") or {}).get("name"):
            found["dataset"] = spec["datasetRef"]["name"]
        for key in ("hardware", "budget"):
            if spec.get(key):
                found[key] = spec[key]
    return found


class ClusterFineTunes:
    """Create and read FineTunes with the caller's credentials (a kubernetes ApiClient)."""

    def __init__(self, api_client: Any):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)

    def create(self, request: FineTuneRequest) -> dict[str, Any]:
        """Create the FineTune; a taken default name gets the next suffix (-2, -3, …)."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(1, 100):
            body = manifest(request, attempt)
            try:
                return self.custom.create_namespaced_custom_object(GROUP, VERSION, request.namespace,
                                                                   "finetunes", body)
            except ApiException as exc:
                if exc.status == 409 and request.name is None:
                    continue
                raise
        raise RuntimeError("no free FineTune name after 99 attempts")

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunes", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
