"""A pool's calibration objects on a real control plane: the API server accepts the
(cluster-scoped) AcceleratorPool as the owner of the namespaced GenModel, Dataset and
TrainingRun the operator creates for it, and the garbage collector deletes them with the pool."""

from __future__ import annotations

import uuid

import pytest

from genforge_operator.naming import calibration_name

from .test_lifecycle import apply, get, manifest, wait

pytestmark = [pytest.mark.kube, pytest.mark.slow]

KINDS = ("GenModel", "Dataset", "TrainingRun")


def test_deleting_a_pool_deletes_its_calibration_objects(kube_operator, kube_namespace):
    kube, namespace = kube_operator, kube_namespace
    pool = f"real-calibrate-{uuid.uuid4().hex[:6]}"
    name = calibration_name(pool)
    # no room in the namespace's Budget: the run is created and waits, nothing trains
    apply(kube, namespace, manifest("Budget", "nothing", {"limit": "0", "period": "Monthly"}))
    apply(kube, "default", manifest("AcceleratorPool", pool, {
        "accelerator": {"type": "cpu"}, "pricePerHour": "0.05", "cpusPerNode": 2,
        "calibration": {"enabled": True, "namespace": namespace, "steps": 10}}))
    uid = get(kube, "", "AcceleratorPool", pool)["metadata"]["uid"]
    created = wait(kube, namespace, lambda: all(get(kube, namespace, k, name) for k in KINDS),
                   "the calibration GenModel, Dataset and TrainingRun", timeout=60)
    assert created
    for kind in KINDS:
        refs = get(kube, namespace, kind, name)["metadata"].get("ownerReferences")
        assert refs == [{"apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool", "name": pool,
                         "uid": uid}], kind
    kube.real.kubectl("delete", "acceleratorpool", pool, "--wait=true", "--timeout=60s")
    wait(kube, namespace, lambda: not any(get(kube, namespace, k, name) for k in KINDS),
         "the garbage collector to delete the pool's calibration objects", timeout=120)
