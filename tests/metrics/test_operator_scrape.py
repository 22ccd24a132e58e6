"""Scrape the real operator's /metrics during a run: cost, time, progress and phase equal
the run's status, the same after an operator restart (a fresh store refilled by kopf's
initial listing), exactly once the run has finished, and gone once it is deleted.

Job and pods are played by the test, as in tests/integration/test_lifecycle.py, whose
helpers this borrows (a CPU pool at $1/s makes money move visibly).
"""

from __future__ import annotations

import time

import pytest
from harness import OperatorRunner, wait_for
from integration.test_lifecycle import (
    GROUP,
    VERSION,
    add_pod,
    create,
    finish_job,
    get,
    job_of,
    make_dataset,
    make_model,
    mark_dataset_ready,
    run_spec,
    ts,
)

from genforge_operator import metrics

from .scrape import assert_budget_matches_status, assert_run_matches_status, one, run_series, scrape

pytestmark = pytest.mark.integration

SLACK_SECONDS = 15.0  # a Running run's status is rewritten every enforcement interval (5 s)


@pytest.fixture
def wired(cluster):
    """The operator with its metrics store fed and /metrics served (a no-op once main.py does both)."""
    metrics.register_store_handlers()
    port = metrics.start_metrics_server(port=0, addr="127.0.0.1")
    metrics.STORE.clear()
    runner = OperatorRunner(cluster).start()
    yield runner, f"http://127.0.0.1:{port}/metrics"
    runner.stop()
    for number, output in enumerate(runner.outputs, 1):
        print(f"--- operator run {number} ---\n{output}")


def matches(url: str, body_of, check) -> bool:
    """One scrape and one read agree (retried by wait_for while the operator catches up)."""
    check(scrape(url), body_of())
    return True


def test_metrics_follow_status_through_a_run_and_a_restart(wired, namespace, custom_api, batch_api, core_api,
                                                           pool):
    runner, url = wired
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    create(custom_api, namespace, "Budget", "budgets", "team", {"limit": "100000", "warnAt": [50, 80]})
    create(custom_api, namespace, "TrainingRun", "trainingruns", "scraped", run_spec(pool))
    job = wait_for(lambda: job_of(batch_api, namespace, "TrainingRun"), message="run Job")
    pod = add_pod(core_api, namespace, job, running_since=-10)

    def run():
        return get(custom_api, namespace, "trainingruns", "scraped")

    def budget():
        return get(custom_api, namespace, "budgets", "team")

    def running_matches(samples, body):
        assert body["status"]["phase"] == "Running" and float(body["status"]["cost"]["accrued"]) >= 5
        assert_run_matches_status(samples, body, slack_seconds=SLACK_SECONDS)
        assert one(samples, "genforge_pool_accelerators_in_use", pool=pool, accelerator_type="cpu") == 1
        assert one(samples, "genforge_pool_cost_rate_dollars_per_hour", pool=pool) == pytest.approx(3600)

    def budget_matches(samples, body):
        assert (body.get("status") or {}).get("spent") is not None
        assert_budget_matches_status(samples, body)

    wait_for(lambda: matches(url, run, running_matches), timeout=20, ignore=(AssertionError, LookupError),
             message="/metrics shows the running run as its status says")
    wait_for(lambda: matches(url, budget, budget_matches), timeout=20, ignore=(AssertionError, LookupError),
             message="/metrics shows the Budget as its status says")

    # A restart: the process's memory is gone; kopf's initial listing refills the store.
    runner.stop()
    metrics.STORE.clear()
    assert run_series(scrape(url), "TrainingRun", namespace, "scraped") == {}
    runner.start()
    wait_for(lambda: matches(url, run, running_matches), timeout=20, ignore=(AssertionError, LookupError),
             message="after a restart, /metrics shows the run as its status says")
    wait_for(lambda: matches(url, budget, budget_matches), timeout=20, ignore=(AssertionError, LookupError),
             message="after a restart, /metrics shows the Budget as its status says")

    # Finished: the segment is closed, so the metrics equal the status exactly and stop moving.
    started = core_api.read_namespaced_pod(pod, namespace).status.container_statuses[0].state.running.started_at
    core_api.patch_namespaced_pod_status(pod, namespace, {"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "ready": False, "restartCount": 0, "image": "trainer", "imageID": "",
         "state": {"terminated": {"startedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "finishedAt": ts(),
                                  "exitCode": 0, "message": '{"outcome": "Succeeded", "step": 20}'}}}]}})
    finish_job(batch_api, namespace, job.metadata.name)

    def finished_matches(samples, body):
        assert body["status"]["phase"] == "Succeeded"
        assert_run_matches_status(samples, body)

    wait_for(lambda: matches(url, run, finished_matches), timeout=20, ignore=(AssertionError, LookupError),
             message="/metrics shows the finished run exactly as its status says")
    first = run_series(scrape(url), "TrainingRun", namespace, "scraped")
    time.sleep(1.1)
    assert run_series(scrape(url), "TrainingRun", namespace, "scraped") == first
    assert one(scrape(url), "genforge_pool_accelerators_in_use", pool=pool, accelerator_type="cpu") == 0

    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "scraped")
    wait_for(lambda: run_series(scrape(url), "TrainingRun", namespace, "scraped") == {}, timeout=20,
             message="a deleted run's series disappear")
