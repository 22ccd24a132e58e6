"""`genforge estimate`: the walk/drive/fly table, the JSON contract, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from genforge_operator.cli import main

REPO = Path(__file__).resolve().parents[2]

POOLS = """
apiVersion: genforge.dev/v1alpha1
kind: AcceleratorPool
metadata: {name: cpu}
spec: {accelerator: {type: cpu}, pricePerHour: "0.40"}
---
apiVersion: genforge.dev/v1alpha1
kind: AcceleratorPool
metadata: {name: gpu-l4}
spec:
  accelerator: {type: nvidia-l4, resourceName: nvidia.com/gpu, perNode: 4}
  pricePerHour: "0.71"
"""
MODEL = """
apiVersion: genforge.dev/v1alpha1
kind: GenModel
metadata: {name: shapes}
spec: {architecture: unet2d-ddpm, resolution: 64}
"""


def run_yaml(name: str = "shapes-v1", *, pool: str = "auto", model: str = "shapes", deadline: str = "6h") -> str:
    return f"""
apiVersion: genforge.dev/v1alpha1
kind: TrainingRun
metadata: {{name: {name}}}
spec:
  modelRef: {{name: {model}}}
  datasetRef: {{name: shapes}}
  training: {{steps: 2000, batchSize: 32, mixedPrecision: bf16}}
  hardware: {{pool: {pool}, deadline: {deadline}}}
  budget: {{maxCost: "25"}}
"""


def write(tmp_path: Path, *docs: str) -> list[str]:
    paths = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i}.yaml"
        path.write_text(doc)
        paths += ["-f", str(path)]
    return paths


def estimate(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["estimate", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_compares_every_pool_and_names_the_choice(tmp_path, capsys):
    rc, out, _ = estimate(capsys, *write(tmp_path, POOLS, MODEL, run_yaml()))
    assert rc == 0
    assert re.search(r"MODE\s+POOL\s+ACCELERATOR\s+COUNT\s+SAMPLES\s+SAMPLES/S\s+DURATION\s+RANGE\s+ACCEL-HOURS"
                     r"\s+COST\s+DEADLINE\s+BUDGET", out)
    assert re.search(r"^  cpu: startup 10s prior, training .* prior, evaluation 0s prior, checkpoints 5s prior; "
                     r"prior: the reference 8-vCPU node$", out, re.M)
    assert re.search(r"^walk\s+cpu\s+cpu\s+1\s", out, re.M)
    assert re.search(r"^drive\s+gpu-l4\s+nvidia-l4\s+1\s", out, re.M)
    assert "auto would choose: gpu-l4" in out
    assert "admission: Admit (WithinBudget)" in out


def test_json_is_the_documented_contract(tmp_path, capsys):
    rc, out, _ = estimate(capsys, *write(tmp_path, POOLS, MODEL, run_yaml()), "-o", "json")
    assert rc == 0
    doc = json.loads(out)
    assert set(doc) == {"run", "choice", "estimates"}
    assert (doc["run"], doc["choice"]) == ("shapes-v1", "gpu-l4")
    assert [e["pool"] for e in doc["estimates"]] == ["cpu", "gpu-l4"]
    for e in doc["estimates"]:
        assert set(e) == {"pool", "accelerators", "durationSeconds", "minSeconds", "maxSeconds", "cost", "minCost",
                          "maxCost", "meetsDeadline", "withinBudget", "parts"}
        assert isinstance(e["cost"], (int, float)) and isinstance(e["durationSeconds"], int)
        assert e["minSeconds"] <= e["durationSeconds"] <= e["maxSeconds"] and e["minCost"] <= e["cost"] <= e["maxCost"]
        assert [(p["part"], p["basis"]) for p in e["parts"]] == [
            ("startup", "prior"), ("training", "prior"), ("evaluation", "prior"), ("checkpoints", "prior")]
        assert isinstance(e["meetsDeadline"], bool) and isinstance(e["withinBudget"], bool)


def test_json_lists_several_runs(tmp_path, capsys):
    rc, out, _ = estimate(capsys, *write(tmp_path, POOLS, MODEL, run_yaml("a"), run_yaml("b", deadline="1s")),
                          "-o", "json")
    assert rc == 0
    docs = json.loads(out)
    assert [(d["run"], d["choice"]) for d in docs] == [("a", "gpu-l4"), ("b", None)]


def test_named_pool_still_shows_what_auto_would_choose(tmp_path, capsys):
    rc, out, _ = estimate(capsys, *write(tmp_path, POOLS, MODEL, run_yaml(pool="cpu")))
    assert rc == 0
    assert "auto would choose: gpu-l4" in out and "the run asks for pool: cpu" in out


@pytest.mark.parametrize(("docs", "message"), [
    pytest.param((POOLS, run_yaml()), "GenModel 'shapes' not found", id="missing-model"),
    pytest.param((POOLS, MODEL, run_yaml(pool="tpu")), "AcceleratorPool 'tpu' not found", id="missing-pool"),
    pytest.param((MODEL, run_yaml()), "no AcceleratorPool", id="no-pools"),
    pytest.param((POOLS, MODEL), "no TrainingRun or FineTune", id="no-runs"),
    pytest.param((POOLS, "kind: [unclosed"), "invalid YAML", id="invalid-yaml"),
    pytest.param((POOLS, MODEL, run_yaml().replace("steps:", "stepz:")), "unknown field", id="invalid-spec"),
])
def test_errors_exit_2_with_a_clear_message(tmp_path, capsys, docs, message):
    rc, out, err = estimate(capsys, *write(tmp_path, *docs))
    assert rc == 2
    assert message in err and out == ""


def test_missing_file_exits_2(capsys):
    rc, _, err = estimate(capsys, "-f", "/nonexistent/run.yaml")
    assert rc == 2 and "no such file" in err


# The worked example in docs/estimates.md is the real output of these commands.
EXAMPLES = REPO / "docs" / "examples"
DOCUMENTED = [
    ["sd-scale-pools.yaml", "sd-scale-model.yaml", "sd-scale-run.yaml"],
    ["sd-scale-pools.yaml", "sd-scale-model.yaml", "sd-scale-run.yaml", "-o", "json"],
    ["sd-scale-pools.yaml", "sd-scale-model.yaml", "sd-scale-run-thrifty.yaml"],
]


@pytest.mark.parametrize("args", DOCUMENTED, ids=["table", "json", "thrifty"])
def test_docs_show_the_real_output(capsys, args):
    files = [a for a in args if a.endswith(".yaml")]
    rest = [a for a in args if not a.endswith(".yaml")]
    rc, out, _ = estimate(capsys, *[x for f in files for x in ("-f", str(EXAMPLES / f))], *rest)
    assert rc == 0
    assert out.strip() in (REPO / "docs" / "estimates.md").read_text()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_documented_examples_are_valid_resources(path):
    from genforge_operator import schema

    for doc in schema.load_yaml_documents(path):
        assert schema.validate(doc) == [], doc["metadata"]["name"]
