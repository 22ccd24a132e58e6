"""Hostile and bad input, generated (hypothesis): every resource spec is either rejected by
the CRD schema and CEL rules (`schema.admit_object`, what the API server does) or, admitted, ends
in a clear outcome of the pure reconcile — a known phase, a Ready condition with a
CamelCase reason and a message, a sane requeue — and never raises.

Names at the Kubernetes limits: any valid name (up to 253 characters, dots included) gives
child names that are DNS-1035 labels with room for Indexed-Job pod suffixes, label values
within 63 characters, and distinct names never share children.

Example counts are printed (`-s`) and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from datetime import UTC, datetime

import pytest
from controller.factories import make_dataset, make_model, make_pool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genforge_operator import naming, schema
from genforge_operator.api import SpecError, parse_resource
from genforge_operator.config import OperatorConfig
from genforge_operator.plan import Catalog
from genforge_operator.reconcile import Observed, reconcile_dataset, reconcile_run

API = "genforge.dev/v1alpha1"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
PHASES = {"Pending", "Waiting", "Running", "Succeeded", "Failed", "BudgetExceeded", "Suspended", "Ready"}
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
TALLY: Counter = Counter()

BASES = {
    "TrainingRun": {"modelRef": {"name": "shapes"}, "datasetRef": {"name": "shapes"},
                    "training": {"steps": 100, "batchSize": 8, "learningRate": 1e-4, "seed": 0},
                    "hardware": {"pool": "cpu", "nodes": 1, "acceleratorsPerNode": 1},
                    "budget": {"maxCost": "50", "maxDuration": "2h", "onExceeded": "Stop"},
                    "checkpoint": {"everySteps": 50, "keep": 2}, "evaluation": {"samples": 4, "metrics": ["loss"]}},
    "FineTune": {"baseModel": {"name": "shapes"}, "datasetRef": {"name": "shapes"}, "method": "lora",
                 "lora": {"rank": 8, "alpha": 16}, "training": {"steps": 50, "batchSize": 4},
                 "hardware": {"pool": "auto", "deadline": "6h"}, "budget": {"maxCost": "20"}},
    "Dataset": {"source": {"uri": "synthetic://shapes?count=64&size=32", "secretRef": {"name": "creds"}},
                "preparation": {"resolution": 32, "crop": "center", "minResolution": 16, "dedupe": True},
                "privacy": {"blurFaces": True, "stripMetadata": True, "redactCaptions": True},
                "license": {"allowed": ["cc0-1.0"], "requireLicense": True}},
    "Budget": {"limit": "100", "period": "Monthly", "warnAt": [50, 80], "onExhausted": "Stop"},
    "AcceleratorPool": {"accelerator": {"type": "nvidia-l4", "resourceName": "nvidia.com/gpu", "perNode": 4},
                        "pricePerHour": "0.71", "relativeThroughput": 1.0},
    "GenModel": {"purpose": "p", "architecture": "unet2d-ddpm", "resolution": 32,
                 "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1}},
}

# Values a hostile or careless user might write anywhere.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63), st.sampled_from([0, -1, 1, 2**31, 2**53 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", "auto", "1h", "-5", "1e9", "0.000001", "NaN", "9" * 40, "x" * 300,
                                           "../../etc/passwd", "s3://b/k", "ñ", "Stop", "lora", "cpu"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=8)


def paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated(draw, kind: str):
    spec = copy.deepcopy(BASES[kind])
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        candidates = [p for p in paths(spec) if p]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    name = draw(st.one_of(st.just("run"), st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,252}[a-z0-9])?", fullmatch=True),
                          st.text(max_size=300)))
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": "team-a", "uid": "u-1",
                                                          "generation": 1}, "spec": spec}


def catalog() -> Catalog:
    pools = {p.name: p for p in (make_pool("cpu"), make_pool("gpu-l4"))}
    versioned = {"versions": [{"name": "v1", "source": {"kind": "TrainingRun", "name": "r"}, "uri": "file:///m",
                               "createdAt": "2026-01-01T00:00:00Z"}], "latest": "v1"}
    return Catalog(pools=pools, models={"shapes": make_model(status=versioned)}, datasets={"shapes": make_dataset()})


def check_outcome(out) -> None:
    phase = out.status.get("phase")
    assert phase in PHASES, out.status
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert CAMEL.match(ready["reason"]) and ready["message"], ready
    assert out.requeue_after is None or out.requeue_after > 0
    TALLY[f"outcome {phase}/{ready['reason']}"] += 1


@pytest.mark.parametrize("kind", list(BASES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_spec_is_rejected_by_the_schema_or_reconciled_to_a_clear_condition(kind, data):
    obj = data.draw(mutated(kind))
    TALLY["tried"] += 1
    defaulted, errors = schema.admit_object(obj)
    if errors:
        TALLY["rejected by schema/CEL"] += 1
        assert all(e.path and e.message for e in errors)
        return
    TALLY["admitted"] += 1
    try:
        resource = parse_resource(defaulted)
    except SpecError as exc:  # the operator marks it Failed/InvalidSpec; the schema should have said so
        pytest.fail(f"the schema admitted a spec the operator cannot parse: {exc}\n{defaulted}")
    if kind in ("TrainingRun", "FineTune", "Dataset"):
        decide = reconcile_dataset if kind == "Dataset" else reconcile_run
        out = decide(Observed(resource=resource, body_status={}, catalog=catalog(), job=None, pods=[], now=NOW),
                     CONFIG)
        check_outcome(out)
        for child in out.create:
            assert DNS_1035.match(child["metadata"]["name"]), child["metadata"]["name"]
            assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in child["metadata"]["labels"].values())


dns_subdomain = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True).filter(
    lambda n: len(n) <= 253 and ".." not in n and all(p and p[0].isalnum() and p[-1].isalnum() for p in n.split(".")))


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(list(naming.KIND_PREFIX)), name=dns_subdomain, other=dns_subdomain)
def test_names_at_kubernetes_limits_give_valid_distinct_children(kind, name, other):
    TALLY["names tried"] += 1
    child = naming.child_name(kind, name)
    assert DNS_1035.match(child), child  # a Service name too (multi-node runs)
    assert len(child) <= naming.DNS_LABEL_MAX - 12  # `<job>-<index>-<random5>` pod names fit in 63
    value = naming.label_value(name)
    assert len(value) <= 63 and LABEL_VALUE.match(value)
    if name != other:
        assert naming.child_name(kind, other) != child, (name, other)


def test_tally_shows_specs_were_both_rejected_and_reconciled(capsys):
    """Run after the property tests (pytest runs a file top to bottom): hostile specs must have
    reached both sides — some rejected by the schema/CEL, some admitted and reconciled to a
    condition — or the property tests proved less than they say."""
    if not TALLY:
        pytest.skip("run together with the property tests of this file")
    with capsys.disabled():
        print(f"\nhostile input tally: {dict(sorted(TALLY.items()))}")
    assert TALLY["rejected by schema/CEL"] > 0 and TALLY["admitted"] > 0, TALLY
    assert any(k.startswith("outcome ") for k in TALLY), TALLY
    assert TALLY["names tried"] > 0, TALLY
