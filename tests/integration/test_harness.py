"""The harness carries the real operator: a TrainingRun is recorded, and deleted through kopf's finalizer."""

from __future__ import annotations

import pytest
from harness import wait_for
from kubernetes.client import ApiException

GROUP, VERSION, PLURAL = "genforge.dev", "v1alpha1", "trainingruns"


def make_training_run(name: str, **spec_overrides) -> dict:
    spec = {
        "modelRef": {"name": "shapes"},
        "datasetRef": {"name": "shapes"},
        "training": {"steps": 10, "batchSize": 4},
        "hardware": {"pool": "cpu"},
        "budget": {"maxCost": "1", "maxDuration": "1h"},
        **spec_overrides,
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}


def _get(custom_api, namespace, name):
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _gone(custom_api, namespace, name) -> bool:
    try:
        _get(custom_api, namespace, name)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


@pytest.mark.integration
def test_operator_records_a_training_run_and_lets_it_be_deleted(operator, namespace, custom_api):
    custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, make_training_run("run-a"))

    recorded = wait_for(lambda: (obj := _get(custom_api, namespace, "run-a"))["status"]["phase"]
                        and obj["status"]["observedGeneration"] == obj["metadata"]["generation"] and obj,
                        message="status.phase and observedGeneration")
    assert recorded["metadata"].get("finalizers"), "kopf guards the run with its finalizer"
    kopf_bookkeeping = [k for k in recorded["metadata"].get("annotations") or {} if k.startswith("genforge.dev/")]
    assert kopf_bookkeeping == [], "runs are followed by their essence: kopf writes no annotation on them"

    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "run-a")
    wait_for(lambda: _gone(custom_api, namespace, "run-a"), message="the run to be gone")


@pytest.mark.integration
def test_a_spec_change_is_observed_and_survives_an_operator_restart(operator, namespace, custom_api):
    custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, make_training_run("run-b"))
    wait_for(lambda: _get(custom_api, namespace, "run-b")["status"]["observedGeneration"] == 1)

    operator.restart()
    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "run-b",
                                              {"spec": {"budget": {"maxCost": "2"}}})

    updated = wait_for(lambda: (obj := _get(custom_api, namespace, "run-b"))["status"]["observedGeneration"] == 2
                       and obj, message="observedGeneration 2 after the spec change")
    assert updated["metadata"]["generation"] == 2
    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "run-b")
    wait_for(lambda: _gone(custom_api, namespace, "run-b"), message="the run to be gone")
