"""A pool's calibration run on demand (`AcceleratorPool.spec.calibration`) through the real
operator: one ordinary run in the namespace the pool names, budgeted there, surfaced on the pool."""

from __future__ import annotations

import pytest
from harness import wait_for

from genforge_operator.naming import LABEL_CALIBRATION_FOR, calibration_name

from .test_lifecycle import GROUP, VERSION, create, get, mark_dataset_ready, phase_of

pytestmark = pytest.mark.integration


def maybe(custom_api, namespace, plural, name) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return get(custom_api, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def pool_status(custom_api, name) -> dict:
    return custom_api.get_cluster_custom_object(GROUP, VERSION, "acceleratorpools", name).get("status") or {}


def calibrated(custom_api, name) -> dict:
    return next((c for c in pool_status(custom_api, name).get("conditions") or [] if c["type"] == "Calibrated"), {})


@pytest.fixture
def calibrating_pool(custom_api, namespace, pool):
    """The test pool, asking for a calibration run billed in the test's namespace."""
    custom_api.patch_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool, {
        "spec": {"calibration": {"enabled": True, "namespace": namespace, "steps": 20}}})
    return pool


def test_an_unmeasured_pool_gets_one_calibration_run_that_its_namespaces_budget_holds(
        namespace, operator, custom_api, batch_api, core_api, calibrating_pool):  # operator stops first
    pool, name = calibrating_pool, calibration_name(calibrating_pool)
    # the namespace's Budget has nothing left: the calibration run is budgeted like any run
    create(custom_api, namespace, "Budget", "budgets", "team", {"limit": "0", "period": "Monthly"})
    run = wait_for(lambda: maybe(custom_api, namespace, "trainingruns", name), timeout=15,
                   message="the calibration run is created")
    assert run["metadata"]["labels"][LABEL_CALIBRATION_FOR] == pool
    assert run["spec"]["hardware"]["pool"] == pool and run["spec"]["training"]["steps"] == 20
    assert get(custom_api, namespace, "genmodels", name)["spec"]["architecture"] == "unet2d-ddpm"
    assert get(custom_api, namespace, "datasets", name)["spec"]["source"]["uri"].startswith("synthetic://shapes")
    # its pool says where it stands, with the run's own words
    wait_for(lambda: calibrated(custom_api, pool).get("reason") == "CalibrationRunning", timeout=15,
             message="the pool's Calibrated condition follows the run")
    assert pool_status(custom_api, pool)["calibrationRun"]["name"] == name
    assert calibrated(custom_api, pool)["status"] == "False"
    # its data prepared, it waits for the namespace's Budget like any run, and the pool says so
    mark_dataset_ready(custom_api, batch_api, core_api, namespace, name)
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", name) == "Waiting", timeout=15,
             message="the Budget holds the calibration run")
    wait_for(lambda: "Budget team" in calibrated(custom_api, pool).get("message", ""), timeout=15,
             message="the pool's condition quotes why its run waits")
    # a change of the pool (any event) never creates a second run
    custom_api.patch_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool,
                                           {"spec": {"calibration": {"steps": 30}}})
    wait_for(lambda: calibrated(custom_api, pool).get("observedGeneration") == 3, timeout=15)
    runs = custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns",
                                                    label_selector=LABEL_CALIBRATION_FOR)["items"]
    assert [r["metadata"]["name"] for r in runs] == [name]
    assert runs[0]["spec"]["training"]["steps"] == 20  # the run already made is kept as it is


def test_a_measured_pool_gets_no_run_and_says_so(namespace, operator, custom_api, pool):
    measured = {"calibration": {"trainingFlopsPerSecond": {"value": 3.0e10, "runs": 2, "used": 2,
                                                           "updated": "2026-12-07T11:00:00Z"}}}
    custom_api.patch_cluster_custom_object_status(GROUP, VERSION, "acceleratorpools", pool, {"status": measured})
    custom_api.patch_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool, {
        "spec": {"calibration": {"enabled": True, "namespace": namespace}}})
    wait_for(lambda: calibrated(custom_api, pool).get("reason") == "Measured", timeout=15)
    assert calibrated(custom_api, pool)["status"] == "True"
    assert custom_api.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"] == []


def test_a_missing_namespace_is_said_on_the_pool(operator, custom_api, pool):
    custom_api.patch_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool, {
        "spec": {"calibration": {"enabled": True, "namespace": "no-such-namespace"}}})
    wait_for(lambda: calibrated(custom_api, pool).get("reason") == "CalibrationNamespaceNotFound", timeout=15)
    assert "no-such-namespace" in calibrated(custom_api, pool)["message"]
