"""The reconcile decisions for Datasets, TrainingRuns and FineTunes. Pure.

`reconcile_*` take what was observed (the resource, the catalogue of what it refers
to, its Job and pods, the trainer's progress, `now`) and return an `Outcome`: the status
to write, the objects to create, the Job patch, the Events, when to look again. The
kopf handlers in `main.py` only fetch, call these, and apply the outcome.

Phases — Dataset: Pending → Running → Ready | Failed.
TrainingRun/FineTune: Pending → Waiting → Running → Succeeded | Failed | BudgetExceeded |
Suspended. `BudgetExceeded` and `Suspended` are not final: raising the budget or
unsuspending resumes the run from its checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

from . import conditions as cond
from . import formats, money
from .api import Resource, to_dict
from .config import OperatorConfig
from .observe import STARTING_REASONS, JobState, PodRun, job_state, pod_not_running, pod_run, trainer_report
from .plan import (
    FORMAT_LORA_ADAPTER,
    Blocked,
    Catalog,
    Planned,
    output_problem,
    plan_dataset,
    plan_run,
    resolve_base_version,
    resolve_references,
)
from .runspec import run_output_uri
from .units import money_str
from .vocabulary import ConditionStatus, ConditionType, DatasetPhase, Reason, RunPhase

ANNOTATION_GENERATION = "genforge.dev/owner-generation"
#: The pool a run's Job was placed on, so that status can be recovered from the Job when the
#: operator died between creating it and recording status (accrual needs the pool's price).
ANNOTATION_POOL = "genforge.dev/pool"
#: The GenModel version a FineTune's Job starts from, as resolved when the Job was created
#: (the promoted or latest version may change while it runs): recorded on the new version.
ANNOTATION_BASE_VERSION = "genforge.dev/base-version"
#: The Job and its pods arrive on separate watch streams: a finished Job may be seen before
#: its pod's final state (the trainer's result). Wait this long for it before settling.
RESULT_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict
    create: list[dict] = field(default_factory=list)
    job_patch: dict | None = None
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    new_version: dict | None = None
    measure: object | None = None  # pool → the status fields this run changes (money.Review.measure)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))


@dataclass(frozen=True)
class Observed:
    resource: Resource
    body_status: dict
    catalog: Catalog
    job: dict | None
    pods: list[dict]
    now: datetime
    progress: dict | None = None
    workload: dict | None = None  # Kueue's Workload of a queued, suspended Job

    @property
    def pod_runs(self) -> list[PodRun]:
        return [pod_run(p) for p in self.pods]


def _start(obs: Observed) -> Outcome:
    status = copy.deepcopy(obs.body_status)
    status["observedGeneration"] = obs.resource.generation
    return Outcome(status=status)


def _set(out: Outcome, obs: Observed, type_: str, status: str, reason: str, message: str) -> None:
    out.status["conditions"] = cond.set_condition(
        out.status.get("conditions") or [], type_, status, reason, message, obs.now, obs.resource.generation)


def _phase(out: Outcome, obs: Observed, phase: str, reason: str, message: str, *, warning: bool = False) -> None:
    """Set the phase and the Ready condition; an Event only when something changed."""
    before = out.status.get("phase")
    ready = cond.get_condition(out.status.get("conditions") or [], ConditionType.READY) or {}
    out.status["phase"] = phase
    ready_status = ConditionStatus.TRUE if phase in (DatasetPhase.READY, RunPhase.SUCCEEDED) else ConditionStatus.FALSE
    _set(out, obs, ConditionType.READY, ready_status, reason, message)
    if before != phase or ready.get("reason") != reason:
        out.event(reason, message, warning)


def _job_generation(job: dict | None) -> int | None:
    value = ((job or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION_GENERATION)
    return int(value) if value and str(value).isdigit() else None


def _stamp_generation(objects: list[dict], generation: int) -> list[dict]:
    for o in objects:
        o["metadata"].setdefault("annotations", {})[ANNOTATION_GENERATION] = str(generation)
    return objects


# ------------------------------------------------------------------ Dataset
def reconcile_dataset(obs: Observed, config: OperatorConfig) -> Outcome:
    ds = obs.resource
    out = _start(obs)
    phase = out.status.get("phase")
    job = job_state(obs.job)

    if job.exists and _job_generation(obs.job) not in (None, ds.generation):
        # The preparation settings changed: prepare again from scratch.
        out.delete_job = True
        out.status.update({"phase": DatasetPhase.PENDING, "items": None, "contentHash": None})
        _phase(out, obs, DatasetPhase.PENDING, Reason.SPEC_CHANGED, "the Dataset spec changed; preparing it again")
        out.requeue_after = 1.0
        return out
    if not job.exists:
        if phase in (DatasetPhase.READY, DatasetPhase.FAILED) and out.status.get("job"):
            return out  # done; the Job was cleaned up (TTL or by hand)
        planned = plan_dataset(ds, obs.catalog, config)
        if isinstance(planned, Blocked):
            _phase(out, obs, DatasetPhase.FAILED if planned.permanent else DatasetPhase.PENDING, planned.reason, planned.message, warning=True)
            return out
        out.create = _stamp_generation(planned.children.objects(), ds.generation)
        out.status.update({"job": planned.children.job["metadata"]["name"], "startTime": formats.timestamp(obs.now)})
        _phase(out, obs, DatasetPhase.RUNNING, Reason.JOB_CREATED,
               f"preparing {ds.spec.source.uri} into {planned.document['output']['uri']}")
        return out

    report = trainer_report(obs.pod_runs)
    if (job.succeeded or job.failed) and phase not in (DatasetPhase.READY, DatasetPhase.FAILED) and _awaiting_result(out, obs, job, report):
        return out
    if job.succeeded:
        if phase != DatasetPhase.READY:
            _apply_manifest(out, report)
            out.status["completionTime"] = formats.timestamp(obs.now)
            items = out.status.get("items") or {}
            _phase(out, obs, DatasetPhase.READY, Reason.PREPARED,
                   f"kept {items.get('kept', 0)} of {items.get('total', 0)} items "
                   f"(dropped {out.status.get('droppedTotal', 0)}: "
                   f"{_dropped_summary(items.get('dropped') or {})})")
        return out
    if job.failed:
        if phase != DatasetPhase.FAILED:
            out.status["completionTime"] = formats.timestamp(obs.now)
            _phase(out, obs, DatasetPhase.FAILED, report.get("reason") or job.reason or Reason.JOB_FAILED,
                   report.get("message") or job.message or "the preparation Job failed", warning=True)
        return out
    if phase != DatasetPhase.RUNNING:
        _phase(out, obs, DatasetPhase.RUNNING, Reason.RUNNING, "preparing")
    return out


def _awaiting_result(out: Outcome, obs: Observed, job: JobState, report: dict) -> bool:
    """True (and requeue) while a finished Job's trainer result may still be on its way.

    A Job that succeeded needs its succeeded pod: after a retry, the failed attempt's report
    are already there, and settling on them would record its result and bill only its time
    (a Succeeded run is never accrued again).
    """
    if report and (not job.succeeded or any(p.exit_code == 0 and p.end for p in obs.pod_runs)):
        return False
    finished = formats.parse_timestamp(job.finished_at) or obs.now
    if (obs.now - finished).total_seconds() >= RESULT_GRACE_SECONDS:
        return False
    out.requeue_after = 2.0
    return True


def _dropped_summary(dropped: dict) -> str:
    parts = [f"{k} {v}" for k, v in dropped.items() if v]
    return ", ".join(parts) or "none"


def _apply_manifest(out: Outcome, report: dict) -> None:
    items = report.get("items") or {}
    dropped = items.get("dropped") or {}
    out.status["items"] = {"total": int(items.get("total", 0)), "kept": int(items.get("kept", 0)),
                           "dropped": {k: int(v) for k, v in dropped.items()}}
    out.status["droppedTotal"] = sum(int(v) for v in dropped.values())
    for key in ("bytes", "contentHash", "uri"):
        if report.get(key) is not None:
            out.status[key] = report[key]
    if report.get("redactions"):
        out.status["redactions"] = {k: int(v) for k, v in report["redactions"].items()}


# ------------------------------------------------------------------ TrainingRun / FineTune
def _blocked(out: Outcome, obs: Observed, blocked: Blocked) -> Outcome:
    _set(out, obs, ConditionType.ADMITTED, ConditionStatus.FALSE, blocked.reason, blocked.message)
    _phase(out, obs, RunPhase.FAILED if blocked.permanent else RunPhase.WAITING, blocked.reason, blocked.message, warning=True)
    return out


def _accrue(out: Outcome, obs: Observed, pool: Resource | None) -> None:
    run = obs.resource
    segments = money.sync_run_segments(
        out.status.get("segments") or [], obs.pod_runs, pool, run.spec.hardware, obs.now)
    out.status["segments"] = segments
    totals = money.totals(segments, obs.now)
    cost = dict(out.status.get("cost") or {})
    cost["accrued"] = money_str(totals.cost)
    if run.spec.budget.max_cost is not None:
        cost["limit"] = money_str(run.spec.budget.max_cost)
    else:
        cost.pop("limit", None)
    out.status["cost"] = cost
    out.status["acceleratorSeconds"] = round(totals.accelerator_seconds, 3)
    out.status["runningSeconds"] = round(totals.running_seconds, 3)
    starts = [s["start"] for s in segments if s.get("start")]
    if starts and not out.status.get("startTime"):
        out.status["startTime"] = min(starts)


def _progress(out: Outcome, run: Resource, progress: dict | None) -> None:
    if not progress:
        return
    total = int(progress.get("totalSteps") or run.spec.training.steps)
    step = int(progress.get("step") or 0)
    out.status["progress"] = {k: v for k, v in {
        "step": step,
        "totalSteps": total,
        "percent": round(100.0 * step / total, 1) if total else 0.0,
        "loss": progress.get("loss"),
        "samplesPerSecond": progress.get("samplesPerSecond"),
        "etaSeconds": progress.get("etaSeconds"),
    }.items() if v is not None}
    if progress.get("checkpoint"):
        out.status["checkpoint"] = progress["checkpoint"]


def _current_pool(obs: Observed, status: dict) -> Resource | None:
    name = status.get("pool")
    return obs.catalog.pools.get(name) if name else None


def _adopt_job(out: Outcome, obs: Observed) -> None:
    """Fill what status lacks from the run's Job: the operator may have died after creating
    the Job and before recording it, and without the pool nothing would be accrued."""
    meta = (obs.job or {}).get("metadata") or {}
    if not out.status.get("job") and meta.get("name"):
        out.status["job"] = meta["name"]
    pool = (meta.get("annotations") or {}).get(ANNOTATION_POOL)
    if not out.status.get("pool") and pool:
        out.status["pool"] = pool


def _start_run(out: Outcome, obs: Observed, config: OperatorConfig) -> Outcome:
    run = obs.resource
    if run.spec.suspend:
        _phase(out, obs, RunPhase.SUSPENDED, Reason.SUSPENDED, "spec.suspend is true; no Job is running")
        return out
    bad_output = output_problem(run_output_uri(run, config), config)
    if bad_output is not None:  # a spec that would lose its results: refused before anything runs
        return _blocked(out, obs, bad_output)
    # References first: a run waiting for its Dataset should say so, not talk about money.
    refs = resolve_references(run, obs.catalog)
    if not isinstance(refs, Blocked) and run.kind == "FineTune":
        refs = resolve_base_version(run, refs[0])
    if isinstance(refs, Blocked):
        return _blocked(out, obs, refs)
    admitted = money.admit_run(run, obs.catalog, out.status, obs.now)
    if isinstance(admitted, Blocked):
        if not admitted.permanent:
            out.requeue_after = 60.0  # a Budget period may roll over, runs may finish
        return _blocked(out, obs, admitted)
    pool, estimate = admitted.pool, admitted.estimate
    cost = dict(out.status.get("cost") or {})
    cost.update({"estimated": money_str(estimate.cost), "estimatedSeconds": float(estimate.duration_seconds),
                 "currency": pool.spec.currency})
    if run.spec.budget.max_cost is not None:
        cost["limit"] = money_str(run.spec.budget.max_cost)
    out.status["cost"] = cost
    out.status["estimate"] = money.estimate_status(
        estimate, from_step=int((out.status.get("progress") or {}).get("step") or 0))
    out.status["pool"] = pool.name
    if admitted.note:
        out.event(Reason.POOL_CHOSEN, admitted.note)
    planned = plan_run(run, pool, obs.catalog, config, active_deadline_seconds=admitted.active_deadline_seconds)
    if isinstance(planned, Blocked):
        return _blocked(out, obs, planned)
    _set(out, obs, ConditionType.WITHIN_BUDGET, ConditionStatus.TRUE, Reason.WITHIN_BUDGET, admitted.budget_message)
    return _create_children(out, obs, planned, estimate)


def _create_children(out: Outcome, obs: Observed, planned: Planned, estimate) -> Outcome:
    run = obs.resource
    out.create = _stamp_generation(planned.children.objects(), run.generation)
    planned.children.job["metadata"]["annotations"][ANNOTATION_POOL] = planned.placement.pool.name
    job_name = planned.children.job["metadata"]["name"]
    out.status["job"] = job_name
    if planned.base:
        planned.children.job["metadata"]["annotations"][ANNOTATION_BASE_VERSION] = planned.base.version
        if planned.base.adapters:
            out.event(Reason.BASE_IS_ADAPTER,
                      f"base version {planned.base.version} is a LoRA adapter: the trainer merges "
                      f"{', '.join(planned.base.through)} into {planned.base.root}'s weights, then fine-tunes")
    _set(out, obs, ConditionType.ADMITTED, ConditionStatus.TRUE, Reason.JOB_CREATED,
         f"estimated {estimate.duration_seconds}s ({estimate.min_seconds}–{estimate.max_seconds}s) and "
         f"{formats.money(estimate.cost)} on pool {planned.placement.pool.name}; basis: {estimate.basis}")
    if run.spec.queue_name:
        _phase(out, obs, RunPhase.WAITING, Reason.AWAITING_KUEUE_ADMISSION, f"Job {job_name} queued in Kueue LocalQueue {run.spec.queue_name}")
    else:
        _phase(out, obs, RunPhase.RUNNING, Reason.JOB_CREATED,
               f"Job {job_name} created on pool {planned.placement.pool.name} "
               f"({planned.placement.nodes} node(s) × {planned.placement.accelerators_per_node} "
               f"{planned.placement.accelerator_type})")
    out.requeue_after = 1.0
    return out


#: Phases of a run that ended (for now) before its last step: their estimate error is
#: measured against the estimate pro-rated to the steps done.
STOPPED_EARLY = (RunPhase.FAILED, RunPhase.BUDGET_EXCEEDED, RunPhase.SUSPENDED)


def reconcile_run(obs: Observed, config: OperatorConfig) -> Outcome:
    out = _reconcile_run(obs, config)
    _estimate_error_of_stopped_run(out, obs.resource, trainer_report(obs.pod_runs) if obs.job is not None else {})
    return out


def _estimate_error_of_stopped_run(out: Outcome, run: Resource, report: dict) -> None:
    """`status.cost.estimateError` for a run that stopped early (Failed, BudgetExceeded,
    Suspended): actual running seconds against the estimate pro-rated to the steps it completed
    (`money.estimate.prorated_seconds`); a Succeeded run's is set in `_succeeded`. A run running
    again has none until it ends. The step a stopped trainer reported last (its termination
    message) is newer than the progress polled while it ran, so status.progress shows it."""
    phase, cost = out.status.get("phase"), out.status.get("cost")
    if not isinstance(cost, dict) or phase == RunPhase.SUCCEEDED:
        return
    error = None
    if phase in STOPPED_EARLY:
        step, progress = report.get("step"), out.status.get("progress") or {}
        if isinstance(step, int) and not isinstance(step, bool) and step > int(progress.get("step") or 0):
            total = run.spec.training.steps
            out.status["progress"] = {**progress, "step": step, "totalSteps": total,
                                      "percent": round(100.0 * step / total, 1) if total else 0.0}
        error = money.estimate.finished_estimate_error(out.status, total_steps=run.spec.training.steps, complete=False)
    if error is None:
        cost.pop("estimateError", None)
    else:
        cost["estimateError"] = error


def _reconcile_run(obs: Observed, config: OperatorConfig) -> Outcome:
    run = obs.resource
    out = _start(obs)
    phase = out.status.get("phase")
    job = job_state(obs.job)

    if phase == RunPhase.SUCCEEDED:
        return out
    if not job.exists:
        if phase == RunPhase.FAILED and out.status.get("observedGeneration") == run.generation and obs.body_status.get(
                "observedGeneration") == run.generation:
            return out
        if phase in (RunPhase.BUDGET_EXCEEDED, RunPhase.SUSPENDED) and out.status.get("job"):
            # Stopped by deleting its Job (Kueue-managed runs): stays stopped until the
            # budget has room again (or it is unsuspended), then starts from its checkpoint.
            _accrue(out, obs, _current_pool(obs, out.status))
            if run.spec.suspend or not money.resumable(money.enforce_run(run, obs.catalog, out.status, obs.now)):
                out.requeue_after = 30.0
                return out
        return _start_run(out, obs, config)

    _adopt_job(out, obs)
    pool = _current_pool(obs, out.status)
    _accrue(out, obs, pool)
    report = trainer_report(obs.pod_runs)

    if (job.succeeded or job.failed) and _awaiting_result(out, obs, job, report):
        return out
    if job.succeeded:
        return _succeeded(out, obs, report, pool)
    if job.failed:
        return _job_failed(out, obs, job, report, pool)
    return _running(out, obs, job, pool, config)


def final_status(obs: Observed) -> dict:
    """A deleted run's status with its accrual brought in line with its pods' own timestamps.

    The run's Budgets keep its spending after it is gone; the status the run last carried
    may be stale (the operator was down while its pods ended), and closing an open segment
    at the moment of deletion would bill time no pod ran.
    """
    out = _start(obs)
    if obs.job is not None:
        _adopt_job(out, obs)
    _accrue(out, obs, _current_pool(obs, out.status))
    return out.status


def _succeeded(out: Outcome, obs: Observed, report: dict, pool: Resource | None) -> Outcome:
    run = obs.resource
    out.status["completionTime"] = formats.timestamp(obs.now)
    for key in ("artifact", "checkpoint", "samples"):
        if report.get(key):
            out.status[key] = report[key]
    metrics = {k: float(v) for k, v in (report.get("metrics") or {}).items() if isinstance(v, (int, float))}
    out.status["metrics"] = metrics
    total = run.spec.training.steps
    out.status["progress"] = {**(out.status.get("progress") or {}), "step": int(report.get("step", total)),
                              "totalSteps": total, "percent": 100.0, "etaSeconds": 0}
    if report.get("loss") is not None:
        out.status["progress"]["loss"] = report["loss"]
    review = money.review(run, pool, obs.catalog, out.status, report, obs.now)
    if review.estimate_error is not None:
        out.status.setdefault("cost", {})["estimateError"] = review.estimate_error
    out.measure = review.measure
    record = _evaluation_record(report.get("metrics") or {})
    if record:
        out.status["evaluation"] = record
    if out.status.get("artifact"):
        out.new_version = {
            "source": {"kind": run.kind, "name": run.name},
            "uri": out.status["artifact"],
            "metrics": metrics,
            **({"evaluation": record} if record else {}),
            "createdAt": formats.timestamp(obs.now),
            **(_finetune_lineage(run, obs.job) if run.kind == "FineTune" else {}),
            "format": _artifact_format(run),
        }
    cost = (out.status.get("cost") or {}).get("accrued", "0")
    _phase(out, obs, RunPhase.SUCCEEDED, Reason.SUCCEEDED,
           f"finished {total} steps in {out.status.get('runningSeconds', 0):.0f}s for {cost}"
           + (f"; metrics {', '.join(f'{k}={v:.4g}' for k, v in metrics.items())}" if metrics else ""))
    return out


def _evaluation_record(reported: dict) -> dict:
    """How the trainer measured its metrics (extractor, reference set, counts): kept on the
    run and its version, so that promotion compares only like with like."""
    record = {key: reported[key] for key in ("featureExtractor", "referenceSet")
              if isinstance(reported.get(key), str) and reported[key]}
    record.update({key: int(reported[key]) for key in ("samples", "heldOut", "inferenceSteps")
                   if isinstance(reported.get(key), (int, float)) and not isinstance(reported[key], bool)})
    return record


def _finetune_lineage(run: Resource, job: dict | None) -> dict:
    """A FineTune's version: its method and the version it started from (the Job's record of
    what was resolved; a pinned `baseModel.version` when the Job predates that record)."""
    annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
    base = annotations.get(ANNOTATION_BASE_VERSION) or run.spec.base_model.version
    return {"method": run.spec.method, **({"baseVersion": base} if base else {})}


def _artifact_format(run: Resource) -> str:
    """What a run's artifact is: a complete model folder, or (a LoRA FineTune not merged)
    the adapter alone, which needs its baseVersion's weights (see plan.resolve_base_version)."""
    if run.kind == "FineTune" and run.spec.method == "lora" and not (run.spec.lora and run.spec.lora.merge):
        return FORMAT_LORA_ADAPTER
    return "model"


