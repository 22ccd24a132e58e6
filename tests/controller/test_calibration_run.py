"""A pool's calibration run on demand (`AcceleratorPool.spec.calibration`): when it is
created, that there is never a second one, and what the pool's status says."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from genforge_operator import schema
from genforge_operator.api import parse_resource
from genforge_operator.money import calibration_run
from genforge_operator.naming import LABEL_CALIBRATION_FOR, calibration_name

from .factories import make_pool, make_run

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ENABLED = {"enabled": True, "namespace": "team-a", "steps": 40}
MEASURED = {"calibration": {"trainingFlopsPerSecond": {"value": 3e10, "runs": 1, "used": 1,
                                                        "updated": "2026-12-07T11:00:00Z"}}}


def pool(calibration: dict | None = ENABLED, status: dict | None = None, name: str = "cpu", uid: str = ""):
    spec = {"accelerator": {"type": "cpu"}, "pricePerHour": "0.05", "cpusPerNode": 2}
    if calibration is not None:
        spec["calibration"] = calibration
    return parse_resource({"apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool",
                           "metadata": {"name": name, "generation": 2, **({"uid": uid} if uid else {})},
                           "spec": spec, "status": status or {}})


def calibration_run_in(phase: str | None, reason: str = "", message: str = ""):
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                                              "message": message}]} if phase else {}
    return make_run(name=calibration_name("cpu"), status=status)


def calibrated(decision) -> dict:
    return next(c for c in decision.status["conditions"] if c["type"] == "Calibrated")


def test_an_unmeasured_pool_that_asks_gets_one_run_with_its_model_and_data():
    decision = calibration_run.decide(pool(), None, NOW)
    assert [o["kind"] for o in decision.create] == ["GenModel", "Dataset", "TrainingRun"]
    assert {o["metadata"]["name"] for o in decision.create} == {"calibrate-cpu"}
    assert {o["metadata"]["namespace"] for o in decision.create} == {"team-a"}
    for obj in decision.create:
        assert obj["metadata"]["labels"][LABEL_CALIBRATION_FOR] == "cpu"
        assert calibration_run.pool_of(obj["metadata"]["annotations"]) == "cpu"
        assert schema.validate(obj) == [], obj["kind"]  # what the API server will be asked to accept
    run = decision.create[-1]["spec"]
    assert run["training"]["steps"] == 40 and run["hardware"]["pool"] == "cpu"
    assert run["checkpoint"]["everySteps"] == 40 and run["evaluation"]["samples"] > 0
    assert decision.create[1]["spec"]["source"]["uri"].startswith("synthetic://shapes")
    assert calibrated(decision)["reason"] == "CalibrationRunCreated" and calibrated(decision)["status"] == "False"
    assert decision.status["calibrationRun"] == {"namespace": "team-a", "name": "calibrate-cpu"}
    assert [e[1] for e in decision.events] == ["CalibrationRunCreated"]


def test_the_pool_owns_what_it_creates_so_deleting_it_deletes_them():
    for obj in calibration_run.decide(pool(uid="u-1"), None, NOW).create:
        assert obj["metadata"]["ownerReferences"] == [
            {"apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool", "name": "cpu", "uid": "u-1"}]
        assert schema.validate(obj) == [], obj["kind"]
    # without a uid (a pool not read from the API) there is nothing to refer to
    assert all("ownerReferences" not in o["metadata"] for o in calibration_run.decide(pool(), None, NOW).create)


def test_an_accelerator_pool_calibrates_in_bf16():
    gpu = make_pool("gpu-l4", calibration=ENABLED)
    run = calibration_run.decide(gpu, None, NOW).create[-1]
    assert run["spec"]["training"]["mixedPrecision"] == "bf16"
    assert run["metadata"]["name"] == "calibrate-gpu-l4"


@pytest.mark.parametrize(("phase", "reason", "event"), [
    pytest.param(None, "CalibrationRunning", False, id="just-created"),
    pytest.param("Running", "CalibrationRunning", False, id="running"),
    pytest.param("Waiting", "CalibrationRunning", False, id="waiting-for-its-budget"),
    pytest.param("Failed", "CalibrationRunFailed", True, id="failed"),
    pytest.param("BudgetExceeded", "CalibrationRunFailed", True, id="stopped-by-its-budget"),
    pytest.param("Succeeded", "CalibrationNotMeasured", True, id="succeeded-without-timing"),
])
def test_while_a_run_exists_no_second_one_is_created_and_the_condition_says_where_it_stands(phase, reason, event):
    run = calibration_run_in(phase, "InsufficientBudget", "the Budget team has $0.00 left")
    decision = calibration_run.decide(pool(), run, NOW)
    assert decision.create == []
    assert calibrated(decision)["reason"] == reason and calibrated(decision)["status"] == "False"
    assert f"TrainingRun team-a/{calibration_name('cpu')}" in calibrated(decision)["message"]
    assert bool(decision.events) == event
    assert decision.status["calibrationRun"]["name"] == calibration_name("cpu")


def test_a_failure_is_announced_once():
    run = calibration_run_in("Failed", "JobFailed", "out of memory")
    first = calibration_run.decide(pool(), run, NOW)
    assert "delete it to try again" in calibrated(first)["message"] and "out of memory" in calibrated(first)["message"]
    again = calibration_run.decide(pool(status={"conditions": first.status["conditions"]}), run, NOW)
    assert again.events == [] and again.create == []


@pytest.mark.parametrize("run_phase", [None, "Succeeded"], ids=["no-run", "its-run-succeeded"])
def test_a_measured_pool_gets_no_run_and_says_it_is_calibrated(run_phase):
    run = calibration_run_in(run_phase) if run_phase else None
    decision = calibration_run.decide(pool(status=MEASURED), run, NOW)
    assert decision.create == [] and calibrated(decision)["status"] == "True"
    assert calibrated(decision)["reason"] == "Measured" and "1 run" in calibrated(decision)["message"]


@pytest.mark.parametrize(("request_", "status", "wanted", "looks"), [
    pytest.param(None, None, False, False, id="not-asked"),
    pytest.param({"enabled": False, "namespace": "a"}, None, False, False, id="disabled"),
    pytest.param(ENABLED, None, True, True, id="asked-unmeasured"),
    pytest.param(ENABLED, MEASURED, False, True, id="measured-condition-not-yet-set"),
    pytest.param(ENABLED, {**MEASURED, "conditions": [{"type": "Calibrated", "status": "True",
                                                       "reason": "Measured"}]}, False, False, id="measured-and-said"),
    pytest.param(None, {"calibrationRun": {"namespace": "a", "name": "calibrate-cpu"}}, False, True,
                 id="switched-off-while-a-run-is-under-way"),
])
def test_which_pools_are_looked_at(request_, status, wanted, looks):
    p = pool(request_, status)
    assert calibration_run.wanted(p) == wanted
    assert calibration_run.needs_look(p) == looks


def test_a_pool_that_does_not_ask_is_left_alone():
    decision = calibration_run.decide(pool(None), None, NOW)
    assert decision.create == [] and decision.status == {} and decision.events == []


def test_a_missing_namespace_is_said_and_nothing_is_created():
    decision = calibration_run.decide(pool(), None, NOW, namespace_exists=False)
    assert decision.create == []
    assert calibrated(decision)["reason"] == "CalibrationNamespaceNotFound"
    assert "'team-a'" in calibrated(decision)["message"]


def test_a_long_pool_name_gets_a_name_that_fits():
    name = calibration_name("a" * 200 + ".example")
    assert len(name) <= 63 and name.startswith("calibrate-a")
    assert name != calibration_name("a" * 200 + "-example")
    assert calibration_name("a.b") != calibration_name("a-b") and calibration_name("a-b") == "calibrate-a-b"
