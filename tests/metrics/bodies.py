"""Raw resource bodies (as kopf hands them to `on.event`) for the metrics tests.

Statuses are written as the reconciler writes them, with the numbers worked out by hand
in the comments, so a test compares the collector with independent figures.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

API = "genforge.dev/v1alpha1"
NS = "team-a"


def _meta(kind: str, name: str, namespace: str | None) -> dict:
    meta: dict[str, Any] = {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{namespace}/{name}")),
                            "generation": 1}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def body(kind: str, name: str, spec: dict, status: dict | None = None, namespace: str | None = NS) -> dict:
    out = {"apiVersion": API, "kind": kind, "metadata": _meta(kind, name, namespace), "spec": copy.deepcopy(spec)}
    if status is not None:
        out["status"] = copy.deepcopy(status)
    return out


def pool(name: str = "gpu-l4", *, type: str = "nvidia-l4", price: str = "0.71", measured: list | None = None,
         calibration: dict | None = None) -> dict:
    accelerator = {"type": "cpu"} if type == "cpu" else {"type": type, "resourceName": "nvidia.com/gpu", "perNode": 4}
    status = {**({"measured": measured} if measured else {}), **({"calibration": calibration} if calibration else {})}
    return body("AcceleratorPool", name, {"accelerator": accelerator, "pricePerHour": price},
                status or None, namespace=None)


RUN_SPEC = {
    "modelRef": {"name": "shapes"},
    "datasetRef": {"name": "shapes"},
    "training": {"steps": 1000, "batchSize": 32},
    "hardware": {"pool": "gpu-l4", "nodes": 1, "acceleratorsPerNode": 2},
    "budget": {"maxCost": "5", "maxDuration": "2h"},
}
FINETUNE_SPEC = {
    "baseModel": {"name": "shapes", "version": "v1"},
    "datasetRef": {"name": "lions"},
    "method": "lora",
    "lora": {"rank": 8, "alpha": 16},
    "training": {"steps": 200},
    "hardware": {"pool": "cpu"},
    "budget": {"maxCost": "0.50"},
}


def run(name: str, status: dict | None = None, *, kind: str = "TrainingRun", namespace: str = NS,
        spec: dict | None = None) -> dict:
    base = FINETUNE_SPEC if kind == "FineTune" else RUN_SPEC
    return body(kind, name, spec if spec is not None else base, status, namespace)


def budget(name: str = "team", status: dict | None = None, *, limit: str = "10", warn_at=(50, 80),
           namespace: str = NS) -> dict:
    return body("Budget", name, {"limit": limit, "period": "Monthly", "warnAt": list(warn_at), "onExhausted": "Stop"},
                status, namespace)


def dataset(name: str = "shapes", status: dict | None = None) -> dict:
    return body("Dataset", name, {"source": {"uri": "synthetic://shapes?count=64&size=32"}}, status)


def model(name: str = "shapes", versions: int = 0) -> dict:
    status = {"versions": [{"name": f"v{i + 1}", "source": {"kind": "TrainingRun", "name": "shapes-v1"},
                            "uri": f"file:///data/models/{name}/v{i + 1}", "createdAt": "2026-11-27T12:00:00Z"}
                           for i in range(versions)]}
    return body("GenModel", name, {"architecture": "unet2d-ddpm", "resolution": 32}, status)


def segment(start: str, end: str | None = None, *, pool: str = "gpu-l4", accelerators: int = 2,
            price: str = "0.71") -> dict:
    out = {"start": start, "pool": pool, "accelerators": accelerators, "pricePerHour": price}
    if end is not None:
        out["end"] = end
    return out
