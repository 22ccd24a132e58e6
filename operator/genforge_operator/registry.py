"""The model registry: GenModel.status.versions, latest and promoted.

Pure `register` decides; `add_version` applies it with an optimistic lock on the
GenModel's resourceVersion, so two runs finishing at once never lose a version.
"""

from __future__ import annotations

import random
import time

from .api import GenModelSpec, from_dict

MAX_ATTEMPTS = 5


def _version_number(name: str) -> int:
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else 0


def promoted_version(spec: GenModelSpec, versions: list[dict]) -> str | None:
    """The version with the best value of `spec.promotion.metric`; None if none has it."""
    metric = spec.promotion.metric
    scored = [v for v in versions if isinstance((v.get("metrics") or {}).get(metric), (int, float))]
    if not scored:
        return None
    sign = 1 if spec.promotion.lower_is_better else -1
    return min(scored, key=lambda v: (sign * v["metrics"][metric], -_version_number(v["name"])))["name"]


def register(model_body: dict, version: dict) -> tuple[dict | None, str]:
    """(status patch, version name) for adding `version`; (None, name) if already there.

    Idempotent: a version from the same source run is never added twice.
    """
    status = model_body.get("status") or {}
    versions = list(status.get("versions") or [])
    for existing in versions:
        if existing.get("source") == version["source"]:
            return None, existing["name"]
    name = f"v{max((_version_number(v['name']) for v in versions), default=0) + 1}"
    versions.append({"name": name, **version})
    spec = from_dict(GenModelSpec, model_body.get("spec") or {}, "spec")
    patch = {"versions": versions, "latest": name, "promoted": promoted_version(spec, versions) or name}
    return patch, name


class RegistryBusy(RuntimeError):
    """Every attempt lost the optimistic lock to another writer: try again later."""


def add_version(kube, namespace: str, run_body: dict, version: dict) -> str | None:
    """Record `version` on the run's GenModel; returns the version name (None: no GenModel).

    Raises `RegistryBusy` when other writers won every attempt (many runs finishing at
    once, all reconciled again after a restart): the caller must not record the run as
    finished without its version.
    """
    spec = run_body.get("spec") or {}
    model_name = (spec.get("modelRef") or spec.get("baseModel") or {}).get("name")
    for attempt in range(MAX_ATTEMPTS):
        model = kube.get("GenModel", namespace, model_name)
        if model is None:
            return None
        patch, name = register(model, version)
        if patch is None:
            return name
        if kube.replace_status_guarded("GenModel", namespace, model_name,
                                       model["metadata"]["resourceVersion"], patch):
            return name
        time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # jitter: the writers fall out of step
    raise RegistryBusy(f"GenModel {namespace}/{model_name} changed under each of {MAX_ATTEMPTS} attempts")
