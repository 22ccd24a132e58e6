"""TrainingRun/FineTune lifecycle decisions, as a user would see them in status and Events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from genforge_operator.api import parse_resource
from genforge_operator.builders import run_document
from genforge_operator.config import OperatorConfig
from genforge_operator.money import throughput
from genforge_operator.plan import Catalog
from genforge_operator.reconcile import Observed, reconcile_run

from .factories import make_budget, make_dataset, make_finetune, make_model, make_pool, make_run

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
VERSIONED = {"versions": [{"name": "v1", "source": {"kind": "TrainingRun", "name": "r"},
                           "uri": "file:///data/m", "createdAt": "2026-01-01T00:00:00Z"}], "latest": "v1"}
# $1 per second on one CPU node: money moves fast enough to see in a test.
DEAR = make_pool("cpu", pricePerHour="3600", relativeThroughput=1000.0)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def catalog(pool=DEAR, dataset=None, budgets=(), runs=(), model=None) -> Catalog:
    return Catalog(pools={pool.name: pool}, models={"shapes": model or make_model(status=VERSIONED)},
                   datasets={"shapes": dataset or make_dataset()}, budgets=list(budgets), runs=list(runs))


def job(suspend=False, conditions=(), deadline=None, active=1):
    return {"metadata": {"name": "gf-tr-run-1"},
            "spec": {"suspend": suspend, **({"activeDeadlineSeconds": deadline} if deadline else {})},
            "status": {"active": active, "conditions": [
                {"type": t, "status": "True", "reason": r, "message": r, "lastTransitionTime": ts(-60)}
                for t, r in conditions]}}


def pod(start=0.0, end=None, exit_code=None, message=None, name="gf-tr-run-1-abcde"):
    if end is None:
        state, phase = {"running": {"startedAt": ts(start)}}, "Running"
    else:
        state = {"terminated": {"startedAt": ts(start), "finishedAt": ts(end), "exitCode": exit_code,
                                "message": json.dumps(message) if message else None}}
        phase = "Succeeded" if exit_code == 0 else "Failed"
    return {"metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
            "status": {"phase": phase, "podIP": "10.0.0.5",
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def observe(run, status=None, job_obj=None, pods=(), at=0.0, cat=None, progress=None):
    return Observed(resource=run, body_status=status or {}, catalog=cat or catalog(), job=job_obj,
                    pods=list(pods), now=T0 + timedelta(seconds=at), progress=progress)


def condition(out, type_):
    return next(c for c in out.status["conditions"] if c["type"] == type_)


RUNNING = {"phase": "Running", "job": "gf-tr-run-1", "pool": "cpu",
           "cost": {"estimated": "10", "estimatedSeconds": 10.0, "limit": "5"}}


def test_admitted_run_gets_children_and_estimate():
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"})), CONFIG)
    assert [o["kind"] for o in out.create] == ["Job"]  # its run document rides in the pod's annotation
    assert out.status["phase"] == "Running" and out.status["pool"] == "cpu"
    assert float(out.status["cost"]["estimated"]) > 0 and out.status["cost"]["limit"] == "1000"
    assert condition(out, "Admitted")["status"] == "True"
    job_obj = next(o for o in out.create if o["kind"] == "Job")
    assert job_obj["spec"]["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("cat,reason", [
    (catalog(dataset=make_dataset(phase="Running")), "DatasetNotReady"),
    (catalog(dataset=make_dataset(phase=None)), "DatasetNotReady"),
    (Catalog(pools={"cpu": DEAR}, models={}, datasets={"shapes": make_dataset()}), "ModelNotFound"),
], ids=["dataset-preparing", "dataset-pending", "model-missing"])
def test_waits_for_references_without_a_job(cat, reason):
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), cat=cat), CONFIG)
    assert not out.create
    assert out.status["phase"] == "Waiting"
    assert condition(out, "Ready")["reason"] == reason
    assert out.events[-1].type == "Warning"


def test_estimate_over_max_cost_fails_and_never_gets_a_job():
    run = make_run(training={"steps": 100000, "batchSize": 64}, budget={"maxCost": "0.01"})
    out = reconcile_run(observe(run), CONFIG)
    assert not out.create
    assert out.status["phase"] == "Failed"
    ready = condition(out, "Ready")
    assert ready["reason"] == "EstimateExceedsMaxCost"
    assert "$0.01" in ready["message"]


def test_exhausted_namespace_budget_makes_run_wait():
    spender = make_run(name="spender", status={"phase": "Succeeded", "segments": [
        {"start": ts(-100), "end": ts(-50), "pool": "cpu", "accelerators": 1, "pricePerHour": "3600"}]})
    cat = catalog(budgets=[make_budget(limit="40", period="Monthly")], runs=[spender])
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), cat=cat), CONFIG)
    assert not out.create and out.status["phase"] == "Waiting"
    assert condition(out, "Ready")["reason"] in ("BudgetExhausted", "InsufficientBudget")


def test_running_run_accrues_from_pod_time_and_shows_progress():
    progress = {"step": 40, "totalSteps": 100, "loss": 0.5, "samplesPerSecond": 12.0, "etaSeconds": 6}
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, job(), [pod(0)], at=3,
                                progress=progress), CONFIG)
    assert out.status["cost"]["accrued"] == "3"
    assert out.status["acceleratorSeconds"] == 3 and out.status["runningSeconds"] == 3
    assert out.status["progress"] == {"step": 40, "totalSteps": 100, "percent": 40.0, "loss": 0.5,
                                      "samplesPerSecond": 12.0, "etaSeconds": 6}
    assert out.job_patch is None and out.status["phase"] == "Running"
    # the nearest limit's moment (maxDuration); the periodic look is the Reconciler's (tick_period)
    assert out.requeue_after == pytest.approx(997)


def test_reaching_max_cost_stops_the_run_gracefully():
    run = make_run(budget={"maxCost": "5"})
    out = reconcile_run(observe(run, RUNNING, job(), [pod(0)], at=5), CONFIG)
    assert out.job_patch == {"spec": {"suspend": True}}
    assert out.status["phase"] == "BudgetExceeded"
    assert condition(out, "Ready")["reason"] == "MaxCostReached"
    assert "$5.00" in condition(out, "Ready")["message"]


def test_requeue_lands_on_the_limit():
    out = reconcile_run(observe(make_run(budget={"maxCost": "5"}), RUNNING, job(), [pod(0)], at=3), CONFIG)
    assert out.job_patch is None and out.requeue_after == pytest.approx(2.0)


def test_raising_max_cost_resumes_a_stopped_run():
    stopped = {**RUNNING, "phase": "BudgetExceeded", "checkpoint": "file:///data/ckpt/step-40"}
    pods = [pod(0, 5, exit_code=143)]
    still = reconcile_run(observe(make_run(budget={"maxCost": "5"}), stopped, job(suspend=True, active=0), pods,
                                  at=20), CONFIG)
    assert still.job_patch is None and still.status["phase"] == "BudgetExceeded"
    raised = make_run(budget={"maxCost": "500"}, generation=2)
    out = reconcile_run(observe(raised, stopped, job(suspend=True, active=0), pods, at=20), CONFIG)
    assert out.job_patch["spec"]["suspend"] is False
    assert out.job_patch["spec"]["activeDeadlineSeconds"] > 0
    assert out.status["phase"] == "Running"
    assert condition(out, "Ready")["reason"] == "BudgetRaised"
    assert out.status["cost"]["accrued"] == "5"  # the stopped time is not billed


@pytest.mark.parametrize(("max_duration", "wanted"), [
    ("3h", 3 * 3600 + 30),   # raised: Kubernetes must not kill the run at the old limit
    ("30m", 1800 + 30),      # lowered: the backstop follows too
    ("1h", None),            # unchanged: no patch on every tick
], ids=["raised", "lowered", "unchanged"])
def test_a_limit_changed_while_running_moves_the_jobs_deadline(max_duration, wanted):
    """The Job was created for maxDuration 1h (activeDeadlineSeconds 3600 + 30 s slack, counted
    from the Job's start); 10 minutes in, the limit changes."""
    running_job = job(deadline=3600 + 30)
    running_job["status"]["startTime"] = ts(0)
    run = make_run(budget={"maxCost": "100000", "maxDuration": max_duration}, generation=2)
    out = reconcile_run(observe(run, RUNNING, running_job, [pod(0)], at=600), CONFIG)
    assert out.status["phase"] == "Running"
    if wanted is None:
        assert out.job_patch is None
    else:
        assert out.job_patch == {"spec": {"activeDeadlineSeconds": wanted}}


@pytest.mark.parametrize("pod_start, at, patched", [
    (120, 600, False),    # 2 minutes waiting for a node, the deadline is far: no patch
    (600, 900, True),     # 10 minutes waiting: more than 5 % of the deadline, follow it
    (120, 3400, True),    # 2 minutes, but the old deadline is 230 s away: extend it now
], ids=["small-drift-far", "large-drift", "small-drift-near"])
def test_time_spent_waiting_for_pods_moves_the_deadline_in_steps(pod_start, at, patched):
    """activeDeadlineSeconds counts from the Job's start, but a run is not billed while its
    pod waits for a node: the operator extends the backstop by the waiting time — in steps,
    not by a few seconds on every reconcile of every waiting Job."""
    waiting_job = job(deadline=3600 + 30)
    waiting_job["status"]["startTime"] = ts(0)
    run = make_run(budget={"maxCost": "100000", "maxDuration": "1h"})
    status = {**RUNNING, "startTime": ts(pod_start)}
    out = reconcile_run(observe(run, status, waiting_job, [pod(pod_start)], at=at), CONFIG)
    assert out.status["phase"] == "Running"
    if patched:
        assert out.job_patch["spec"]["activeDeadlineSeconds"] > 3600 + 30 + pod_start - 15
    else:
        assert out.job_patch is None


def test_deadline_backstop_marks_budget_exceeded():
    run = make_run(budget={"maxCost": "5"})
    out = reconcile_run(observe(run, RUNNING, job(conditions=[("Failed", "DeadlineExceeded")], deadline=35),
                                [pod(0, 6, exit_code=143)], at=40), CONFIG)
    assert out.status["phase"] == "BudgetExceeded"
    assert condition(out, "Ready")["reason"] == "MaxCostReached"


def test_finished_job_waits_briefly_for_the_trainers_result():
    """The pod's final state may arrive after the Job's: don't settle on an empty result."""
    fresh = job(conditions=[("Complete", "")])
    fresh["status"]["conditions"][0]["lastTransitionTime"] = ts(9)
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, fresh, [pod(0)], at=10), CONFIG)
    assert out.status["phase"] == "Running" and out.requeue_after == 2.0


