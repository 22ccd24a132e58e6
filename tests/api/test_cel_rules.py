"""The CRDs' CEL rules (`x-kubernetes-validations`), evaluated on allowed and rejected objects.

Evaluated with the `common-expression-language` package through
`genforge_operator.schema` (the same code the emulated API server uses), after CRD
defaulting, as the API server does. Rules covered — every rule in crds/ (the last test
fails if a rule has no rejected case here, or never holds on an allowed one):

- TrainingRun, FineTune: `hardware.pool: auto` needs `hardware.deadline`;
  `training.lrWarmupSteps <= training.steps`; `modelRef`/`baseModel`, `datasetRef`,
  `training`, `hardware`, `checkpoint`, `evaluation`, `output` (FineTune also `method` and
  the method blocks) are immutable after creation (`self == oldSelf`: a running trainer
  reads its spec once), while `budget`, `suspend` and `queueName` stay editable.
- FineTune: `lora` only with method lora, `dreambooth` only with dreambooth, `embedding`
  required for and only with embedding, `preference` required for and only with
  preference; method blocks cannot be added or removed after creation.
- Budget: `warnAt` values unique and ascending (the 1..100 range is a schema bound on the
  items, which reports the offending index); label-selector expressions: `values` non-empty
  exactly for In/NotIn.
- AcceleratorPool: accelerator type cpu ⇔ no resourceName; `tpu` only with, and required
  for, resourceName google.com/tpu; `calibration.enabled` needs `calibration.namespace`
  (a CEL keyword: the rule reads `self.__namespace__`, Kubernetes' escaping); tolerations: no value with Exists, empty key only with
  Exists, tolerationSeconds only with NoExecute.
- GenModel: stable-diffusion needs `base`, and a resolution divisible by 8; unet2d-ddpm's
  resolution divisible by 2^(levels-1) (message from messageExpression); `normNumGroups`
  divides every `blockOutChannels` entry; `guidanceScale` above 1 needs `classDropout` above 0.

Kubernetes CEL functions that needed a shim: only `isSorted()` (Kubernetes' list library),
registered by `schema._SHIMS`. Everything else is core CEL.
"""

from __future__ import annotations

import pytest

from genforge_operator import schema

from .builders import DELETE, make

NO_DEADLINE = {"spec.hardware": {"pool": "auto"}}
EMBEDDING = {"spec.method": "embedding", "spec.lora": DELETE, "spec.embedding": {"concept": "<my-shape>"}}
PREFERENCE = {
    "spec.method": "preference",
    "spec.lora": DELETE,
    "spec.preference": {"feedbackUri": "file:///data/feedback/shapes.jsonl"},
}
DREAMBOOTH = {"spec.method": "dreambooth", "spec.lora": DELETE, "spec.dreambooth": {}}
GPU = {"spec.accelerator": {"type": "nvidia-l4", "resourceName": "nvidia.com/gpu", "perNode": 4}}
TPU = {"spec.accelerator": {"type": "tpu-v5-lite-podslice", "resourceName": "google.com/tpu"}}
STABLE_DIFFUSION = {"spec.architecture": "stable-diffusion", "spec.resolution": 512}


def toleration(**fields) -> dict:
    return {"spec.tolerations": [fields]}


def selector(*expressions: dict) -> dict:
    return {"spec.selector": {"matchExpressions": list(expressions)}}


