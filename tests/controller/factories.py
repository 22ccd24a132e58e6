"""Small builders of parsed resources for table tests: make_run(training={"steps": 5}) etc."""

from __future__ import annotations

import copy
import uuid

from genforge_operator.api import Resource, parse_resource


def uid_of(kind: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{name}"))


def deep_merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resource(kind: str, name: str, spec: dict, status: dict | None = None, namespace: str | None = "team-a",
              labels: dict | None = None, generation: int = 1) -> Resource:
    meta = {"name": name, "uid": uid_of(kind, name), "generation": generation, "labels": labels or {}}
    if namespace is not None:
        meta["namespace"] = namespace
    return parse_resource({"apiVersion": "genforge.dev/v1alpha1", "kind": kind, "metadata": meta,
                           "spec": spec, "status": status or {}})


POOLS = {
    "cpu": {"accelerator": {"type": "cpu"}, "pricePerHour": "0.10", "relativeThroughput": 1.0},
    "gpu-l4": {"accelerator": {"type": "nvidia-l4", "resourceName": "nvidia.com/gpu", "perNode": 4},
               "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
               "pricePerHour": "0.71", "relativeThroughput": 20.0},
    "tpu-v5e": {"accelerator": {"type": "tpu-v5-lite-podslice", "resourceName": "google.com/tpu", "perNode": 4},
                "tpu": {"topology": "2x2"}, "pricePerHour": "1.20", "relativeThroughput": 40.0},
}


def make_pool(name: str = "cpu", **overrides) -> Resource:
    return _resource("AcceleratorPool", name, deep_merge(POOLS.get(name, POOLS["cpu"]), overrides), namespace=None)


def make_model(name: str = "shapes", status: dict | None = None, **overrides) -> Resource:
    spec = {"purpose": "shapes", "architecture": "unet2d-ddpm", "resolution": 32,
            "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1}}
    return _resource("GenModel", name, deep_merge(spec, overrides), status)


def make_dataset(name: str = "shapes", phase: str | None = "Ready", **overrides) -> Resource:
    spec = {"source": {"uri": "synthetic://shapes?count=64&size=32"}, "preparation": {"resolution": 32}}
    status = {"phase": phase, "uri": f"file:///data/datasets/team-a/{name}"} if phase else {}
    return _resource("Dataset", name, deep_merge(spec, overrides), status)


def make_run(name: str = "run-1", status: dict | None = None, generation: int = 1, labels=None,
             **overrides) -> Resource:
    spec = {"modelRef": {"name": "shapes"}, "datasetRef": {"name": "shapes"},
            "training": {"steps": 100, "batchSize": 8},
            "hardware": {"pool": "cpu"}, "budget": {"maxCost": "5", "maxDuration": "1h"},
            "checkpoint": {"everySteps": 50, "keep": 2}}
    return _resource("TrainingRun", name, deep_merge(spec, overrides), status, labels=labels,
                     generation=generation)


def make_finetune(name: str = "ft-1", status: dict | None = None, **overrides) -> Resource:
    spec = {"baseModel": {"name": "shapes"}, "datasetRef": {"name": "shapes"}, "method": "lora",
            "training": {"steps": 50, "batchSize": 8}, "hardware": {"pool": "cpu"},
            "budget": {"maxCost": "5"}}
    return _resource("FineTune", name, deep_merge(spec, overrides), status)


def make_budget(name: str = "team", status: dict | None = None, **overrides) -> Resource:
    return _resource("Budget", name, deep_merge({"limit": "100", "period": "Monthly"}, overrides), status)