def test_success_records_artifact_metrics_and_registry_version():
    words = {"outcome": "Succeeded", "step": 100, "loss": 0.04, "artifact": "file:///data/runs/x/model",
             "metrics": {"loss": 0.04, "fid": 80.5, "featureExtractor": "random"}, "samplesPerSecond": 20.0}
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, job(conditions=[("Complete", "")]),
                                [pod(0, 8, exit_code=0, message=words)], at=10), CONFIG)
    assert out.status["phase"] == "Succeeded"
    assert out.status["artifact"] == "file:///data/runs/x/model"
    assert out.status["metrics"] == {"loss": 0.04, "fid": 80.5}
    assert out.status["cost"]["accrued"] == "8"
    assert out.status["cost"]["estimateError"] == pytest.approx(-0.2)
    assert out.new_version["uri"] == "file:///data/runs/x/model"
    assert out.new_version["source"] == {"kind": "TrainingRun", "name": "run-1"}
    fields = out.measure(make_pool("cpu"))
    assert fields["measured"][0]["architecture"] == "unet2d-ddpm" and fields["measured"][0]["runs"] == 1
    assert "calibration" not in fields  # this trainer reported no timing


def test_success_calibrates_the_pool_part_by_part_from_the_trainers_timing():
    # 20 s of running: 15 s training 100 steps of 8 samples, 1.5 s evaluating 16 images × 50 steps,
    # 0.5 s for 2 writes; the other 3 s is start-up and exit.
    timing = {"startStep": 0, "startupSeconds": 0.7, "trainingSeconds": 15.0, "trainingSamples": 800,
              "checkpointSeconds": 0.5, "writes": 2, "evaluationSeconds": 1.5, "evaluationSamples": 16,
              "inferenceSteps": 50}
    words = {"outcome": "Succeeded", "step": 100, "artifact": "file:///data/runs/x/model", "timing": timing}
    run = make_run(budget={"maxCost": "1000"})
    observed = observe(run, RUNNING, job(conditions=[("Complete", "")]), [pod(0, 20, exit_code=0, message=words)],
                       at=22)
    out = reconcile_run(observed, CONFIG)
    model = observed.catalog.models["shapes"].spec
    per_sample = throughput.train_flops_per_sample(model)
    calibration = out.measure(make_pool("cpu"))["calibration"]
    assert set(calibration) == {"startupSeconds", "trainingFlopsPerSecond", "evaluationFlopsPerSecond",
                                "checkpointSeconds"}
    assert calibration["startupSeconds"]["value"] == pytest.approx(3.0)
    # 100 steps of 8 in 15 s: 0.15 s a step; the rate at which the CPU's per-step overhead and
    # the step's FLOPs, both at the pool's speed, take that long
    prior = throughput.prior_flops_per_second(make_pool("cpu").spec)[0]
    training = (throughput.STEP_OVERHEAD_SECONDS_CPU * prior + 8 * per_sample) / 0.15
    assert calibration["trainingFlopsPerSecond"]["value"] == pytest.approx(training, rel=1e-6)
    # 1.5 s for 50 denoising calls: their overhead and FLOPs the same way
    evaluation = (50 * throughput.SAMPLING_CALL_OVERHEAD_SECONDS_CPU * prior + 16 * 50 * per_sample / 3) / 1.5
    assert calibration["evaluationFlopsPerSecond"]["value"] == pytest.approx(evaluation, rel=1e-6)
    assert calibration["checkpointSeconds"]["value"] == pytest.approx(0.25)
    assert calibration["checkpointSeconds"]["recent"] == [
        {"value": 0.25, "at": "2026-11-27T12:00:22Z", "run": "TrainingRun/team-a/run-1", "uid": run.uid}]
    # the same run measured again (a reconcile retried after a conflict on its version) adds nothing
    pool = make_pool("cpu")
    pool.status.calibration = parse_resource({"kind": "AcceleratorPool", "metadata": {"name": "cpu"}, "spec": {
        "pricePerHour": "1"}, "status": {"calibration": calibration}}).status.calibration
    assert out.measure(pool) is None