# (id, kind, changes to the example) — accepted on create
# fmt: off
ALLOWED = [
    ("run-named-pool-no-deadline", "TrainingRun", {}),
    ("run-auto-with-deadline", "TrainingRun", {"spec.hardware": {"pool": "auto", "deadline": "6h"}}),
    ("run-warmup-equal-to-steps", "TrainingRun",
     {"spec.training.steps": 150, "spec.training.lrWarmupSteps": 150}),
    ("finetune-lora", "FineTune", {}),
    ("finetune-lora-defaults", "FineTune", {"spec.lora": DELETE}),
    ("finetune-full", "FineTune", {"spec.method": "full", "spec.lora": DELETE}),
    ("finetune-dreambooth", "FineTune", DREAMBOOTH),
    ("finetune-embedding", "FineTune", EMBEDDING),
    ("finetune-preference", "FineTune", PREFERENCE),
    ("finetune-auto-with-deadline", "FineTune", {"spec.hardware": {"pool": "auto", "deadline": "90m"}}),
    ("budget-warn-ascending", "Budget", {"spec.warnAt": [25, 50, 75, 100]}),
    ("budget-warn-none", "Budget", {"spec.warnAt": []}),
    ("budget-selector", "Budget", selector({"key": "team", "operator": "In", "values": ["a"]},
                                           {"key": "ci", "operator": "DoesNotExist"})),
    ("pool-cpu", "AcceleratorPool", {}),
    ("pool-gpu", "AcceleratorPool", GPU),
    ("pool-tpu", "AcceleratorPool", {**TPU, "spec.tpu": {"topology": "2x4"}}),
    ("toleration-exists-without-key", "AcceleratorPool", toleration(operator="Exists")),
    ("pool-calibration-enabled-with-namespace", "AcceleratorPool",
     {"spec.calibration": {"enabled": True, "namespace": "team-a", "steps": 40}}),
    ("pool-calibration-off-without-namespace", "AcceleratorPool", {"spec.calibration": {"steps": 40}}),
    ("toleration-noexecute-seconds", "AcceleratorPool", toleration(key="spot", operator="Equal", value="true",
                                                                   effect="NoExecute", tolerationSeconds=30)),
    ("model-unet", "GenModel", {}),
    ("model-unet-one-level-any-resolution", "GenModel",
     {"spec.resolution": 33, "spec.config": {"blockOutChannels": [16]}}),
    ("model-stable-diffusion", "GenModel", {**STABLE_DIFFUSION, "spec.base": {"uri": "s3://models/sd-1.5"}}),
    ("model-attention-per-level", "GenModel", {"spec.config.blockOutChannels": [16, 32, 32],
                                               "spec.config.attention": [False, False, True]}),
    ("model-inference-steps-equal-timesteps", "GenModel",
     {"spec.config.numTrainTimesteps": 100, "spec.config.inferenceSteps": 100}),
    ("model-guidance-with-class-dropout", "GenModel",
     {"spec.config.classDropout": 0.1, "spec.config.guidanceScale": 3}),
    ("model-class-dropout-without-guidance", "GenModel", {"spec.config.classDropout": 0.1}),
    ("model-no-guidance-without-class-dropout", "GenModel", {"spec.config.guidanceScale": 1}),
    ("model-zero-terminal-snr-v-prediction", "GenModel",
     {"spec.config.predictionType": "v_prediction", "spec.config.rescaleBetasZeroSnr": True,
      "spec.config.timestepSpacing": "trailing"}),
    ("model-zero-terminal-snr-sample", "GenModel",
     {"spec.config.predictionType": "sample", "spec.config.rescaleBetasZeroSnr": True,
      "spec.config.timestepSpacing": "trailing"}),
    ("model-zero-terminal-snr-off-epsilon", "GenModel",
     {"spec.config.rescaleBetasZeroSnr": False, "spec.config.predictionType": "epsilon"}),
    ("finetune-lora-snr-gamma", "FineTune", {"spec.training.snrGamma": 5.0}),
    ("run-min-snr-ema-warmup", "TrainingRun",
     {"spec.training.snrGamma": 5.0, "spec.training.ema": True, "spec.training.emaDecay": 0.995}),
]
# fmt: on

