"""Outputs must outlive the pod (issue 15 item 1): a file:// output off the data volume, or a
memory:// one, is refused before any Job exists — by the operator, `genforge render` and
`genforge estimate` alike — with a condition that names the allowed roots."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from genforge_operator.cli import main
from genforge_operator.config import OperatorConfig, Storage
from genforge_operator.plan import Blocked, Catalog, output_problem
from genforge_operator.reconcile import Observed, reconcile_dataset, reconcile_run
from genforge_operator.vocabulary import Reason

from .factories import make_dataset, make_model, make_pool, make_run

PVC = OperatorConfig()  # the data PVC mounted at /data
OBJECT_STORE = OperatorConfig(storage=Storage(uri="s3://bucket/genforge", pvc=None))
NOW = datetime(2026, 1, 1, tzinfo=UTC)

CASES = [
    ("data-volume", "file:///data/datasets/x", PVC, True),
    ("data-volume-root", "file:///data", PVC, True),
    ("scratch-tmp", "file:///tmp/x", PVC, False),
    ("escapes-with-dotdot", "file:///data/../tmp/x", PVC, False),
    ("look-alike-prefix", "file:///database/x", PVC, False),
    ("memory", "memory://x", PVC, False),
    ("plain-path", "/data/x", PVC, False),
    ("s3", "s3://bucket/x", PVC, True),
    ("gs", "gs://bucket/x", PVC, True),
    ("file-without-a-pvc", "file:///data/x", OBJECT_STORE, False),
    ("s3-without-a-pvc", "s3://bucket/x", OBJECT_STORE, True),
]


@pytest.mark.parametrize(("case", "uri", "config", "persistent"), CASES, ids=[c[0] for c in CASES])
def test_output_persistence(case, uri, config, persistent):
    problem = output_problem(uri, config)
    if persistent:
        assert problem is None
    else:
        assert isinstance(problem, Blocked) and problem.permanent
        assert problem.reason == Reason.OUTPUT_NOT_PERSISTENT and uri in problem.message
        if config.storage.pvc:
            assert "file:///data/" in problem.message  # names the allowed root


def _ready_reason(out) -> tuple[str, str]:
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    return ready["reason"], ready["message"]


def test_a_dataset_with_an_ephemeral_output_fails_without_a_job():
    dataset = make_dataset(phase=None, output={"uri": "file:///tmp/shapes"})
    out = reconcile_dataset(Observed(resource=dataset, body_status={}, catalog=Catalog(), job=None, pods=[],
                                     now=NOW), PVC)
    assert out.create == [] and out.status["phase"] == "Failed"
    reason, message = _ready_reason(out)
    assert reason == Reason.OUTPUT_NOT_PERSISTENT and "file:///data/" in message


def test_a_run_with_an_ephemeral_output_fails_before_money_or_references():
    run = make_run(output={"uri": "memory://run"})
    catalog = Catalog(pools={"cpu": make_pool("cpu")}, models={"shapes": make_model()},
                      datasets={"shapes": make_dataset()})
    out = reconcile_run(Observed(resource=run, body_status={}, catalog=catalog, job=None, pods=[], now=NOW), PVC)
    assert out.create == [] and out.status["phase"] == "Failed"
    assert _ready_reason(out)[0] == Reason.OUTPUT_NOT_PERSISTENT


RUN = """
apiVersion: genforge.dev/v1alpha1
kind: TrainingRun
metadata: {name: ephemeral}
spec:
  modelRef: {name: shapes}
  datasetRef: {name: shapes}
  training: {steps: 100}
  hardware: {pool: cpu}
  output: {uri: "file:///tmp/run"}
"""


def test_render_and_estimate_refuse_it_the_same_way(tmp_path, capsys, monkeypatch):
    from genforge_operator.bundled import examples_dir

    monkeypatch.delenv("GENFORGE_STORAGE_URI", raising=False)
    run = tmp_path / "run.yaml"
    run.write_text(RUN)
    files = ["-f", str(examples_dir() / "pools.yaml"), "-f", str(examples_dir() / "model.yaml"),
             "-f", str(examples_dir() / "dataset.yaml"), "-f", str(run)]
    assert main(["render", *files]) == 1
    out, err = capsys.readouterr()
    assert Reason.OUTPUT_NOT_PERSISTENT in err and "TrainingRun default/ephemeral" in err
    assert main(["estimate", *files]) == 2
    out, err = capsys.readouterr()
    assert Reason.OUTPUT_NOT_PERSISTENT in err and out == ""