ESTIMATED = {"seconds": 100.0, "minSeconds": 80.0, "maxSeconds": 120.0, "basis": "…", "fromStep": 0,
             "parts": [{"part": "startup", "seconds": 10.0, "basis": "measured", "runs": 1},
                       {"part": "training", "seconds": 80.0, "basis": "measured", "runs": 1},
                       {"part": "evaluation", "seconds": 6.0, "basis": "measured", "runs": 1},
                       {"part": "checkpoints", "seconds": 4.0, "basis": "measured", "runs": 1}]}


@pytest.mark.parametrize(("case", "status", "job_obj", "pods", "at", "phase", "error"), [
    # stopped by maxCost at step 25 of 100 after 40 s: 10 + (80 + 4) × 25 % = 31 s estimated
    pytest.param("budget", {**RUNNING, "estimate": ESTIMATED, "progress": {"step": 25, "totalSteps": 100}},
                 job(), [pod(0)], 40, "BudgetExceeded", (40 - 31) / 31, id="budget-exceeded-pro-rated"),
    # failed at step 50 after 46 s: 10 + 84 × 50 % = 52 s estimated
    pytest.param("failed", {**RUNNING, "estimate": ESTIMATED, "progress": {"step": 50, "totalSteps": 100}},
                 job(conditions=[("Failed", "BackoffLimitExceeded")]),
                 [pod(0, 46, exit_code=1, message={"outcome": "Failed", "reason": "DataError", "message": "x"})],
                 47, "Failed", (46 - 52) / 52, id="failed-pro-rated"),
    # resumed from step 50 (the estimate was of steps 50..100), stopped at 75: 10 + 84 × 50 %
    pytest.param("resumed", {**RUNNING, "estimate": {**ESTIMATED, "fromStep": 50},
                             "progress": {"step": 75, "totalSteps": 100}},
                 job(), [pod(0)], 40, "BudgetExceeded", (40 - 52) / 52, id="resumed-run-pro-rated-from-its-step"),
])
def test_a_run_that_stops_early_gets_an_estimate_error_against_the_pro_rated_estimate(
        case, status, job_obj, pods, at, phase, error):
    budget = {"maxCost": "5"} if case != "failed" else {"maxCost": "1000"}
    status = {**status, "cost": {**status["cost"], "estimatedSeconds": 100.0}}
    out = reconcile_run(observe(make_run(budget=budget), status, job_obj, pods, at=at), CONFIG)
    assert out.status["phase"] == phase
    assert out.status["cost"]["estimateError"] == pytest.approx(error, abs=1e-3)


