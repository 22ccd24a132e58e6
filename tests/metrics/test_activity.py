"""Counters, the reconcile histogram, the kopf event handler and the /metrics server."""

from __future__ import annotations

import asyncio
import urllib.request

import kopf
import pytest

from genforge_operator import metrics

from . import bodies
from .scrape import parse, run_series


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("record", "args", "sample", "labels"), [
    (metrics.record_run_finished, ("TrainingRun", "Failed"), "genforge_runs_finished_total",
     {"kind": "TrainingRun", "outcome": "Failed"}),
    (metrics.record_run_finished, ("FineTune", "Succeeded"), "genforge_runs_finished_total",
     {"kind": "FineTune", "outcome": "Succeeded"}),
    (metrics.record_run_finished, ("Deployment", "Failed"), "genforge_runs_finished_total",
     {"kind": "Other", "outcome": "Failed"}),
    (metrics.record_enforcement, ("Suspend",), "genforge_budget_enforcement_actions_total", {"action": "Suspend"}),
    (metrics.record_admission_refused, ("BudgetExhausted",), "genforge_admissions_refused_total",
     {"reason": "BudgetExhausted"}),
    (metrics.record_admission_refused, ("estimate $12.00 exceeds the remaining $3.00",),
     "genforge_admissions_refused_total", {"reason": "Other"}),
    (metrics.record_reconcile_error, ("trainingruns-tick",), "genforge_reconcile_errors_total",
     {"handler": "trainingruns-tick"}),
], ids=["run-failed", "finetune-succeeded", "unknown-kind", "enforcement", "refused", "refused-message",
        "reconcile-error"])
def test_counters_count_once_per_call(record, args, sample, labels):
    before = value(sample, **labels)
    record(*args)
    assert value(sample, **labels) == before + 1


def test_known_outcomes_and_actions_start_at_zero():
    samples = parse(metrics.collect_text())
    for kind in metrics.RUN_KINDS:
        assert ("genforge_runs_finished_total", (("kind", kind), ("outcome", "Failed"))) in samples
    assert ("genforge_budget_enforcement_actions_total", (("action", "Stop"),)) in samples


def test_reconcile_histogram_by_kind():
    before = value("genforge_reconcile_duration_seconds_count", kind="Dataset")
    slow_before = value("genforge_reconcile_duration_seconds_bucket", kind="Dataset", le="0.5")
    metrics.observe_reconcile("Dataset", 0.03)
    metrics.observe_reconcile("Dataset", 2.0)
    assert value("genforge_reconcile_duration_seconds_count", kind="Dataset") == before + 2
    assert value("genforge_reconcile_duration_seconds_bucket", kind="Dataset", le="0.5") == slow_before + 1


def test_track_reconcile_times_and_counts_errors():
    count = value("genforge_reconcile_duration_seconds_count", kind="Budget")
    errors = value("genforge_reconcile_errors_total", handler="budgets-tick")
    with metrics.track_reconcile("Budget", "budgets-tick"):
        pass
    with pytest.raises(RuntimeError), metrics.track_reconcile("Budget", "budgets-tick"):
        raise RuntimeError("boom")
    assert value("genforge_reconcile_duration_seconds_count", kind="Budget") == count + 2
    assert value("genforge_reconcile_errors_total", handler="budgets-tick") == errors + 1


@pytest.mark.parametrize(("raw", "label"), [
    ("BudgetExhausted", "BudgetExhausted"), ("trainingruns-tick", "trainingruns-tick"), ("Stop", "Stop"),
    ("", "Other"), (None, "Other"), ("a message with spaces", "Other"), ("12345", "Other"),
    ("x" * 80, "Other"),
])
def test_label_values_are_bounded(raw, label):
    assert metrics.bounded(raw) == label


def test_exposed_names_cover_every_sample_the_operator_writes():
    metrics.record_reconcile_error("x")
    metrics.record_admission_refused("x")
    metrics.observe_reconcile("Dataset", 0.1)
    names = {name for name, _ in parse(metrics.collect_text())}
    genforge = {n for n in names if n.startswith(metrics.PREFIX)}
    assert genforge <= metrics.exposed_names()
    assert {"genforge_runs_finished_total", "genforge_reconcile_duration_seconds_bucket",
            "genforge_reconcile_duration_seconds_sum", "genforge_reconcile_duration_seconds_count",
            "genforge_budget_enforcement_actions_total", "genforge_admissions_refused_total",
            "genforge_reconcile_errors_total"} <= genforge


# ------------------------------------------------------------------ kopf wiring
@pytest.fixture
def global_store():
    metrics.STORE.clear()
    yield metrics.STORE
    metrics.STORE.clear()


def test_event_handler_follows_added_modified_deleted(global_store):
    run = bodies.run("shapes-v1")
    running = bodies.run("shapes-v1", {"phase": "Running", "pool": "gpu-l4"})
    asyncio.run(metrics.on_event(event={"type": None, "object": run}, body=run))  # kopf's initial listing
    asyncio.run(metrics.on_event(event={"type": "MODIFIED", "object": running}, body=running))
    samples = parse(metrics.collect_text())
    assert samples[("genforge_run_phase", (("kind", "TrainingRun"), ("name", "shapes-v1"), ("namespace", "team-a"),
                                           ("phase", "Running")))] == 1
    asyncio.run(metrics.on_event(event={"type": "DELETED", "object": running}, body=running))
    assert run_series(parse(metrics.collect_text()), "TrainingRun", "team-a", "shapes-v1") == {}


def test_store_handlers_watch_all_six_kinds():
    registry = kopf.OperatorRegistry()
    metrics.register_store_handlers(registry)
    metrics.register_store_handlers(registry)  # idempotent
    handlers = registry._watching.get_all_handlers()  # kopf is pinned
    assert sorted(h.id for h in handlers) == sorted(f"metrics-{k.plural}" for k in metrics.KINDS.values())
    watched = {(h.selector.group, h.selector.any_name) for h in handlers}
    assert watched == {("genforge.dev", plural) for plural in metrics.STORE_PLURALS}


# ------------------------------------------------------------------ the server
def test_server_serves_metrics_and_is_idempotent(global_store):
    started_here = metrics._server is None
    port = metrics.start_metrics_server(port=0, addr="127.0.0.1")
    try:
        assert metrics.start_metrics_server(port=0, addr="127.0.0.1") == port
        global_store.upsert(bodies.budget("team", {"spent": "1", "remaining": "9"}))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        assert 'genforge_budget_spent_dollars{name="team",namespace="team-a"} 1.0' in text
        assert "process_cpu_seconds_total" in text
    finally:
        if started_here:
            metrics.stop_metrics_server()


@pytest.mark.parametrize(("env", "port"), [({}, 8080), ({"GENFORGE_METRICS_PORT": "9102"}, 9102),
                                           ({"GENFORGE_METRICS_PORT": ""}, 8080)])
def test_metrics_port_from_env(env, port):
    assert metrics.metrics_port(env) == port
