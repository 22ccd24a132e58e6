"""The run spec parser: the contract's example parses; bad documents are rejected clearly."""

from __future__ import annotations

import json

import pytest

from genforge_trainer.config import ConfigError, load_run_spec, parse_run_spec, to_document
from genforge_trainer.exitcodes import ExitCode

from .builders import make_document

FINETUNE = {
    "command": "finetune",
    "model": {
        "baseUri": "file:///data/runs/default/shapes-v1/model",
        "baseAdapters": ["file:///data/runs/default/finetune/style/adapter"],
    },
    "finetune": {
        "method": "lora",
        "baseVersion": "v1",
        "lora": {"rank": 8, "alpha": 16, "merge": False},
        "dreambooth": {
            "instancePrompt": "sks",
            "classPrompt": "star",
            "priorLossWeight": 1.0,
            "numClassImages": 16,
        },
        "embedding": {"concept": "<my-cat>", "initializer": "cat"},
        "preference": {"feedbackUri": "file:///data/feedback/shapes.jsonl", "beta": 0.1},
    },
}
PREPARE = {
    "command": "prepare",
    "prepare": {
        "source": {"uri": "synthetic://shapes?count=512&size=64"},
        "preparation": {
            "resolution": 64,
            "crop": "center",
            "minResolution": 32,
            "dedupe": True,
            "maxItems": 100000,
        },
        "privacy": {"blurFaces": False, "stripMetadata": True, "redactCaptions": True},
        "license": {"allowed": [], "requireLicense": False},
    },
}


def test_contract_example_parses_into_typed_sections():
    spec = parse_run_spec(make_document())
    assert spec.command == "train"
    assert spec.model.config.block_out_channels == (32, 64, 64)
    assert spec.training.batch_size == 32 and spec.training.mixed_precision == "no"
    assert spec.evaluation.metrics == ("loss", "fid")
    assert spec.checkpoint.every_steps == 500 and spec.checkpoint.keep == 3
    assert spec.model_uri == "file:///data/runs/default/shapes-v1/model"


@pytest.mark.parametrize("overrides", [FINETUNE, PREPARE], ids=["finetune", "prepare"])
def test_every_section_of_the_contract_parses_and_round_trips(overrides):
    spec = parse_run_spec(make_document(**overrides))
    assert parse_run_spec(to_document(spec)) == spec


def test_optional_sections_default():
    spec = parse_run_spec(make_document(drop=["checkpoint", "evaluation", "distributed"]))
    assert spec.evaluation is None
    assert spec.checkpoint_uri == "file:///data/runs/default/shapes-v1/checkpoints"
    assert spec.distributed.nodes == 1


def test_null_evaluation_means_no_evaluation():
    assert parse_run_spec(make_document(evaluation=None)).evaluation is None