def test_a_stopped_trainers_last_step_counts_for_the_pro_rated_estimate():
    """The progress polled while it ran lags; the trainer's last words say where it stopped."""
    status = {**RUNNING, "phase": "BudgetExceeded", "estimate": ESTIMATED, "progress": {"step": 20, "totalSteps": 100},
              "cost": {**RUNNING["cost"], "estimatedSeconds": 100.0}}
    stopped = pod(0, 40, exit_code=143, message={"outcome": "Stopped", "step": 25, "reason": "Terminated"})
    out = reconcile_run(observe(make_run(budget={"maxCost": "5"}), status, job(suspend=True, active=0), [stopped],
                                at=45), CONFIG)
    assert out.status["phase"] == "BudgetExceeded" and out.status["progress"]["step"] == 25
    assert out.status["cost"]["estimateError"] == pytest.approx((40 - 31) / 31, abs=1e-3)


def test_a_run_refused_before_it_ran_has_no_estimate_error():
    out = reconcile_run(observe(make_run(budget={"maxCost": "0.000001"})), CONFIG)
    assert out.status["phase"] == "Failed" and "estimateError" not in out.status.get("cost", {})


def test_a_run_running_again_drops_the_error_of_its_stop():
    status = {**RUNNING, "estimate": ESTIMATED, "cost": {**RUNNING["cost"], "estimateError": 0.3}}
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), status, job(), [pod(0)], at=3), CONFIG)
    assert out.status["phase"] == "Running" and "estimateError" not in out.status["cost"]