def _job_failed(out: Outcome, obs: Observed, job: JobState, report: dict, pool: Resource | None) -> Outcome:
    run = obs.resource
    if job.reason == "DeadlineExceeded":
        # activeDeadlineSeconds is the budget's backstop: the run hit its money or time limit
        # while the operator was not looking. Resumable like any BudgetExceeded run.
        verdict = money.enforce_run(run, obs.catalog, out.status, obs.now)
        if out.status.get("phase") == RunPhase.BUDGET_EXCEEDED:
            if money.resumable(verdict):
                out.delete_job = True  # recreated on the next pass; the trainer resumes from its checkpoint
                _phase(out, obs, RunPhase.PENDING, Reason.BUDGET_RAISED,
                       "the budget allows more now; resuming from the checkpoint")
                out.requeue_after = 1.0
            return out
        if report.get("checkpoint"):
            out.status["checkpoint"] = report["checkpoint"]
        reason = verdict.reason if not verdict.allowed else "DeadlineExceeded"
        message = (verdict.message if not verdict.allowed else
                   f"the Job reached its activeDeadlineSeconds ({job.active_deadline_seconds}s), "
                   "the budget's backstop")
        _phase(out, obs, RunPhase.BUDGET_EXCEEDED, reason, message + ". Raise the budget to resume.", warning=True)
        return out
    if out.status.get("phase") != RunPhase.FAILED:
        out.status["completionTime"] = formats.timestamp(obs.now)
        reason = report.get("reason") or job.reason or Reason.JOB_FAILED
        message = report.get("message") or job.message or "the trainer Job failed"
        _phase(out, obs, RunPhase.FAILED, reason, message, warning=True)
    return out


