"""Namespace Budgets and pool choice through the real operator."""

from __future__ import annotations

import pytest
from harness import wait_for

from .test_lifecycle import (
    GROUP,
    VERSION,
    add_pod,
    create,
    get,
    job_of,
    make_dataset,
    make_model,
    mark_dataset_ready,
    phase_of,
    run_spec,
)

pytestmark = pytest.mark.integration


def condition(custom_api, namespace, name, type_="Ready"):
    status = get(custom_api, namespace, "trainingruns", name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_exhausted_namespace_budget_stops_runs_blocks_new_ones_and_survives_deletion(
        operator, namespace, custom_api, batch_api, core_api, pool):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    create(custom_api, namespace, "Budget", "budgets", "team", {"limit": "45", "period": "Monthly",
                                                               "onExhausted": "Stop"})
    create(custom_api, namespace, "TrainingRun", "trainingruns", "spender", run_spec(pool))
    job = wait_for(lambda: job_of(batch_api, namespace, "TrainingRun"), message="the spender's Job")
    add_pod(core_api, namespace, job, running_since=-42)  # $42 of the Budget's $45 already spent
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", "spender") == "BudgetExceeded", timeout=15,
             message="the Budget stops the running run")
    assert condition(custom_api, namespace, "spender")["reason"] == "BudgetExhausted"

    spent = wait_for(lambda: float(get(custom_api, namespace, "budgets", "team")["status"]["spent"]) >= 45,
                     timeout=15, message="Budget status shows the spending")
    assert spent

    create(custom_api, namespace, "TrainingRun", "trainingruns", "newcomer", run_spec(pool))
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", "newcomer") == "Waiting")
    assert condition(custom_api, namespace, "newcomer")["reason"] in ("BudgetExhausted", "InsufficientBudget")
    assert "Budget team" in condition(custom_api, namespace, "newcomer")["message"]

    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "spender")
    retired = wait_for(lambda: get(custom_api, namespace, "budgets", "team")["status"].get("retired"),
                       message="the deleted run's spending is kept on the Budget")
    assert retired[0]["name"] == "spender"
    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "newcomer",
                                              {"spec": {"budget": {"maxCost": "999"}}})  # any re-check
    wait_for(lambda: condition(custom_api, namespace, "newcomer").get("observedGeneration") == 2)
    assert phase_of(custom_api, namespace, "trainingruns", "newcomer") == "Waiting"


def test_auto_picks_the_cheapest_pool_meeting_the_deadline(operator, namespace, custom_api, batch_api, core_api):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    suffix = namespace[-6:]
    pools = {f"walk-{suffix}": {"accelerator": {"type": "cpu"}, "pricePerHour": "0.01", "relativeThroughput": 0.01},
             f"drive-{suffix}": {"accelerator": {"type": "nvidia-l4", "resourceName": "nvidia.com/gpu", "perNode": 1},
                                 "pricePerHour": "0.70", "relativeThroughput": 1.0},
             f"fly-{suffix}": {"accelerator": {"type": "nvidia-h100", "resourceName": "nvidia.com/gpu", "perNode": 8},
                               "pricePerHour": "9.00", "relativeThroughput": 8.0}}
    for name, spec in pools.items():
        create(custom_api, None, "AcceleratorPool", "acceleratorpools", name, spec)
    try:
        create(custom_api, namespace, "TrainingRun", "trainingruns", "auto",
               run_spec("auto", training={"steps": 20000, "batchSize": 32},
                        hardware={"pool": "auto", "deadline": "2h"}, budget={"maxCost": "500"}))
        status = wait_for(lambda: (s := get(custom_api, namespace, "trainingruns", "auto").get("status") or {})
                          .get("pool") and s, message="a pool is chosen")
        # The CPU pool misses a 2h deadline; the L4 meets it for less than the H100 pool.
        assert status["pool"] == f"drive-{suffix}", status
        job = job_of(batch_api, namespace, "TrainingRun")
        resources = job.spec.template.spec.containers[0].resources
        assert resources.limits == {"nvidia.com/gpu": "1"}
        # kopf posts Events from a background queue: the status and the Job can be there first.
        events = wait_for(lambda: [e for e in core_api.list_namespaced_event(namespace).items
                                   if e.involved_object.name == "auto" and e.reason == "PoolChosen"],
                          message="the PoolChosen Event")
        assert f"walk-{suffix}" in events[0].message and "deadline" in events[0].message
    finally:
        for name in pools:
            custom_api.delete_cluster_custom_object(GROUP, VERSION, "acceleratorpools", name)