def test_failure_carries_the_trainers_report():
    words = {"outcome": "Failed", "reason": "ConfigError", "message": "unknown schemaVersion"}
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING,
                                job(conditions=[("Failed", "PodFailurePolicy")]),
                                [pod(0, 2, exit_code=2, message=words)], at=3), CONFIG)
    assert out.status["phase"] == "Failed"
    assert condition(out, "Ready")["reason"] == "ConfigError"
    assert "schemaVersion" in condition(out, "Ready")["message"]


def test_suspend_and_resume():
    run = make_run(budget={"maxCost": "1000"}, suspend=True)
    out = reconcile_run(observe(run, RUNNING, job(), [pod(0)], at=3), CONFIG)
    assert out.job_patch == {"spec": {"suspend": True}} and out.status["phase"] == "Suspended"
    suspended = {**RUNNING, "phase": "Suspended"}
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), suspended, job(suspend=True, active=0),
                                [pod(0, 3, exit_code=143)], at=30), CONFIG)
    assert out.job_patch["spec"]["suspend"] is False and out.status["phase"] == "Running"
    assert condition(out, "Ready")["reason"] == "Resumed"


def test_suspended_at_creation_gets_no_job():
    out = reconcile_run(observe(make_run(suspend=True)), CONFIG)
    assert not out.create and out.status["phase"] == "Suspended"


def test_kueue_run_waits_for_admission():
    run = make_run(budget={"maxCost": "1000"}, queueName="team-a")
    out = reconcile_run(observe(run), CONFIG)
    job_obj = next(o for o in out.create if o["kind"] == "Job")
    assert job_obj["spec"]["suspend"] is True and out.status["phase"] == "Waiting"
    assert condition(out, "Ready")["reason"] == "AwaitingKueueAdmission"


def test_finetune_without_versions_waits_for_a_trained_model():
    out = reconcile_run(observe(make_finetune(), cat=catalog(model=make_model())), CONFIG)
    assert not out.create and out.status["phase"] == "Waiting"
    assert condition(out, "Ready")["reason"] == "BaseVersionNotFound"


