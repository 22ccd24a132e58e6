"""examples/: what `genforge demo` applies — valid against the CRDs, coherent, and small."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genforge_operator import api, bundled, schema, units

from .builders import example_documents

EXAMPLES = example_documents()
IDS = [f"{file_name}:{doc['metadata']['name']}" for file_name, doc in EXAMPLES]


@pytest.mark.parametrize(("file_name", "doc"), EXAMPLES, ids=IDS)
def test_example_is_accepted_by_its_crd(file_name, doc):
    assert schema.validate(doc) == []


@pytest.mark.parametrize(("file_name", "doc"), EXAMPLES, ids=IDS)
def test_example_is_ready_to_apply_in_any_namespace(file_name, doc):
    assert doc["apiVersion"] == api.API_VERSION
    assert "namespace" not in doc["metadata"]
    assert "status" not in doc


def test_examples_cover_every_kind_and_the_three_kinds_of_hardware():
    by_kind: dict[str, list[dict]] = {}
    for _, doc in EXAMPLES:
        by_kind.setdefault(doc["kind"], []).append(doc)
    assert sorted(by_kind) == sorted(api.KINDS)
    pools = {p["metadata"]["name"]: p["spec"] for p in by_kind["AcceleratorPool"]}
    assert pools["cpu"]["accelerator"]["type"] == "cpu"
    assert pools["gpu-l4"]["accelerator"]["resourceName"] == "nvidia.com/gpu"
    assert pools["tpu-v5e"]["accelerator"]["resourceName"] == "google.com/tpu"
    (finetune,) = by_kind["FineTune"]
    assert finetune["spec"]["method"] == "lora"


def test_examples_refer_to_each_other():
    names: dict[str, set[str]] = {}
    for _, doc in EXAMPLES:
        names.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    for _, doc in EXAMPLES:
        spec = doc["spec"]
        if doc["kind"] in ("TrainingRun", "FineTune"):
            model = spec["modelRef"] if doc["kind"] == "TrainingRun" else spec["baseModel"]
            assert model["name"] in names["GenModel"]
            assert spec["datasetRef"]["name"] in names["Dataset"]
        if doc["kind"] in ("TrainingRun", "FineTune", "Dataset"):
            assert spec["hardware"]["pool"] in names["AcceleratorPool"]


def test_demo_examples_are_small_enough_for_two_cpu_cores():
    (dataset,) = [d for _, d in EXAMPLES if d["kind"] == "Dataset"]
    uri = urlsplit(dataset["spec"]["source"]["uri"])
    query = {k: int(v[0]) for k, v in parse_qs(uri.query).items()}
    assert uri.scheme == "synthetic" and query["count"] <= 512 and query["size"] <= 64
    for _, doc in EXAMPLES:
        if doc["kind"] in ("TrainingRun", "FineTune"):
            training = doc["spec"]["training"]
            # ~250-300 samples/s for the [16, 32] model on two cores: 70k samples is the demo's
            # ~4-5 minute TrainingRun (docs/local.md)
            assert training["steps"] * training["batchSize"] <= 72_000
            assert doc["spec"]["hardware"]["pool"] == "cpu"
            assert doc["spec"]["budget"]["maxCost"]
        if doc["kind"] == "GenModel":
            assert doc["spec"]["resolution"] <= 32
            # …and a model no bigger than that: [32, 64] runs less than half the samples/s.
            assert sum(doc["spec"]["config"]["blockOutChannels"]) <= 48


def test_readme_lists_every_example_file():
    readme = (bundled.examples_dir() / "README.md").read_text()
    for path in bundled.examples_dir().glob("*.yaml"):
        assert f"`{path.name}`" in readme


# -- money and durations: the CRD pattern accepts exactly what units.py parses
def _money_errors(value) -> list:
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": "Budget",
        "metadata": {"name": "b"},
        "spec": {"limit": value},
    }
    return schema.validate(doc)


def _parses(parse, value) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


@given(st.text(alphabet="0123456789.,-+e ", max_size=8) | st.integers(min_value=-(10**6), max_value=10**12))
def test_money_schema_agrees_with_parse_money(value):
    accepted = _money_errors(value) == []
    if accepted:
        assert _parses(units.parse_money, value)
    elif not isinstance(value, str) or value == value.strip():  # parse_money also strips blanks
        assert not _parses(units.parse_money, value)


@given(st.text(alphabet="0123456789.hmsd ", max_size=10))
def test_duration_schema_agrees_with_parse_duration(value):
    doc = schema.apply_defaults(
        {
            "apiVersion": api.API_VERSION,
            "kind": "TrainingRun",
            "metadata": {"name": "r"},
            "spec": {
                "modelRef": {"name": "m"},
                "datasetRef": {"name": "d"},
                "training": {"steps": 1},
                "hardware": {"pool": "cpu"},
                "budget": {"maxDuration": value},
            },
        }
    )
    accepted = schema.validate(doc) == []
    if accepted:
        assert _parses(units.parse_duration, value)
    elif value == value.strip() and len(value) <= 32:  # parse_duration also strips blanks
        assert not _parses(units.parse_duration, value)