REJECTED = [
    ("unknown-schema", {"schemaVersion": "genforge.dev/v2"}, "schemaVersion: unsupported"),
    ("missing-schema", {"drop": ["schemaVersion"]}, "schemaVersion: unsupported None"),
    ("unknown-top-level-key", {"extra": 1}, "unknown key(s) extra"),
    ("unknown-nested-key", {"training": {"batchsize": 3}}, "training: unknown key(s) batchsize"),
    ("unknown-command", {"command": "serve"}, "command: must be one of"),
    ("zero-steps", {"training": {"steps": 0}}, "training.steps: must be >= 1, got 0"),
    ("zero-batch", {"training": {"batchSize": 0}}, "training.batchSize: must be >= 1"),
    ("negative-lr", {"training": {"learningRate": -1}}, "training.learningRate: must be > 0"),
    ("string-steps", {"training": {"steps": "100"}}, "training.steps: must be an integer"),
    ("bool-is-not-int", {"training": {"steps": True}}, "training.steps: must be an integer"),
    ("bad-precision", {"training": {"mixedPrecision": "fp8"}}, "training.mixedPrecision: must be one of"),
    ("bad-scheduler", {"training": {"lrScheduler": "step"}}, "training.lrScheduler: must be one of"),
    ("bad-architecture", {"model": {"architecture": "gan"}}, "model.architecture: must be one of"),
    ("resolution-not-divisible", {"model": {"resolution": 30}}, "model.resolution: must be divisible by 4"),
    ("sd-without-base", {"model": {"architecture": "stable-diffusion"}}, "model.baseUri: is required"),
    (
        "adapters-without-base",
        {"model": {"baseAdapters": ["file:///data/runs/default/finetune/style/adapter"]}},
        "model.baseAdapters: needs model.baseUri",
    ),
    (
        "empty-adapter-uri",
        {**FINETUNE, "model": {"baseAdapters": [""]}},
        "model.baseAdapters: must not contain empty",
    ),
    ("adapters-not-a-list", {"model": {"baseAdapters": "file:///a"}}, "model.baseAdapters: must be a list"),
    ("bad-groups", {"model": {"config": {"normNumGroups": 5}}}, "model.config.normNumGroups: must divide"),
    (
        "unknown-model-config",
        {"model": {"config": {"channels": [3]}}},
        "model.config: unknown key(s) channels",
    ),
    (
        "zero-terminal-snr-with-epsilon",
        {"model": {"config": {"rescaleBetasZeroSnr": True}}},
        "model.config.rescaleBetasZeroSnr: needs predictionType v_prediction or sample",
    ),
    ("ddim-eta-above-one", {"model": {"config": {"ddimEta": 1.5}}}, "model.config.ddimEta: must be in [0, 1]"),
    ("ddim-eta-negative", {"model": {"config": {"ddimEta": -0.1}}}, "model.config.ddimEta: must be in [0, 1]"),
    ("ddim-eta-a-string", {"model": {"config": {"ddimEta": "1"}}}, "model.config.ddimEta: must be"),
    ("class-dropout-one", {"model": {"config": {"classDropout": 1.0}}}, "model.config.classDropout: must be in [0, 1)"),
    ("class-dropout-negative", {"model": {"config": {"classDropout": -0.1}}},
     "model.config.classDropout: must be in [0, 1)"),
    ("guidance-below-one", {"model": {"config": {"classDropout": 0.1, "guidanceScale": 0.5}}},
     "model.config.guidanceScale: must be in [1, 20] (1: no guidance), got 0.5"),
    ("guidance-above-twenty", {"model": {"config": {"classDropout": 0.1, "guidanceScale": 25}}},
     "model.config.guidanceScale: must be in [1, 20]"),
    ("guidance-without-class-dropout", {"model": {"config": {"guidanceScale": 2.0}}},
     "model.config.guidanceScale: guidance (2.0) needs a model trained with classDropout > 0"),
    (
        "bad-timestep-spacing",
        {"model": {"config": {"timestepSpacing": "evenly"}}},
        "model.config.timestepSpacing: must be one of",
    ),
    ("snr-gamma-zero", {"training": {"snrGamma": 0}}, "training.snrGamma: must be > 0"),
    (
        "snr-gamma-with-preference",
        {**FINETUNE, "training": {"snrGamma": 5.0},
         "finetune": {"method": "preference", "preference": {"feedbackUri": "file:///f.jsonl"}}},
        "training.snrGamma: does not apply to method preference",
    ),
    ("keep-zero", {"checkpoint": {"keep": 0}}, "checkpoint.keep: must be >= 1"),
    (
        "unknown-metric",
        {"evaluation": {"metrics": ["loss", "ssim"]}},
        "evaluation.metrics[1]: must be one of",
    ),
    ("train-without-training", {"drop": ["training"]}, "training: is required for command 'train'"),
    (
        "finetune-without-section",
        {"command": "finetune", "model": {"baseUri": "file:///b"}},
        "finetune: is required",
    ),
    (
        "finetune-without-base",
        {**FINETUNE, "model": {"baseUri": None}},
        "model.baseUri: is required for command",
    ),
    (
        "embedding-without-block",
        {**FINETUNE, "finetune": {"method": "embedding"}},
        "finetune.embedding: is required for method embedding",
    ),
    ("prepare-without-section", {"command": "prepare"}, "prepare: is required for command 'prepare'"),
    (
        "bad-crop",
        {**PREPARE, "prepare": {**PREPARE["prepare"], "preparation": {"crop": "zoom"}}},
        "prepare.preparation.crop: must be one of",
    ),
    ("not-an-object", {"output": "file:///x"}, "output: must be an object"),
]


@pytest.mark.parametrize(("overrides", "message"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_invalid_documents_are_rejected_with_the_path_of_the_problem(overrides, message):
    with pytest.raises(ConfigError) as excinfo:
        parse_run_spec(make_document(**dict(overrides)))
    assert message in str(excinfo.value)
    assert excinfo.value.exit_code == ExitCode.CONFIG_ERROR == 2


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as excinfo:
        parse_run_spec(make_document(extra=1, training={"mixedPrecision": "fp8", "foo": 1}))
    text = str(excinfo.value)
    assert "extra" in text and "foo" in text and "mixedPrecision" in text


def test_load_run_spec_reports_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read run spec"):
        load_run_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_run_spec(bad)
    good = tmp_path / "run.json"
    good.write_text(json.dumps(make_document()))
    assert load_run_spec(good).run.name == "shapes-v1"