def test_finetune_version_records_its_method_and_the_base_version_its_job_started_from():
    promoted = {**VERSIONED, "versions": VERSIONED["versions"] + [{**VERSIONED["versions"][0], "name": "v2"}],
                "latest": "v2", "promoted": "v1"}
    cat = catalog(model=make_model(status=promoted))
    out = reconcile_run(observe(make_finetune(budget={"maxCost": "1000"}), cat=cat), CONFIG)
    created = next(o for o in out.create if o["kind"] == "Job")
    assert created["metadata"]["annotations"]["genforge.dev/base-version"] == "v1"  # promoted wins over latest
    assert run_document(out.create)["finetune"]["baseVersion"] == "v1"
    words = {"outcome": "Succeeded", "step": 50, "artifact": "file:///data/runs/ft/adapter"}
    done = job(conditions=[("Complete", "")])
    done["metadata"]["annotations"] = created["metadata"]["annotations"]
    out = reconcile_run(observe(make_finetune(budget={"maxCost": "1000"}), RUNNING, done,
                                [pod(0, 8, exit_code=0, message=words)], at=10, cat=cat), CONFIG)
    assert out.status["phase"] == "Succeeded"
    assert out.new_version["method"] == "lora" and out.new_version["baseVersion"] == "v1"
    assert out.new_version["source"] == {"kind": "FineTune", "name": "ft-1"}


def test_succeeded_run_is_final():
    out = reconcile_run(observe(make_run(), {"phase": "Succeeded"}), CONFIG)
    assert out.status == {"phase": "Succeeded", "observedGeneration": 1} and not out.create and not out.events


def test_repeated_reconcile_is_quiet():
    """The same observation twice: same status, no second Event."""
    first = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, job(), [pod(0)], at=3), CONFIG)
    second = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), first.status, job(), [pod(0)], at=3),
                           CONFIG)
    assert second.status == first.status
    assert not second.events


def test_kueue_run_is_stopped_by_deleting_its_job_and_restarted_when_the_budget_allows():
    run = make_run(budget={"maxCost": "5"}, queueName="team-a")
    out = reconcile_run(observe(run, RUNNING, job(), [pod(0)], at=5), CONFIG)
    assert out.delete_job and out.job_patch is None
    assert out.status["phase"] == "BudgetExceeded"
    stopped = {**out.status}
    still = reconcile_run(observe(run, stopped, None, [], at=30), CONFIG)
    assert not still.create and still.status["phase"] == "BudgetExceeded"
    raised = make_run(budget={"maxCost": "500"}, queueName="team-a", generation=2)
    resumed = reconcile_run(observe(raised, stopped, None, [], at=30), CONFIG)
    job_obj = next(o for o in resumed.create if o["kind"] == "Job")
    assert job_obj["spec"]["suspend"] is True  # queued in Kueue again
    assert resumed.status["phase"] == "Waiting"


def _run_document(out) -> dict:
    return run_document(out.create)


def test_a_run_created_again_under_its_old_name_gets_outputs_of_its_own():
    """Issue 15 item 3: the default output is keyed by uid, so a run deleted and created again
    with the same name neither resumes the old run's checkpoints nor overwrites its artifact."""
    import dataclasses

    first = make_run(budget={"maxCost": "1000"})
    again = dataclasses.replace(first, uid="a-new-uid")
    outputs = [_run_document(reconcile_run(observe(r), CONFIG)) for r in (first, again)]
    uris = [d["output"]["uri"] for d in outputs]
    assert uris == [f"file:///data/runs/team-a/trainingrun/run-1/{first.uid}",
                    "file:///data/runs/team-a/trainingrun/run-1/a-new-uid"]
    assert [d["run"]["uid"] for d in outputs] == [first.uid, "a-new-uid"]  # what the trainer checks
    assert [d["checkpoint"]["uri"] for d in outputs] == [u + "/checkpoints" for u in uris]
    # An explicit output is the user's to choose: the trainer refuses a foreign checkpoint there.
    pinned = dataclasses.replace(make_run(budget={"maxCost": "1000"}, output={"uri": "file:///data/mine"}), uid="x")
    assert _run_document(reconcile_run(observe(pinned), CONFIG))["output"]["uri"] == "file:///data/mine"


def pending_pod(waiting=None, scheduled=None, name="gf-tr-run-1-abcde"):
    """A pod whose trainer container has not started: `waiting` (reason, message) of the
    container, `scheduled` (reason, message) of a PodScheduled=False condition."""
    status = {"phase": "Pending", "conditions": []}
    if scheduled:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": scheduled[0],
                                     "message": scheduled[1]})
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {"reason": waiting[0],
                                                                                 "message": waiting[1]}}}]
    return {"metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
            "status": status}


