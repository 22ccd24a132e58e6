"""Shared builders for trainer tests."""

from __future__ import annotations

import copy
from typing import Any

BASE_DOCUMENT: dict[str, Any] = {
    "schemaVersion": "genforge.dev/v1alpha1",
    "command": "train",
    "run": {"kind": "TrainingRun", "namespace": "default", "name": "shapes-v1", "uid": "u-1"},
    "output": {"uri": "file:///data/runs/default/shapes-v1"},
    "checkpoint": {"uri": "file:///data/runs/default/shapes-v1/checkpoints", "everySteps": 500, "keep": 3},
    "model": {
        "name": "shapes",
        "architecture": "unet2d-ddpm",
        "resolution": 64,
        "config": {"blockOutChannels": [32, 64, 64], "layersPerBlock": 1},
        "baseUri": None,
        "baseAdapters": [],
    },
    "dataset": {"name": "shapes", "uri": "file:///data/datasets/default/shapes"},
    "training": {
        "steps": 2000,
        "batchSize": 32,
        "learningRate": 1e-4,
        "mixedPrecision": "no",
        "gradientAccumulation": 1,
        "seed": 0,
        "maxGradNorm": 1.0,
        "lrWarmupSteps": 0,
        "lrScheduler": "constant",
        "ema": False,
    },
    "evaluation": {"samples": 16, "metrics": ["loss", "fid"]},
    "distributed": {"nodes": 1, "processesPerNode": 1, "acceleratorType": "cpu"},
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_document(**overrides: Any) -> dict[str, Any]:
    """The contract's example document with sections deep-merged from overrides
    (a value of ``None`` replaces; use ``drop=[keys]`` to delete top-level keys)."""
    drop = overrides.pop("drop", ())
    doc = merge(BASE_DOCUMENT, overrides)
    for key in drop:
        doc.pop(key, None)
    return doc