def _stop(out: Outcome, run: Resource) -> None:
    """Stop the trainer gracefully (SIGTERM: it checkpoints, then exits).

    Suspending the Job keeps it for a resume. A Job admitted by Kueue cannot be held
    suspended from outside (Kueue unsuspends what it admitted), so a Kueue-managed run's
    Job is deleted instead — its pods still get SIGTERM and their grace period — and a
    new one is created, queued again, when the run may resume.
    """
    if run.spec.queue_name:
        out.delete_job = True
    else:
        out.job_patch = {"spec": {"suspend": True}}


def _running(out: Outcome, obs: Observed, job: JobState, pool: Resource | None,
             config: OperatorConfig) -> Outcome:
    run = obs.resource
    phase = out.status.get("phase")
    _progress(out, run, obs.progress)
    out.status["restarts"] = sum(1 for p in obs.pod_runs if p.phase == "Failed")

    if run.spec.suspend:
        if not job.suspended:
            _stop(out, run)
        if phase != RunPhase.SUSPENDED:
            _phase(out, obs, RunPhase.SUSPENDED, Reason.SUSPENDED,
                   "spec.suspend is true: the trainer checkpoints and stops; set it to false to resume")
        return out

    verdict = money.enforce_run(run, obs.catalog, out.status, obs.now)
    if phase in (RunPhase.BUDGET_EXCEEDED, RunPhase.SUSPENDED) and job.suspended:
        if not money.resumable(verdict):
            out.requeue_after = 30.0
            return out
        deadline = money.active_deadline(run, obs.catalog, out.status, obs.now, pool)
        out.job_patch = {"spec": {"suspend": False, "activeDeadlineSeconds": deadline}}
        reason = Reason.BUDGET_RAISED if phase == RunPhase.BUDGET_EXCEEDED else Reason.RESUMED
        _phase(out, obs, RunPhase.RUNNING, reason, f"resuming from checkpoint {out.status.get('checkpoint') or '(latest)'}")
        out.requeue_after = 1.0
        return out

    if job.suspended and run.spec.queue_name and not job.active:
        reason, message = _kueue_says(obs.workload, run.spec.queue_name)
        _set(out, obs, ConditionType.QUEUED, ConditionStatus.TRUE, reason, message)
        _phase(out, obs, RunPhase.WAITING, Reason.AWAITING_KUEUE_ADMISSION, message)
        out.requeue_after = 10.0
        return out
    if run.spec.queue_name and cond.get_condition(out.status.get("conditions") or [], ConditionType.QUEUED):
        _set(out, obs, ConditionType.QUEUED, ConditionStatus.FALSE, "Admitted", f"Kueue admitted the Job ({run.spec.queue_name})")

    if not verdict.allowed:
        _stop(out, run)
        phase_to = RunPhase.SUSPENDED if verdict.action == "Suspend" else RunPhase.BUDGET_EXCEEDED
        _set(out, obs, ConditionType.WITHIN_BUDGET, ConditionStatus.FALSE, verdict.reason, verdict.message)
        _phase(out, obs, phase_to, verdict.reason,
               verdict.message + "; the trainer checkpoints and stops. Raise the budget to resume.", warning=True)
        out.requeue_after = 30.0
        return out

    _set(out, obs, ConditionType.WITHIN_BUDGET, ConditionStatus.TRUE, Reason.WITHIN_BUDGET, verdict.message)
    _follow_limits_with_the_backstop(out, obs, job, pool)
    # Only the moment a limit comes due: the periodic look (cost accrues, progress moves) is
    # the Reconciler's, every enforcement interval, stretched at load (Reconciler.tick_period);
    # the verdict's own requeue is capped at the interval and would undo that stretch.
    out.requeue_after = verdict.seconds_to_limit  # None: no limit in sight (> REACHED_WITHIN_SECONDS here)
    if _pods_not_running(out, obs, config):
        return out
    ready = cond.get_condition(out.status.get("conditions") or [], ConditionType.READY) or {}
    if phase != RunPhase.RUNNING or ready.get("reason") not in (Reason.RUNNING, Reason.JOB_CREATED, Reason.RESUMED,
                                                       Reason.BUDGET_RAISED):
        _phase(out, obs, RunPhase.RUNNING, Reason.RUNNING, f"Job {out.status.get('job')} is running")
    return out


