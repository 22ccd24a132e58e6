"""Invalid resources are rejected by the CRD schema, each at the field a user has to fix."""

from __future__ import annotations

import pytest

from genforge_operator import schema

from .builders import DELETE, make

PREFERENCE = {"spec.method": "preference", "spec.lora": DELETE}


def version(name: str, run: str) -> dict:
    return {"name": name, "source": {"kind": "TrainingRun", "name": run}, "uri": f"file:///runs/{run}",
            "createdAt": "2026-01-01T00:00:00Z"}

# (id, kind, changes to the shipped example, expected error path, fragment of the message)
# fmt: off
INVALID = [
    # TrainingRun — hyperparameters and bounds
    ("steps-zero", "TrainingRun", {"spec.training.steps": 0},
     "spec.training.steps", "greater than or equal to 1"),
    ("steps-negative", "TrainingRun", {"spec.training.steps": -100},
     "spec.training.steps", "greater than or equal"),
    ("steps-a-string", "TrainingRun", {"spec.training.steps": "100"}, "spec.training.steps", "type integer"),
    ("steps-missing", "TrainingRun", {"spec.training.steps": DELETE},
     "spec.training.steps", "Required value"),
    ("steps-null", "TrainingRun", {"spec.training.steps": None}, "spec.training.steps", "Required value"),
    ("batch-zero", "TrainingRun", {"spec.training.batchSize": 0},
     "spec.training.batchSize", "greater than or equal"),
    ("learning-rate-zero", "TrainingRun", {"spec.training.learningRate": 0},
     "spec.training.learningRate", "greater than 0"),
    ("learning-rate-negative", "TrainingRun", {"spec.training.learningRate": -1.0e-4},
     "spec.training.learningRate", "greater than 0"),
    ("accumulation-zero", "TrainingRun", {"spec.training.gradientAccumulation": 0},
     "spec.training.gradientAccumulation", "greater than or equal to 1"),
    ("mixed-precision-fp8", "TrainingRun", {"spec.training.mixedPrecision": "fp8"},
     "spec.training.mixedPrecision", 'supported values: "no", "fp16", "bf16"'),
    ("mixed-precision-yaml-bool", "TrainingRun", {"spec.training.mixedPrecision": False},
     "spec.training.mixedPrecision", "type string"),
    ("scheduler-unknown", "TrainingRun", {"spec.training.lrScheduler": "step"},
     "spec.training.lrScheduler", "Unsupported value"),
    ("unknown-training-field", "TrainingRun", {"spec.training.epochs": 3},
     "spec.training.epochs", 'unknown field "spec.training.epochs"'),
    ("unknown-spec-field", "TrainingRun", {"spec.gpus": 8}, "spec.gpus", 'unknown field "spec.gpus"'),
    ("unknown-top-level-field", "TrainingRun", {"specs": {}}, "specs", 'unknown field "specs"'),
    ("model-ref-missing", "TrainingRun", {"spec.modelRef": DELETE}, "spec.modelRef", "Required value"),
    ("model-ref-without-name", "TrainingRun", {"spec.modelRef": {}}, "spec.modelRef.name", "Required value"),
    ("dataset-ref-empty-name", "TrainingRun", {"spec.datasetRef.name": ""},
     "spec.datasetRef.name", "at least 1"),
    ("spec-missing", "TrainingRun", {"spec": DELETE}, "spec", "Required value"),
    # TrainingRun — hardware
    ("nodes-zero", "TrainingRun", {"spec.hardware.nodes": 0},
     "spec.hardware.nodes", "greater than or equal to 1"),
    ("accelerators-per-node-zero", "TrainingRun", {"spec.hardware.acceleratorsPerNode": 0},
     "spec.hardware.acceleratorsPerNode", "greater than or equal to 1"),
    ("deadline-in-words", "TrainingRun", {"spec.hardware.deadline": "tomorrow"},
     "spec.hardware.deadline", "should match"),
    ("pool-name-uppercase", "TrainingRun", {"spec.hardware.pool": "GPU_L4"},
     "spec.hardware.pool", "should match"),
    # TrainingRun — budget: money and durations
    ("money-decimal-comma", "TrainingRun", {"spec.budget.maxCost": "12,50"},
     "spec.budget.maxCost", "should match"),
    ("money-currency-sign", "TrainingRun", {"spec.budget.maxCost": "$25"},
     "spec.budget.maxCost", "should match"),
    ("money-negative-string", "TrainingRun", {"spec.budget.maxCost": "-5"},
     "spec.budget.maxCost", "should match"),
    ("money-negative-integer", "TrainingRun", {"spec.budget.maxCost": -5},
     "spec.budget.maxCost", "greater than or equal to 0"),
    ("money-float", "TrainingRun", {"spec.budget.maxCost": 12.5},
     "spec.budget.maxCost", "integer or a string"),
    ("duration-in-words", "TrainingRun", {"spec.budget.maxDuration": "6 hours"},
     "spec.budget.maxDuration", "should match"),
    ("duration-days", "TrainingRun", {"spec.budget.maxDuration": "2d"},
     "spec.budget.maxDuration", "should match"),
    ("duration-a-number", "TrainingRun", {"spec.budget.maxDuration": 3600},
     "spec.budget.maxDuration", "type string"),
    ("on-exceeded-kill", "TrainingRun", {"spec.budget.onExceeded": "Kill"},
     "spec.budget.onExceeded", 'supported values: "Stop", "Suspend"'),
    # TrainingRun — checkpoint, evaluation, status
    ("checkpoint-keep-zero", "TrainingRun", {"spec.checkpoint.keep": 0},
     "spec.checkpoint.keep", "greater than"),
    ("checkpoint-every-zero", "TrainingRun", {"spec.checkpoint.everySteps": 0},
     "spec.checkpoint.everySteps", "greater than or equal to 1"),
    ("evaluation-samples-zero", "TrainingRun", {"spec.evaluation.samples": 0},
     "spec.evaluation.samples", "greater than or equal to 1"),
    ("evaluation-metric-unknown", "TrainingRun", {"spec.evaluation.metrics": ["loss", "psnr"]},
     "spec.evaluation.metrics[1]", 'supported values: "loss", "fid", "kid"'),
    ("evaluation-metric-twice", "TrainingRun", {"spec.evaluation.metrics": ["fid", "fid"]},
     "spec.evaluation.metrics", "Duplicate value"),
    ("queue-name-uppercase", "TrainingRun", {"spec.queueName": "Team A"}, "spec.queueName", "should match"),
    ("suspend-a-string", "TrainingRun", {"spec.suspend": "yes"}, "spec.suspend", "type boolean"),
    ("status-phase-unknown", "TrainingRun", {"status": {"phase": "Exploded"}},
     "status.phase", "Unsupported value"),
    ("status-unknown-field", "TrainingRun", {"status": {"kopf": {"progress": {}}}},
     "status.kopf", 'unknown field "status.kopf"'),
    ("status-condition-twice", "TrainingRun",
     {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}]}},
     "status.conditions[1]", "Duplicate value"),
    ("status-condition-status-yes", "TrainingRun",
     {"status": {"conditions": [{"type": "Ready", "status": "yes"}]}},
     "status.conditions[0].status", "Unsupported value"),
    ("status-time-not-rfc3339", "TrainingRun", {"status": {"startTime": "yesterday"}},
     "status.startTime", "date-time"),
    ("metadata-name-invalid", "TrainingRun", {"metadata.name": "Shapes_V1"}, "metadata.name", "RFC 1123"),
    ("api-version-wrong", "TrainingRun", {"apiVersion": "genforge.dev/v1"},
     "apiVersion", "genforge.dev/v1alpha1"),
    # FineTune
    ("lora-rank-zero", "FineTune", {"spec.lora.rank": 0}, "spec.lora.rank", "greater than or equal to 1"),
    ("lora-alpha-zero", "FineTune", {"spec.lora.alpha": 0}, "spec.lora.alpha", "greater than or equal to 1"),
    ("method-unknown", "FineTune", {"spec.method": "qlora"},
     "spec.method", 'supported values: "full", "lora", "dreambooth", "embedding", "preference"'),
    ("method-missing", "FineTune", {"spec.method": DELETE}, "spec.method", "Required value"),
    ("base-model-missing", "FineTune", {"spec.baseModel": DELETE}, "spec.baseModel", "Required value"),
    ("embedding-without-concept", "FineTune",
     {"spec.method": "embedding", "spec.lora": DELETE, "spec.embedding": {"initializer": "cat"}},
     "spec.embedding.concept", "Required value"),
    ("preference-beta-zero", "FineTune",
     {**PREFERENCE, "spec.preference": {"feedbackUri": "file:///data/f.jsonl", "beta": 0}},
     "spec.preference.beta", "greater than 0"),
    ("preference-uri-a-path", "FineTune", {**PREFERENCE, "spec.preference": {"feedbackUri": "/data/f.jsonl"}},
     "spec.preference.feedbackUri", "should match"),
    # AcceleratorPool
    ("per-node-zero", "AcceleratorPool", {"spec.accelerator.perNode": 0},
     "spec.accelerator.perNode", "greater than or equal to 1"),
    ("price-missing", "AcceleratorPool", {"spec.pricePerHour": DELETE},
     "spec.pricePerHour", "Required value"),
    ("price-in-words", "AcceleratorPool", {"spec.pricePerHour": "cheap"},
     "spec.pricePerHour", "should match"),
    ("throughput-zero", "AcceleratorPool", {"spec.relativeThroughput": 0},
     "spec.relativeThroughput", "greater than 0"),
    ("currency-lowercase", "AcceleratorPool", {"spec.currency": "usd"}, "spec.currency", "should match"),
    ("calibration-too-few-steps", "AcceleratorPool", {"spec.calibration": {"steps": 5}},
     "spec.calibration.steps", "greater than or equal to 10"),
    ("calibration-namespace-not-a-dns-label", "AcceleratorPool",
     {"spec.calibration": {"enabled": True, "namespace": "Team_A"}}, "spec.calibration.namespace", "should match"),
    ("toleration-effect-unknown", "AcceleratorPool", {"spec.tolerations": [{"key": "a", "effect": "Never"}]},
     "spec.tolerations[0].effect", "Unsupported value"),
    ("toleration-unknown-field", "AcceleratorPool",
     {"spec.tolerations": [{"key": "a", "operater": "Exists"}]},
     "spec.tolerations[0].operater", "unknown field"),
    ("node-selector-not-a-map-of-strings", "AcceleratorPool", {"spec.nodeSelector": {"gpu": True}},
     "spec.nodeSelector.gpu", "type string"),
    ("tpu-topology-in-words", "AcceleratorPool", {"spec.tpu": {"topology": "big"}},
     "spec.tpu.topology", "should match"),
    ("tpu-without-topology", "AcceleratorPool", {"spec.tpu": {}}, "spec.tpu.topology", "Required value"),
    ("resource-name-without-domain", "AcceleratorPool", {"spec.accelerator.resourceName": "gpu"},
     "spec.accelerator.resourceName", "should match"),
    # Budget
    ("budget-limit-missing", "Budget", {"spec.limit": DELETE}, "spec.limit", "Required value"),
    ("budget-limit-comma", "Budget", {"spec.limit": "1.000,00"}, "spec.limit", "should match"),
    ("budget-period-hourly", "Budget", {"spec.period": "Hourly"}, "spec.period", "Unsupported value"),
    ("warn-at-zero", "Budget", {"spec.warnAt": [0, 80]}, "spec.warnAt[0]", "greater than or equal to 1"),
    ("warn-at-over-100", "Budget", {"spec.warnAt": [50, 101]}, "spec.warnAt[1]", "less than or equal to 100"),
    ("on-exhausted-unknown", "Budget", {"spec.onExhausted": "Panic"},
     "spec.onExhausted", "Unsupported value"),
    ("selector-operator-unknown", "Budget",
     {"spec.selector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
     "spec.selector.matchExpressions[0].operator", "Unsupported value"),
    # Dataset
    ("source-missing", "Dataset", {"spec.source": DELETE}, "spec.source", "Required value"),
    ("source-uri-a-path", "Dataset", {"spec.source.uri": "/data/images"}, "spec.source.uri", "should match"),
    ("crop-unknown", "Dataset", {"spec.preparation.crop": "squash"},
     "spec.preparation.crop", 'supported values: "center", "random", "none"'),
    ("resolution-too-small", "Dataset", {"spec.preparation.resolution": 4},
     "spec.preparation.resolution", "greater than or equal to 8"),
    ("resolution-too-large", "Dataset", {"spec.preparation.resolution": 8192},
     "spec.preparation.resolution", "less than or equal to 4096"),
    ("max-items-zero", "Dataset", {"spec.preparation.maxItems": 0},
     "spec.preparation.maxItems", "greater than"),
    ("license-listed-twice", "Dataset", {"spec.license.allowed": ["cc0-1.0", "cc0-1.0"]},
     "spec.license.allowed", "Duplicate value"),
    ("privacy-unknown-field", "Dataset", {"spec.privacy.blurPlates": True},
     "spec.privacy.blurPlates", "unknown field"),
    # GenModel
    ("architecture-unknown", "GenModel", {"spec.architecture": "gan"},
     "spec.architecture", 'supported values: "unet2d-ddpm", "stable-diffusion"'),
    ("model-resolution-too-small", "GenModel", {"spec.resolution": 4},
     "spec.resolution", "greater than or equal"),
    ("block-out-channels-empty", "GenModel", {"spec.config.blockOutChannels": []},
     "spec.config.blockOutChannels", "at least 1 items"),
    ("block-out-channels-zero", "GenModel", {"spec.config.blockOutChannels": [16, 0]},
     "spec.config.blockOutChannels[1]", "greater than or equal to 1"),
    ("ddim-eta-above-one", "GenModel", {"spec.config.ddimEta": 1.5},
     "spec.config.ddimEta", "less than or equal to 1"),
    ("ddim-eta-negative", "GenModel", {"spec.config.ddimEta": -0.5},
     "spec.config.ddimEta", "greater than or equal to 0"),
    ("class-dropout-one", "GenModel", {"spec.config.classDropout": 1},
     "spec.config.classDropout", "less than or equal to 0.99"),
    ("guidance-below-one", "GenModel", {"spec.config.classDropout": 0.1, "spec.config.guidanceScale": 0.5},
     "spec.config.guidanceScale", "greater than or equal to 1"),
    ("guidance-above-twenty", "GenModel", {"spec.config.classDropout": 0.1, "spec.config.guidanceScale": 21},
     "spec.config.guidanceScale", "less than or equal to 20"),
    ("layers-per-block-zero", "GenModel", {"spec.config.layersPerBlock": 0},
     "spec.config.layersPerBlock", "greater than or equal to 1"),
    ("base-without-uri", "GenModel", {"spec.base": {}}, "spec.base.uri", "Required value"),
    ("status-version-twice", "GenModel", {"status": {"versions": [version("v1", "a"), version("v1", "b")]}},
     "status.versions[1]", "Duplicate value"),
]
# fmt: on


@pytest.mark.parametrize(
    ("kind", "changes", "path", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_resource_is_rejected_at_the_field(kind, changes, path, message):
    errors = schema.validate(make(kind, changes))
    assert {e.path for e in errors} == {path}, errors
    assert any(message in e.message for e in errors), errors


def test_every_error_is_reported_at_once():
    errors = schema.validate(
        make(
            "TrainingRun",
            {"spec.training.steps": 0, "spec.budget.maxCost": "12,50", "spec.evaluation.typo": 1},
        )
    )
    assert [e.path for e in errors] == ["spec.budget.maxCost", "spec.evaluation.typo", "spec.training.steps"]


def test_ids_are_unique():
    ids = [case[0] for case in INVALID]
    assert len(ids) == len(set(ids))
