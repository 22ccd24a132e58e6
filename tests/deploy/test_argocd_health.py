"""Argo CD health checks (deploy/argocd/health.lua) run with a real Lua against sample statuses.

The cases are deploy/argocd/health_test.yaml in Argo CD's own resource_customizations
format; every sample object is also a valid object for the CRDs, status included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

lupa = pytest.importorskip("lupa")  # runs the Lua health checks (a declared dev dependency)

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]
KINDS = ("TrainingRun", "FineTune", "Dataset", "Budget", "GenModel")
# Argo CD runs gopher-lua, a Lua 5.1: test on 5.1 and, for good measure, on a current Lua.
RUNTIMES = ("lua51", "lua54")


def health(obj: dict, runtime: str = "lua51") -> dict:
    module = pytest.importorskip(f"lupa.{runtime}")
    lua = module.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return {key: result[key] for key in ("status", "message")}


def _load(case: dict) -> dict:
    return yaml.safe_load((ARGOCD / case["inputPath"]).read_text())


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health(case, runtime):
    assert health(_load(case), runtime) == case["healthStatus"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_the_samples_are_valid_objects(case):
    from genforge_operator import schema

    obj = _load(case)
    assert schema.validate(obj) == [], "a sample status the operator could not have written"


def test_every_kind_and_health_is_covered():
    seen = {(_load(c)["kind"], c["healthStatus"]["status"]) for c in CASES}
    assert {kind for kind, _ in seen} == set(KINDS)
    for kind in ("TrainingRun", "FineTune"):
        assert {"Healthy", "Progressing", "Degraded"} <= {h for k, h in seen if k == kind}
    assert ("TrainingRun", "Suspended") in seen


@pytest.mark.parametrize("phase", ["Pending", "Waiting", "Running", "Succeeded", "Failed", "BudgetExceeded",
                                   "Suspended"])
def test_every_run_phase_of_the_crd_has_a_health(phase):
    import genforge_operator.schema as schema

    enum = schema.openapi_schema(schema.crd_for("TrainingRun"))["properties"]["status"]["properties"]["phase"]["enum"]
    assert phase in enum
    obj = {"kind": "TrainingRun", "metadata": {"generation": 1}, "status": {"phase": phase, "observedGeneration": 1}}
    assert health(obj)["status"] in ("Healthy", "Progressing", "Degraded", "Suspended")


def test_an_unknown_kind_is_unknown():
    assert health({"kind": "Other", "status": {}})["status"] == "Unknown"


def test_argocd_cm_carries_the_script_for_every_kind():
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    for kind in KINDS:
        assert data[f"resource.customizations.health.genforge.dev_{kind}"] == SCRIPT
        for setting in ("ignoreDifferences", "ignoreResourceUpdates"):
            assert yaml.safe_load(data[f"resource.customizations.{setting}.genforge.dev_{kind}"]) == {
                "jsonPointers": ["/status"]}