# (id, kind, changes, expected error path, fragment of the message) — rejected on create
# fmt: off
REJECTED = [
    ("run-auto-without-deadline", "TrainingRun", NO_DEADLINE,
     "spec.hardware.deadline", "hardware.pool auto needs hardware.deadline"),
    ("run-default-hardware-is-auto", "TrainingRun", {"spec.hardware": DELETE},
     "spec.hardware.deadline", "Required value"),
    ("run-warmup-longer-than-training", "TrainingRun",
     {"spec.training.steps": 150, "spec.training.lrWarmupSteps": 151},
     "spec.training.lrWarmupSteps", "lrWarmupSteps must not exceed steps"),
    ("finetune-auto-without-deadline", "FineTune", NO_DEADLINE,
     "spec.hardware.deadline", "needs hardware.deadline"),
    ("finetune-warmup-longer", "FineTune", {"spec.training.lrWarmupSteps": 61},
     "spec.training.lrWarmupSteps", "must not exceed"),
    ("finetune-lora-block-with-full", "FineTune", {"spec.method": "full"},
     "spec.lora", "lora is only valid with method lora"),
    ("finetune-dreambooth-block-with-lora", "FineTune", {"spec.dreambooth": {}},
     "spec.dreambooth", "dreambooth is only valid with method dreambooth"),
    ("finetune-embedding-without-block", "FineTune", {"spec.method": "embedding", "spec.lora": DELETE},
     "spec.embedding", "required for method embedding"),
    ("finetune-embedding-block-with-lora", "FineTune", {"spec.embedding": {"concept": "<x>"}},
     "spec.embedding", "only valid with it"),
    ("finetune-preference-without-block", "FineTune", {"spec.method": "preference", "spec.lora": DELETE},
     "spec.preference", "required for method preference"),
    ("finetune-preference-block-with-lora", "FineTune", {"spec.preference": {"feedbackUri": "file:///f"}},
     "spec.preference", "only valid with it"),
    ("budget-warn-descending", "Budget", {"spec.warnAt": [80, 50]}, "spec.warnAt", "ascending"),
    ("budget-warn-duplicate", "Budget", {"spec.warnAt": [50, 50, 80]}, "spec.warnAt", "unique"),
    ("budget-selector-in-without-values", "Budget", selector({"key": "team", "operator": "In"}),
     "spec.selector.matchExpressions[0].values", "non-empty for operators In and NotIn"),
    ("budget-selector-exists-with-values", "Budget",
     selector({"key": "team", "operator": "Exists", "values": ["a"]}),
     "spec.selector.matchExpressions[0].values", "empty for Exists"),
    ("pool-cpu-with-resource-name", "AcceleratorPool", {"spec.accelerator.resourceName": "nvidia.com/gpu"},
     "spec.accelerator.resourceName", "a cpu pool has no accelerator.resourceName"),
    ("pool-gpu-without-resource-name", "AcceleratorPool", {"spec.accelerator.type": "nvidia-l4"},
     "spec.accelerator.resourceName", "accelerator.resourceName is required unless"),
    ("pool-gpu-with-tpu-block", "AcceleratorPool", {**GPU, "spec.tpu": {"topology": "2x2"}},
     "spec.tpu", "tpu is only valid for TPU pools"),
    ("pool-tpu-without-topology", "AcceleratorPool", TPU,
     "spec.tpu", "a TPU pool needs tpu.topology"),
    ("pool-calibration-enabled-without-namespace", "AcceleratorPool", {"spec.calibration": {"enabled": True}},
     "spec.calibration.namespace", "calibration.namespace is required when calibration.enabled is true"),
    ("toleration-exists-with-value", "AcceleratorPool", toleration(key="a", operator="Exists", value="b"),
     "spec.tolerations[0].value", "value must be empty when operator is Exists"),
    ("toleration-empty-key-equal", "AcceleratorPool", toleration(operator="Equal", value="b"),
     "spec.tolerations[0].operator", "operator must be Exists when key is empty"),
    ("toleration-seconds-without-noexecute", "AcceleratorPool",
     toleration(key="a", operator="Exists", effect="NoSchedule", tolerationSeconds=5),
     "spec.tolerations[0].tolerationSeconds", "only valid with effect NoExecute"),
    ("model-stable-diffusion-without-base", "GenModel", STABLE_DIFFUSION,
     "spec.base", "needs base.uri"),
    ("model-zero-terminal-snr-epsilon", "GenModel",
     {"spec.config.rescaleBetasZeroSnr": True, "spec.config.predictionType": "epsilon"},
     "spec.config.rescaleBetasZeroSnr", "needs predictionType v_prediction"),
    ("finetune-preference-snr-gamma", "FineTune", {**PREFERENCE, "spec.training.snrGamma": 5.0},
     "spec.training.snrGamma", "does not apply to method preference"),
    ("run-snr-gamma-zero", "TrainingRun", {"spec.training.snrGamma": 0},
     "spec.training.snrGamma", "should be greater than 0"),
    ("model-stable-diffusion-odd-resolution", "GenModel",
     {**STABLE_DIFFUSION, "spec.resolution": 500, "spec.base": {"uri": "s3://m/sd"}},
     "spec.resolution", "multiple of 8"),
    ("model-unet-resolution-not-divisible", "GenModel",
     {"spec.resolution": 30, "spec.config.blockOutChannels": [16, 32, 32]},
     "spec.resolution", "resolution must be divisible by 2^(number of config.blockOutChannels entries - 1)"),
    ("model-norm-groups-not-dividing", "GenModel", {"spec.config.normNumGroups": 3},
     "spec.config.normNumGroups", "normNumGroups must divide every blockOutChannels entry"),
    ("model-attention-wrong-length", "GenModel", {"spec.config.attention": [True]},
     "spec.config.attention", "one entry per blockOutChannels entry"),
    ("model-inference-steps-over-timesteps", "GenModel",
     {"spec.config.numTrainTimesteps": 100, "spec.config.inferenceSteps": 200},
     "spec.config.inferenceSteps", "cannot exceed numTrainTimesteps"),
    ("model-guidance-without-class-dropout", "GenModel", {"spec.config.guidanceScale": 2.5},
     "spec.config.guidanceScale", "guidanceScale above 1 needs classDropout above 0"),
    ("model-guidance-with-class-dropout-zero", "GenModel",
     {"spec.config.guidanceScale": 2, "spec.config.classDropout": 0},
     "spec.config.guidanceScale", "guidanceScale above 1 needs classDropout above 0"),
]
# fmt: on