UNSCHEDULABLE = ("Unschedulable", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")


@pytest.mark.parametrize(("pods", "reason", "words"), [
    ([pending_pod(scheduled=UNSCHEDULABLE)], "Unschedulable", "Insufficient nvidia.com/gpu"),
    ([pending_pod(waiting=("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x:1"'))], "ImagePullBackOff",
     "Back-off pulling image"),
    ([pending_pod(waiting=("CreateContainerConfigError", 'configmap "gf-x" not found'))],
     "CreateContainerConfigError", 'configmap "gf-x" not found'),
    # Several pods: the one with a problem is named, not the one that is merely starting.
    ([pending_pod(waiting=("ContainerCreating", "")),
      pending_pod(scheduled=("Unschedulable", 'persistentvolumeclaim "genforge-data" not found'), name="p-1")],
     "Unschedulable", 'pod p-1 is not running: Unschedulable: persistentvolumeclaim "genforge-data" not found'),
])
def test_pods_that_do_not_run_are_named_in_a_condition_an_event_and_ready(pods, reason, words):
    """Issue 15 item 5: no longer "Running" with no hint while no pod runs."""
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, job(), pods, at=5), CONFIG)
    assert out.status["phase"] == "Running"  # admitted: it keeps its reservation
    podsready = condition(out, "PodsReady")
    assert podsready["status"] == "False" and podsready["reason"] == reason and words in podsready["message"]
    assert condition(out, "Ready")["reason"] == reason and words in condition(out, "Ready")["message"]
    assert [(e.type, e.reason) for e in out.events] == [("Warning", reason)] and words in out.events[0].message
    assert out.status.get("segments") == [] and out.status["cost"]["accrued"] == "0"  # no container ran: no bill


def test_a_pod_starting_normally_raises_no_alarm_until_the_start_timeout():
    starting = [pending_pod(waiting=("ContainerCreating", ""))]
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, job(), starting, at=5), CONFIG)
    assert condition(out, "PodsReady")["reason"] == "ContainerCreating" and not out.events
    assert out.requeue_after <= 30


def test_pods_not_running_past_the_start_timeout_say_so_once_then_clear_when_the_pod_runs():
    config = OperatorConfig(pod_start_timeout=120)
    run = make_run(budget={"maxCost": "1000"})
    stuck = [pending_pod(scheduled=UNSCHEDULABLE)]
    first = reconcile_run(observe(run, RUNNING, job(), stuck, at=0), config)
    assert condition(first, "Ready")["reason"] == "Unschedulable"
    assert 0 < first.requeue_after <= 30
    before = reconcile_run(observe(run, first.status, job(), stuck, at=119), config)
    assert condition(before, "Ready")["reason"] == "Unschedulable" and not before.events
    assert before.requeue_after <= 1.5  # lands on the timeout
    late = reconcile_run(observe(run, before.status, job(), stuck, at=121), config)
    ready = condition(late, "Ready")
    assert ready["reason"] == "PodStartTimeout" and "podStartTimeout (2m)" in ready["message"]
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert [(e.type, e.reason) for e in late.events] == [("Warning", "PodStartTimeout")]
    again = reconcile_run(observe(run, late.status, job(), stuck, at=200), config)
    assert not again.events and again.status == late.status | {"conditions": again.status["conditions"]}
    assert condition(again, "Ready") == ready
    # The pod gets a node and runs: everything clears.
    running = reconcile_run(observe(run, again.status, job(), [pod(210)], at=215), config)
    assert condition(running, "PodsReady")["status"] == "True"
    assert condition(running, "Ready")["reason"] == "Running"


def test_a_job_without_pods_is_reported_after_the_timeout_only():
    config = OperatorConfig(pod_start_timeout=60)
    run = make_run(budget={"maxCost": "1000"})
    first = reconcile_run(observe(run, RUNNING, job(active=0), [], at=0), config)
    assert condition(first, "PodsReady")["reason"] == "NoPods" and not first.events
    late = reconcile_run(observe(run, first.status, job(active=0), [], at=61), config)
    assert condition(late, "Ready")["reason"] == "PodStartTimeout"
    assert "kubectl describe job gf-tr-run-1" in condition(late, "Ready")["message"]