def _kueue_says(workload: dict | None, queue: str) -> tuple[str, str]:
    """Why Kueue holds the Job, from its Workload: evicted (preempted, ...) or not admitted
    (insufficient quota, ...), in Kueue's own report; a generic line when it is not known."""
    conditions = {c.get("type"): c for c in ((workload or {}).get("status") or {}).get("conditions") or []}
    evicted, reserved = conditions.get("Evicted"), conditions.get("QuotaReserved")
    if evicted and evicted.get("status") == "True":
        return f"Kueue{evicted.get('reason') or 'Evicted'}", (
            f"Kueue evicted the Job's workload ({queue}): {evicted.get('message') or evicted.get('reason')}")
    if reserved and reserved.get("status") == "False":
        return f"Kueue{reserved.get('reason') or 'Pending'}", (
            f"waiting for Kueue to admit the Job ({queue}): {reserved.get('message') or reserved.get('reason')}")
    return Reason.AWAITING_KUEUE_ADMISSION, f"waiting for Kueue to admit the Job ({queue})"


def _pods_not_running(out: Outcome, obs: Observed, config: OperatorConfig) -> bool:
    """Keep condition PodsReady on whether the trainer runs; True while it does not.

    A run whose pods stay Pending (no node fits, a missing PVC, an image that cannot be
    pulled, a missing ConfigMap key) is still admitted and holds its reservation, so its
    phase stays Running, but PodsReady says why no pod runs from the first reconcile, a
    problem reason (anything but a pod starting normally) becomes Ready's reason with a
    Warning Event, and after `config.pod_start_timeout` Ready's reason turns PodStartTimeout
    (Event, genforge_run_pods_stuck, the chart's alert). Billing is unaffected: it starts
    when a container starts.
    """
    job_name = out.status.get("job") or "?"
    waiting = [(p, why) for p in obs.pods if (why := pod_not_running(p))]
    live = [p for p in obs.pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    if not waiting and live:
        _set(out, obs, ConditionType.PODS_READY, ConditionStatus.TRUE, Reason.RUNNING, f"{len(live)} trainer pod(s) of Job {job_name} running")
        return False
    if not waiting:
        if obs.pods:
            return False  # every pod has ended: the Job's outcome is on its way
        reason, message = Reason.NO_PODS, f"Job {job_name} has created no pod yet (`kubectl describe job {job_name}` says why)"
        name = None
    else:
        waiting.sort(key=lambda w: w[1][0] in STARTING_REASONS)  # a problem first
        pod, (reason, message) = waiting[0]
        name = (pod.get("metadata") or {}).get("name")
    text = f"pod {name} is not running: {reason}: {message}" if name else f"{reason}: {message}"
    _set(out, obs, ConditionType.PODS_READY, ConditionStatus.FALSE, reason, text)
    podsready = cond.get_condition(out.status["conditions"], ConditionType.PODS_READY) or {}
    since = formats.parse_timestamp(podsready.get("lastTransitionTime")) or obs.now
    left = config.pod_start_timeout - (obs.now - since).total_seconds()
    if left <= 0:
        _phase(out, obs, RunPhase.RUNNING, Reason.POD_START_TIMEOUT,
               f"no trainer pod has run for podStartTimeout ({formats.human_duration(config.pod_start_timeout)}); "
               f"{text}", warning=True)
    elif reason not in STARTING_REASONS and reason != Reason.NO_PODS:
        _phase(out, obs, RunPhase.RUNNING, reason, f"the trainer is not running: {text}", warning=True)
    if left > 0:
        out.requeue_after = min(out.requeue_after or left, left + 0.5, 30.0)
    return True


#: The backstop is re-set when the limits move it by more than this or by more than
#: BACKSTOP_TOLERANCE_SHARE of it (not on every tick's rounding) ...
BACKSTOP_TOLERANCE_SECONDS = 10
BACKSTOP_TOLERANCE_SHARE = 0.05
#: ... and whenever it would otherwise fire within this long while the limits allow more.
BACKSTOP_EXTEND_AHEAD_SECONDS = 300


def _follow_limits_with_the_backstop(out: Outcome, obs: Observed, job: JobState, pool: Resource | None) -> None:
    """Keep the Job's activeDeadlineSeconds on the run's current limits.

    It is set from the limits when the Job is created; a limit raised (or lowered) while the
    run is running must move it too, or Kubernetes kills the run at the old limit. It counts
    from the Job's start, so time spent waiting for pods (not billed) moves it a little every
    second: that drift is followed only in steps (the tolerance) or when the old deadline is
    near — a thousand Jobs waiting for nodes must not mean a Job patch every few seconds each.
    """
    if job.suspended or not job.start_time:
        return
    wanted = money.active_deadline(obs.resource, obs.catalog, out.status, obs.now, pool,
                                   job_start=job.start_time)
    current = job.active_deadline_seconds
    if wanted == current:
        return
    if wanted is not None and current is not None:
        tolerance = max(BACKSTOP_TOLERANCE_SECONDS, BACKSTOP_TOLERANCE_SHARE * current)
        started = formats.parse_timestamp(job.start_time) or obs.now
        left = current - (obs.now - started).total_seconds()
        near = wanted > current and left < BACKSTOP_EXTEND_AHEAD_SECONDS
        if abs(wanted - current) <= tolerance and not near:
            return
    out.job_patch = {"spec": {"activeDeadlineSeconds": wanted}}


def status_view(resource: Resource) -> dict:
    """The status of a parsed resource as the camelCase dict the API stores."""
    return to_dict(dataclasses.replace(resource.status)) if resource.status else {}