def _updates():
    """(id, kind, changes of the old object, expected error path or None) — updates of the examples."""
    immutable_run = [
        ("training-steps", {"spec.training.steps": 300}, "spec.training"),
        ("training-learning-rate", {"spec.training.learningRate": 1.0e-4}, "spec.training"),
        ("model-ref", {"spec.modelRef.name": "other"}, "spec.modelRef"),
        ("dataset-ref", {"spec.datasetRef.name": "other"}, "spec.datasetRef"),
        ("hardware-pool", {"spec.hardware.pool": "gpu-l4"}, "spec.hardware"),
        ("hardware-nodes", {"spec.hardware.nodes": 2}, "spec.hardware"),
        ("output-uri", {"spec.output": {"uri": "file:///elsewhere"}}, "spec.output"),
        ("budget-raised", {"spec.budget.maxCost": "5", "spec.budget.maxDuration": "3h"}, None),
        ("budget-action", {"spec.budget.onExceeded": "Suspend"}, None),
        ("suspended", {"spec.suspend": True}, None),
        ("checkpoint", {"spec.checkpoint.everySteps": 10}, "spec.checkpoint"),
        ("checkpoint-keep", {"spec.checkpoint.keep": 5}, "spec.checkpoint"),
        ("evaluation", {"spec.evaluation.metrics": ["loss"]}, "spec.evaluation"),
        ("evaluation-removed", {"spec.evaluation": DELETE}, "spec.evaluation"),
        ("queue-name", {"spec.queueName": "team-a"}, None),
        ("status-only", {"status": {"phase": "Running"}}, None),
        ("labels", {"metadata.labels": {"team": "a"}}, None),
    ]
    for case_id, changes, path in immutable_run:
        yield f"run-{case_id}", "TrainingRun", changes, path
    immutable_finetune = [
        ("base-model", {"spec.baseModel.version": "v2"}, "spec.baseModel"),
        ("dataset-ref", {"spec.datasetRef.name": "other"}, "spec.datasetRef"),
        ("training", {"spec.training.steps": 61}, "spec.training"),
        ("hardware", {"spec.hardware.pool": "tpu-v5e"}, "spec.hardware"),
        ("lora-rank", {"spec.lora.rank": 16}, "spec.lora"),
        ("method", {"spec.method": "full", "spec.lora": DELETE}, "spec.method"),
        ("lora-block-removed", {"spec.lora": DELETE}, "spec"),
        ("output-uri", {"spec.output": {"uri": "file:///elsewhere"}}, "spec.output"),
        ("budget-raised", {"spec.budget.maxCost": 2}, None),
        ("suspended", {"spec.suspend": True}, None),
        ("evaluation", {"spec.evaluation.samples": 4}, "spec.evaluation"),
        ("checkpoint", {"spec.checkpoint.keep": 2}, "spec.checkpoint"),
        ("evaluation-removed", {"spec.evaluation": DELETE}, "spec.evaluation"),
    ]
    for case_id, changes, path in immutable_finetune:
        yield f"finetune-{case_id}", "FineTune", changes, path
    yield "embedding-concept", "FineTune-embedding", {"spec.embedding.concept": "<other>"}, "spec.embedding"
    yield "preference-feedback", "FineTune-preference", {"spec.preference.beta": 0.5}, "spec.preference"
    yield (
        "dreambooth-prompt",
        "FineTune-dreambooth",
        {"spec.dreambooth.instancePrompt": "a sks shape"},
        "spec.dreambooth",
    )
    for old_kind in ("FineTune-embedding", "FineTune-preference", "FineTune-dreambooth"):
        yield f"{old_kind.lower()}-budget-raised", old_kind, {"spec.budget.maxCost": "3"}, None
    yield "method-block-added", "FineTune-full", {"spec.dreambooth": {}}, "spec.dreambooth"
    yield "run-evaluation-added", "TrainingRun-unevaluated", {"spec.evaluation": {"samples": 4}}, "spec.evaluation"


