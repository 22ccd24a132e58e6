"""The one contract: every run spec the operator renders for the examples is accepted by the trainer.

The operator side renders with the very builders it uses in a cluster (`render.render`);
the trainer side parses with its own typed config. Neither imports the other.
"""

from __future__ import annotations

import json

import pytest

from genforge_operator.builders import run_document
from genforge_operator.bundled import examples_dir
from genforge_operator.config import OperatorConfig
from genforge_operator.manifests import load_resources
from genforge_operator.render import render
from genforge_trainer.config import parse_run_spec

SCALE = "tests/controller/manifests/scale.yaml"


def documents(paths: list[str]) -> list[tuple[str, dict]]:
    objects, problems = render(load_resources(paths), OperatorConfig())
    assert not problems, problems
    return [(source, run_document([o])) for source, o in objects if run_document([o]) is not None]


EXAMPLES = documents([str(examples_dir())])


@pytest.mark.parametrize("source,document", EXAMPLES, ids=[s for s, _ in EXAMPLES])
def test_trainer_accepts_every_example(source, document):
    spec = parse_run_spec(document)
    assert spec.command == document["command"]


def test_every_command_is_covered():
    assert {d["command"] for _, d in EXAMPLES} == {"prepare", "train", "finetune"}


@pytest.mark.parametrize("source,document", documents([SCALE]), ids=[s for s, _ in documents([SCALE])])
def test_trainer_accepts_multi_node_tpu_and_object_storage_runs(source, document):
    parse_run_spec(document)


def test_model_knobs_reach_the_trainer():
    (_, document), = [d for d in EXAMPLES if d[1]["command"] == "train"]
    document = json.loads(json.dumps(document))
    document["model"]["config"].update(blockOutChannels=[16, 32, 32], attention=[False, True, True],
                                       numTrainTimesteps=500, inferenceSteps=20,
                                       predictionType="v_prediction")
    spec = parse_run_spec(document)
    assert spec.model.config.attention == (False, True, True)
    assert spec.model.config.num_train_timesteps == 500 and spec.model.config.prediction_type == "v_prediction"
