"""The status collector: gauges equal the resources' status, live between updates, and
follow the store (deletes, restarts) with bounded labels."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from genforge_operator import metrics

from . import bodies
from .scrape import (
    assert_budget_matches_status,
    assert_run_matches_status,
    one,
    parse,
    run_series,
    select,
)

WRITTEN = datetime(2026, 11, 27, 12, 10, 0, tzinfo=UTC)  # when the statuses below were written
seg = bodies.segment

RUNS = {
    # No status yet: Pending, nothing accrued, the spec's limit.
    "pending-no-status": bodies.run("fresh"),
    # 600 s × 2 accelerators × $0.71/h = $0.236667 (open: still accruing).
    "running-open-segment": bodies.run("shapes-v1", {
        "phase": "Running", "pool": "gpu-l4", "segments": [seg("2026-11-27T12:00:00Z")],
        "cost": {"accrued": "0.236667", "estimated": "1.42", "estimatedSeconds": 3600.0, "limit": "5"},
        "acceleratorSeconds": 1200.0, "runningSeconds": 600.0,
        "progress": {"step": 250, "totalSteps": 1000, "percent": 25.0, "etaSeconds": 1800.0}}),
    # 1800 s × 2 × $0.71/h = $0.71.
    "succeeded-closed": bodies.run("shapes-v0", {
        "phase": "Succeeded", "pool": "gpu-l4",
        "segments": [seg("2026-11-27T11:00:00Z", "2026-11-27T11:30:00Z")],
        # ran 1800 s of an estimated 1500 s: estimateError (1800 − 1500) / 1500 = +0.2
        "cost": {"accrued": "0.71", "estimated": "0.60", "estimatedSeconds": 1500.0, "limit": "5",
                 "estimateError": 0.2},
        "estimate": {"seconds": 1500.0, "minSeconds": 1300.0, "maxSeconds": 1800.0,
                     "basis": "startup measured (2 runs), training measured (2 runs), checkpoints prior",
                     "parts": [{"part": "startup", "seconds": 100.0, "basis": "measured", "runs": 2},
                               {"part": "training", "seconds": 1370.0, "basis": "measured", "runs": 2},
                               {"part": "checkpoints", "seconds": 30.0, "basis": "prior", "runs": 0}]},
        "acceleratorSeconds": 3600.0, "runningSeconds": 1800.0,
        "progress": {"step": 1000, "totalSteps": 1000, "percent": 100.0, "etaSeconds": 0}}),
    # A price change at 11:20: 1200 s × 2 × 0.71/3600 + 1200 s × 2 × 1.42/3600 = 0.473333 + 0.946667.
    "budget-exceeded-repriced": bodies.run("big", {
        "phase": "BudgetExceeded", "pool": "gpu-l4",
        "segments": [seg("2026-11-27T11:00:00Z", "2026-11-27T11:20:00Z"),
                     seg("2026-11-27T11:20:00Z", "2026-11-27T11:40:00Z", price="1.42")],
        "cost": {"accrued": "1.42", "estimated": "1.2", "limit": "1.4"},
        "acceleratorSeconds": 4800.0, "runningSeconds": 2400.0,
        "progress": {"step": 600, "totalSteps": 1000, "percent": 60.0}},
        spec={**bodies.RUN_SPEC, "budget": {"maxCost": "1.4"}}),
    # A FineTune on one CPU node: 300 s × 1 × $0.05/h = $0.004167; progress known only as percent.
    "finetune-cpu-percent": bodies.run("lora", {
        "phase": "Running", "pool": "cpu",
        "segments": [seg("2026-11-27T12:05:00Z", pool="cpu", accelerators=1, price="0.05")],
        "cost": {"accrued": "0.004167", "limit": "0.5"},
        "acceleratorSeconds": 300.0, "runningSeconds": 300.0, "progress": {"percent": 42.0}}, kind="FineTune"),
    # 360 s × 2 × $0.71/h = $0.142; three trainer pods failed.
    "failed-with-restarts": bodies.run("flaky", {
        "phase": "Failed", "pool": "gpu-l4", "restarts": 3,
        "segments": [seg("2026-11-27T10:00:00Z", "2026-11-27T10:06:00Z")],
        "cost": {"accrued": "0.142", "limit": "5"}, "acceleratorSeconds": 720.0, "runningSeconds": 360.0,
        "progress": {"step": 10, "totalSteps": 1000, "percent": 1.0}}),
    # Waiting for a Budget in another namespace: estimated, nothing accrued.
    "waiting-other-namespace": bodies.run("queued", {
        "phase": "Waiting", "pool": "gpu-l4",
        "cost": {"accrued": "0", "estimated": "3", "estimatedSeconds": 7200.0, "limit": "5"}},
        namespace="team-b"),
}

POOLS = [
    bodies.pool("gpu-l4", measured=[
        {"architecture": "unet2d-ddpm", "resolution": 64, "samplesPerSecond": 120.5, "runs": 3},
        {"architecture": "stable-diffusion", "resolution": 512, "samplesPerSecond": 8.25, "runs": 1}]),
    bodies.pool("cpu", type="cpu", price="0.05", calibration={
        "startupSeconds": {"value": 9.5, "runs": 3, "used": 2, "updated": "2026-11-27T11:30:00Z"},
        "trainingFlopsPerSecond": {"value": 2.4e10, "runs": 3, "used": 3, "updated": "2026-11-27T11:30:00Z"}}),
    bodies.pool("idle", type="nvidia-a100", price="3.00"),
]

BUDGETS = {
    "under-warn": bodies.budget("team", {"spent": "7.5", "remaining": "2.5", "runs": 4}),
    "no-status-yet": bodies.budget("fresh", limit="25", warn_at=(90,)),
    "exhausted": bodies.budget("over", {"spent": "12", "remaining": "0", "runs": 9}, namespace="team-b"),
}


def make_store(*groups) -> metrics.ResourceStore:
    store = metrics.ResourceStore()
    for group in groups:
        for body in group:
            assert store.upsert(body) is not None, body["metadata"]["name"]
    return store


def registry_for(store: metrics.ResourceStore, at: datetime = WRITTEN) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(metrics.StatusCollector(store, clock=lambda: at))
    return registry


def samples_of(store: metrics.ResourceStore, at: datetime = WRITTEN):
    return parse(metrics.collect_text(registry_for(store, at)))


ALL = (RUNS.values(), POOLS, BUDGETS.values())


# ------------------------------------------------------------------ values equal status
@pytest.mark.parametrize("case", RUNS)
def test_run_gauges_equal_status(case):
    samples = samples_of(make_store(*ALL))
    assert_run_matches_status(samples, RUNS[case])


@pytest.mark.parametrize(("case", "pool", "estimated_seconds", "limit_seconds", "eta"), [
    ("running-open-segment", "gpu-l4", 3600.0, 7200.0, 1800.0),
    ("finetune-cpu-percent", "cpu", None, None, None),
    ("pending-no-status", "", None, 7200.0, None),
])
def test_run_labels_and_time_gauges(case, pool, estimated_seconds, limit_seconds, eta):
    meta = RUNS[case]["metadata"]
    samples = samples_of(make_store(*ALL))
    who = {"kind": RUNS[case]["kind"], "namespace": meta["namespace"], "name": meta["name"]}
    labels = {dict(lbls).get("pool") for lbls in select(samples, "genforge_run_cost_dollars", **who)}
    assert labels == {pool}
    assert one(samples, "genforge_run_estimated_duration_seconds", **who) == estimated_seconds
    assert one(samples, "genforge_run_duration_limit_seconds", **who) == limit_seconds
    assert one(samples, "genforge_run_eta_seconds", **who) == eta


def stuck_run(ready_reason):
    """A Running run whose pod has been unschedulable since 12:00 (10 minutes before WRITTEN)."""
    return bodies.run("stuck", {
        "phase": "Running", "pool": "gpu-l4", "segments": [],
        "conditions": [
            {"type": "PodsReady", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available", "lastTransitionTime": "2026-11-27T12:00:00Z"},
            {"type": "Ready", "status": "False", "reason": ready_reason, "message": "...",
             "lastTransitionTime": "2026-11-27T12:00:00Z"}]})


def test_pods_that_do_not_run_are_exported_with_their_reason_and_the_stuck_flag():
    """Issue 15 item 5: a Running run whose pods never started is visible to Prometheus."""
    body = stuck_run
    who = {"kind": "TrainingRun", "namespace": "team-a", "name": "stuck"}
    early = samples_of(make_store([body("Unschedulable")]))
    assert one(early, "genforge_run_pods_not_ready_seconds", reason="Unschedulable", **who) == 600.0
    assert one(early, "genforge_run_pods_stuck", **who) == 0.0
    late = samples_of(make_store([body("PodStartTimeout")]), WRITTEN + timedelta(seconds=60))
    assert one(late, "genforge_run_pods_not_ready_seconds", reason="Unschedulable", **who) == 660.0
    assert one(late, "genforge_run_pods_stuck", **who) == 1.0
    running = samples_of(make_store([RUNS["running-open-segment"]]))
    assert not select(running, "genforge_run_pods_not_ready_seconds")


def test_a_finished_runs_evaluation_and_sample_statistics_are_exported_per_metric():
    """Issue 21: what the evaluation measured (status.metrics) is a gauge per metric."""
    body = bodies.run("shapes-v0", {
        **RUNS["succeeded-closed"]["status"],
        "metrics": {"loss": 0.0213, "fid": 2.5, "statisticsSamples": 64, "onDataBackground": 0.875,
                    "backgroundMix": 0.81, "backgroundNoise": 1.2, "dataBackgroundNoise": 0.01,
                    "labelColour": 0.72}})
    samples = samples_of(make_store([body]))
    who = {"kind": "TrainingRun", "namespace": "team-a", "name": "shapes-v0"}
    for metric, value in body["status"]["metrics"].items():
        assert one(samples, "genforge_run_evaluation", metric=metric, **who) == pytest.approx(value)
    running = samples_of(make_store([RUNS["running-open-segment"]]))
    assert not select(running, "genforge_run_evaluation")


def test_run_cost_is_live_between_status_updates():
    """A minute after the status was written, the open segment has accrued a minute more."""
    body = RUNS["running-open-segment"]
    later = samples_of(make_store([body]), WRITTEN + timedelta(seconds=60))
    who = {"kind": "TrainingRun", "namespace": "team-a", "name": "shapes-v1"}
    assert one(later, "genforge_run_cost_dollars", **who) == pytest.approx(660 * 2 * 0.71 / 3600)
    assert one(later, "genforge_run_accelerator_seconds", **who) == pytest.approx(1320.0)
    assert one(later, "genforge_run_running_seconds", **who) == pytest.approx(660.0)
    assert one(later, "genforge_run_cost_rate_dollars_per_hour", **who) == pytest.approx(1.42)
    assert_run_matches_status(later, body, slack_seconds=60)
    with pytest.raises(AssertionError, match="genforge_run_cost_dollars"):
        assert_run_matches_status(later, body, slack_seconds=0)


def test_a_run_that_moved_pools_splits_its_cost_by_pool():
    """20 min on one CPU node at $0.05/h ($0.016667), then 10 min on 2 L4s at $0.71/h ($0.236667), still open."""
    body = bodies.run("moved", {
        "phase": "Running", "pool": "gpu-l4",
        "segments": [seg("2026-11-27T11:40:00Z", "2026-11-27T12:00:00Z", pool="cpu", accelerators=1, price="0.05"),
                     seg("2026-11-27T12:00:00Z")],
        "cost": {"accrued": "0.253333"}, "acceleratorSeconds": 2400.0, "runningSeconds": 1800.0})
    samples = samples_of(make_store([body]))
    assert_run_matches_status(samples, body)
    by_pool = {dict(k)["pool"]: v for k, v in select(samples, "genforge_run_cost_dollars", name="moved").items()}
    assert by_pool == {"cpu": pytest.approx(1200 * 0.05 / 3600), "gpu-l4": pytest.approx(600 * 2 * 0.71 / 3600)}
    rates = {dict(k)["pool"]: v for k, v in select(samples, "genforge_run_cost_rate_dollars_per_hour").items()}
    assert rates == {"cpu": 0.0, "gpu-l4": pytest.approx(1.42)}
    assert one(samples, "genforge_run_running_seconds", name="moved") == 1800.0


def test_closed_segments_do_not_move_with_the_clock():
    body = RUNS["succeeded-closed"]
    assert samples_of(make_store([body]), WRITTEN) == samples_of(make_store([body]), WRITTEN + timedelta(days=3))


def test_pool_gauges_sum_the_runs_holding_accelerators_now():
    samples = samples_of(make_store(*ALL))
    gpu, cpu, idle = ({"pool": "gpu-l4", "accelerator_type": "nvidia-l4"},
                      {"pool": "cpu", "accelerator_type": "cpu"}, {"pool": "idle", "accelerator_type": "nvidia-a100"})
    # Only "running-open-segment" (2 on gpu-l4) and "finetune-cpu-percent" (1 cpu node) hold anything.
    assert one(samples, "genforge_pool_accelerators_in_use", **gpu) == 2
    assert one(samples, "genforge_pool_accelerators_in_use", **cpu) == 1
    assert one(samples, "genforge_pool_accelerators_in_use", **idle) == 0
    assert one(samples, "genforge_pool_cost_rate_dollars_per_hour", **gpu) == pytest.approx(1.42)
    assert one(samples, "genforge_pool_cost_rate_dollars_per_hour", **cpu) == pytest.approx(0.05)
    assert one(samples, "genforge_pool_cost_rate_dollars_per_hour", **idle) == 0
    assert one(samples, "genforge_pool_accelerator_price_dollars_per_hour", **idle) == 3.0
    assert select(samples, "genforge_pool_throughput_samples_per_second", pool="gpu-l4") == {
        (("accelerator_type", "nvidia-l4"), ("architecture", "stable-diffusion"), ("pool", "gpu-l4"),
         ("resolution", "512")): 8.25,
        (("accelerator_type", "nvidia-l4"), ("architecture", "unet2d-ddpm"), ("pool", "gpu-l4"),
         ("resolution", "64")): 120.5,
    }
    assert select(samples, "genforge_pool_throughput_samples_per_second", pool="cpu") == {}


def test_pool_usage_counts_runs_on_a_pool_not_in_the_catalogue():
    store = make_store([RUNS["running-open-segment"]])
    samples = samples_of(store)
    assert one(samples, "genforge_pool_accelerators_in_use", pool="gpu-l4", accelerator_type="") == 2


@pytest.mark.parametrize("case", BUDGETS)
def test_budget_gauges_equal_status(case):
    samples = samples_of(make_store(*ALL))
    assert_budget_matches_status(samples, BUDGETS[case])


def test_budget_warn_thresholds_and_runs():
    samples = samples_of(make_store(*ALL))
    assert select(samples, "genforge_budget_warn_threshold_ratio", namespace="team-a", name="team") == {
        (("name", "team"), ("namespace", "team-a"), ("threshold", "50")): 0.5,
        (("name", "team"), ("namespace", "team-a"), ("threshold", "80")): 0.8,
    }
    assert one(samples, "genforge_budget_runs", namespace="team-b", name="over") == 9


def test_dataset_and_model_gauges():
    ds = bodies.dataset("shapes", {"phase": "Ready", "items": {
        "total": 70, "kept": 60, "dropped": {"corrupt": 1, "tooSmall": 2, "duplicate": 7}}})
    samples = samples_of(make_store([ds, bodies.model("shapes", versions=2)]))
    phases = select(samples, "genforge_dataset_phase", name="shapes")
    assert {dict(k)["phase"]: v for k, v in phases.items()} == {"Pending": 0, "Running": 0, "Ready": 1, "Failed": 0}
    assert one(samples, "genforge_dataset_items_kept", name="shapes") == 60
    assert one(samples, "genforge_dataset_items_dropped", name="shapes", reason="duplicate") == 7
    assert one(samples, "genforge_model_versions", name="shapes") == 2


# ------------------------------------------------------------------ the store follows the API
def test_deleted_run_disappears_and_frees_its_pool():
    store = make_store(*ALL)
    running = RUNS["running-open-segment"]
    assert run_series(samples_of(store), "TrainingRun", "team-a", "shapes-v1")
    store.delete_body(running)
    samples = samples_of(store)
    assert run_series(samples, "TrainingRun", "team-a", "shapes-v1") == {}
    assert run_series(samples, "TrainingRun", "team-a", "shapes-v0")  # the others stay
    assert one(samples, "genforge_pool_accelerators_in_use", pool="gpu-l4", accelerator_type="nvidia-l4") == 0


def test_deleted_budget_and_pool_disappear():
    store = make_store(*ALL)
    store.delete("Budget", "team-a", "team")
    store.delete("AcceleratorPool", None, "idle")
    samples = samples_of(store)
    assert select(samples, "genforge_budget_limit_dollars", namespace="team-a", name="team") == {}
    assert select(samples, "genforge_pool_accelerator_price_dollars_per_hour", pool="idle") == {}


def test_a_stale_delete_keeps_the_recreated_object():
    store = metrics.ResourceStore()
    old = bodies.run("same")
    new = bodies.run("same")
    new["metadata"]["uid"] = "recreated"
    store.upsert(new)
    store.delete_body(old)  # the old object's DELETED event, arriving late
    assert len(store) == 1
    store.delete_body(new)
    assert len(store) == 0


def test_an_unparseable_object_is_dropped_not_guessed():
    store = make_store([RUNS["succeeded-closed"]])
    broken = bodies.run("shapes-v0", spec={"modelRef": {"name": "x"}})  # no datasetRef, no training
    assert store.upsert(broken) is None
    assert len(store) == 0
    assert store.upsert({"kind": "ConfigMap", "metadata": {"name": "x"}}) is None


def test_a_run_with_a_bad_timestamp_is_skipped_not_the_whole_scrape():
    bad = bodies.run("bad", {"phase": "Running", "pool": "gpu-l4", "segments": [seg("yesterday")]})
    samples = samples_of(make_store([bad, RUNS["succeeded-closed"], *POOLS]))
    assert run_series(samples, "TrainingRun", "team-a", "bad") == {}
    assert_run_matches_status(samples, RUNS["succeeded-closed"])
    assert one(samples, "genforge_pool_accelerators_in_use", pool="gpu-l4", accelerator_type="nvidia-l4") == 0


def test_a_restart_shows_the_same_metrics():
    """A fresh store fed the current objects (kopf's initial listing after a restart) gives
    the same exposition as the store that followed every event."""
    before = metrics.ResourceStore()
    history = [bodies.run("shapes-v1"), bodies.run("shapes-v1", {"phase": "Pending"}),
               bodies.run("gone", {"phase": "Running"}), *ALL[0], *ALL[1], *ALL[2]]
    for body in history:
        before.upsert(body)
    before.delete_body(bodies.run("gone"))
    current = [b for group in ALL for b in group]
    random.Random(7).shuffle(current)
    after = make_store(current)
    assert metrics.collect_text(registry_for(before)) == metrics.collect_text(registry_for(after))


# ------------------------------------------------------------------ bounded labels
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-")


def test_every_label_is_an_allowed_one_with_a_bounded_value():
    metrics.record_admission_refused("BudgetExhausted")
    samples = parse(metrics.collect_text(registry_for(make_store(*ALL))) + metrics.collect_text())
    for name, labels in samples:
        if not name.startswith(metrics.PREFIX):
            continue
        for label, value in labels:
            assert label in metrics.ALLOWED_LABELS | {"le"}, (name, label)
            assert not UUID.match(value), (name, label, value)
            if label not in ("le", "resolution", "threshold"):
                assert not value.replace(".", "").isdigit(), (name, label, value)


def test_series_per_run_do_not_grow_with_progress_or_time():
    store = metrics.ResourceStore()
    counts = set()
    for step in range(0, 1000, 50):
        store.upsert(bodies.run("shapes-v1", {
            "phase": "Running", "pool": "gpu-l4", "segments": [seg("2026-11-27T12:00:00Z")],
            "cost": {"accrued": "0.1", "estimated": "1", "estimatedSeconds": 10.0, "limit": "5"},
            "progress": {"step": step, "totalSteps": 1000, "percent": step / 10, "loss": 1.0 / (step + 1),
                         "etaSeconds": 1000.0 - step}}))
        counts.add(len(samples_of(store, WRITTEN + timedelta(seconds=step))))
    assert len(counts) == 1


def test_series_grow_linearly_with_runs():
    def series(n):
        runs = [bodies.run(f"r{i}", {"phase": "Running", "pool": "gpu-l4", "segments": [seg("2026-11-27T12:00:00Z")],
                                     "cost": {"estimated": "1", "estimatedSeconds": 60.0, "limit": "5"},
                                     "progress": {"etaSeconds": 10.0}}) for i in range(n)]
        return len([k for k in samples_of(make_store(runs)) if k[0].startswith("genforge_run_")])

    per_run = len(metrics.RUN_PHASES) + 12  # run_pods_stuck (0) counts; not-ready seconds only while not ready
    assert series(1) == per_run
    assert series(40) == 40 * per_run


def test_estimate_basis_error_and_pool_calibration_are_exported():
    samples = samples_of(make_store(*ALL))
    who = {"namespace": "team-a", "kind": "TrainingRun", "name": "shapes-v0"}
    assert one(samples, "genforge_run_estimate_error_ratio", **who, pool="gpu-l4") == pytest.approx(0.2)
    assert one(samples, "genforge_run_estimated_duration_bound_seconds", **who, bound="min") == 1300.0
    assert one(samples, "genforge_run_estimated_duration_bound_seconds", **who, bound="max") == 1800.0
    assert one(samples, "genforge_run_estimated_part_seconds", **who, part="training", basis="measured") == 1370.0
    assert one(samples, "genforge_run_estimated_part_seconds", **who, part="checkpoints", basis="prior") == 30.0
    cpu = {"pool": "cpu", "accelerator_type": "cpu"}
    assert one(samples, "genforge_pool_calibration", **cpu, part="training_flops_per_second") == 2.4e10
    assert one(samples, "genforge_pool_calibration_runs", **cpu, part="startup_seconds") == 2
    assert one(samples, "genforge_run_estimate_error_ratio", namespace="team-a", name="shapes-v1") is None


def test_collector_emits_exactly_the_declared_gauges():
    ds = bodies.dataset("shapes", {"phase": "Ready", "items": {"total": 1, "kept": 1}})
    evaluated = bodies.run("evaluated", {**RUNS["succeeded-closed"]["status"], "metrics": {"fid": 2.5}})
    families = {name for name, _ in samples_of(make_store(
        *ALL, [ds, bodies.model(), stuck_run("PodStartTimeout"), evaluated]))}
    assert families == {g.name for g in metrics.STATUS_GAUGES}
    for gauge in metrics.STATUS_GAUGES:
        assert set(gauge.labels) <= metrics.ALLOWED_LABELS, gauge.name
        assert gauge.name.startswith(metrics.PREFIX), gauge.name