def _errors(kind, changes, old=None):
    return schema.validate(make(kind, changes), old)


@pytest.mark.parametrize(("kind", "changes"), [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_rules_allow(kind, changes):
    assert _errors(kind, changes) == []


@pytest.mark.parametrize(
    ("kind", "changes", "path", "message"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rules_reject(kind, changes, path, message):
    errors = _errors(kind, changes)
    assert [e.path for e in errors] == [path], errors
    assert message in errors[0].message


_OLD = {
    "TrainingRun": ("TrainingRun", {}),
    "TrainingRun-unevaluated": ("TrainingRun", {"spec.evaluation": DELETE}),
    "FineTune": ("FineTune", {}),
    "FineTune-embedding": ("FineTune", EMBEDDING),
    "FineTune-full": ("FineTune", {"spec.method": "full", "spec.lora": DELETE}),
    "FineTune-preference": ("FineTune", PREFERENCE),
    "FineTune-dreambooth": ("FineTune", DREAMBOOTH),
}


@pytest.mark.parametrize(
    ("old_kind", "changes", "path"), [c[1:] for c in _updates()], ids=[c[0] for c in _updates()]
)
def test_update_rules(old_kind, changes, path):
    kind, old_changes = _OLD[old_kind]
    old = make(kind, old_changes)
    errors = schema.validate(make(kind, {**old_changes, **changes}), old)
    if path is None:
        assert errors == []
    else:
        assert path in [e.path for e in errors], errors
        assert any("after creation" in e.message for e in errors), errors


def test_immutability_holds_for_values_the_api_server_defaulted():
    old = make("TrainingRun", {"spec.training": {"steps": 150}})  # batchSize defaulted to 16
    new = make("TrainingRun", {"spec.training": {"steps": 150, "batchSize": 16}})
    assert schema.validate(new, old) == []
    changed = make("TrainingRun", {"spec.training": {"steps": 150, "batchSize": 32}})
    assert [e.path for e in schema.validate(changed, old)] == ["spec.training"]


def test_transition_rules_correlate_list_map_items_by_key():
    crd = {
        "spec": {
            "versions": [
                {
                    "name": "v1alpha1",
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "items": {
                                    "type": "array",
                                    "x-kubernetes-list-type": "map",
                                    "x-kubernetes-list-map-keys": ["name"],
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "size": {"type": "integer"},
                                        },
                                        "x-kubernetes-validations": [
                                            {"rule": "self.size >= oldSelf.size", "message": "cannot shrink"}
                                        ],
                                    },
                                }
                            },
                        }
                    },
                }
            ]
        }
    }
    old = {"items": [{"name": "a", "size": 5}, {"name": "b", "size": 5}]}
    new = {"items": [{"name": "b", "size": 4}, {"name": "a", "size": 6}, {"name": "c", "size": 1}]}
    assert schema.evaluate_validations(crd, new, old) == [
        schema.FieldError("items[0]", "Invalid value: cannot shrink")
    ]


def test_every_rule_is_covered_by_a_rejected_and_an_allowed_case():
    failed, held = set(), set()

    def record(kind, obj, old=None):
        defaulted_old = schema.apply_defaults(old) if old else None
        for rule, error in schema.check_rules(
            schema.crd_for(kind), schema.apply_defaults(obj), defaulted_old
        ):
            (failed if error else held).add((kind, rule.path, rule.rule))

    for _, kind, changes in ALLOWED:
        record(kind, make(kind, changes))
    for _, kind, changes, _, _ in REJECTED:
        record(kind, make(kind, changes))
    for _, old_kind, changes, _ in _updates():
        kind, old_changes = _OLD[old_kind]
        record(kind, make(kind, {**old_changes, **changes}), make(kind, old_changes))
    every = {
        (kind, r.path, r.rule) for kind in schema.load_crds() for r in schema.iter_rules(schema.crd_for(kind))
    }
    assert every - failed == set(), "rules without a rejected case"
    assert every - held == set(), "rules that never hold on an allowed case"
