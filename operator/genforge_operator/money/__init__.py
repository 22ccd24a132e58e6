"""Money for the reconciler: observations in, decisions out.

A thin façade over the pure money modules, which depend on each other in this order
(each imports only those before it):

* `accrual` — the one cost model: segments, accrued cost, burn rate;
* `throughput` — the FLOP model, priors and the older measured throughput;
* `calibration` — the parts of the estimate measured by runs on a pool;
* `estimate` — duration and cost on each pool, and the pool choice;
* `periods` — Budgets: coverage, spent in the period, status;
* `admission`, `enforcement` — whether a run may start, whether it must stop.

The functions here take what the operator observes (pods, status dicts, a `Catalog`)
and are named for the run (`admit_run`, `enforce_run`, `sync_run_segments`), so they are
not mistaken for the inner modules' functions they call. No formula lives here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from .. import conditions as cond
from .. import formats
from ..api import AccrualSegment, BudgetStatus, HardwareSpec, Resource, from_dict, to_dict
from ..formats import parse_timestamp
from ..observe import PodRun
from ..plan import Blocked, Catalog, model_name_of
from ..vocabulary import ConditionStatus, ConditionType, Reason
from . import accrual, admission, calibration, enforcement, estimate, periods, throughput
from .estimate import PoolEstimate

#: The Job's activeDeadlineSeconds is the backstop for when the operator is down; it counts
#: from the Job's start (image pull and scheduling included), so it gets this much slack
#: to let the operator's own, exact enforcement act first.
BACKSTOP_SLACK_SECONDS = 30
#: A stopped run resumes by itself only when the budget leaves at least this much room.
RESUME_MIN_SECONDS = 30.0


# ------------------------------------------------------------------ accrual from pods
def _segments(raw: list[dict]) -> list[AccrualSegment]:
    return [from_dict(AccrualSegment, s, "status.segments", strict=False) for s in raw]


def sync_run_segments(raw: list[dict], pods: list[PodRun], pool: Resource | None, hardware: HardwareSpec,
                      now: datetime) -> list[dict]:
    """Segments brought in line with the pods' own start and finish times.

    Level-based: the same observation gives the same segments, so an operator restart
    neither loses nor double-counts a second. Pods whose whole life the operator missed
    (started and finished while it was down) are added from their timestamps. The run
    holds the pool's accelerators while any of its pods runs.
    """
    if pool is None:
        return raw
    segments = _segments(raw)
    units = accrual.accelerators_on(pool.spec, hardware)
    price = pool.spec.price_per_hour
    latest_end = max((parse_timestamp(s.end) for s in segments if s.end), default=None)
    finished = sorted((p for p in pods if p.start and p.end), key=lambda p: p.start)
    for pod in finished:
        if latest_end is not None and parse_timestamp(pod.end) <= latest_end:
            continue  # already accounted
        if accrual.open_segment(segments) is None:
            segments = accrual.sync_segments(segments, running=True, at=pod.start, pool=pool.name,
                                             accelerators=units, price_per_hour=price)
        if not _covered_after(pod, pods):
            segments = accrual.sync_segments(segments, running=False, at=pod.end)
        latest_end = max(latest_end or parse_timestamp(pod.end), parse_timestamp(pod.end))
    running = [p for p in pods if p.start and not p.end and p.phase == "Running"]
    if running:
        # An open segment with other terms (a new price) is closed now, not in the past.
        at = now if accrual.open_segment(segments) else min(p.start for p in running)
        segments = accrual.sync_segments(segments, running=True, at=at, pool=pool.name,
                                         accelerators=units, price_per_hour=price)
    elif accrual.open_segment(segments) is not None:
        ends = [p.end for p in pods if p.end]
        segments = accrual.sync_segments(segments, running=False, at=max(ends) if ends else now)
    return [to_dict(s) for s in segments]


def _covered_after(pod: PodRun, pods: list[PodRun]) -> bool:
    """Whether another pod was running when `pod` finished (the run kept its accelerators)."""
    end = parse_timestamp(pod.end)
    return any(q is not pod and q.start and parse_timestamp(q.start) <= end
               and (q.end is None or parse_timestamp(q.end) > end) for q in pods)


@dataclass(frozen=True)
class Totals:
    cost: Decimal
    accelerator_seconds: float
    running_seconds: float
    rate_per_second: Decimal


def totals(raw: list[dict], now: datetime) -> Totals:
    used = accrual.accrue(_segments(raw), now)
    return Totals(cost=used.cost, accelerator_seconds=float(used.accelerator_seconds),
                  running_seconds=float(used.running_seconds), rate_per_second=used.rate_per_second)


# ------------------------------------------------------------------ admission and enforcement
@dataclass(frozen=True)
class Admitted:
    pool: Resource
    estimate: PoolEstimate
    active_deadline_seconds: int | None
    note: str
    budget_message: str


def _model(run: Resource, catalog: Catalog) -> Resource | None:
    return catalog.models.get(model_name_of(run))


def _completed_steps(status: dict) -> int:
    return int(((status.get("progress") or {}).get("step")) or 0)


def admit_run(run: Resource, catalog: Catalog, status: dict, now: datetime) -> Admitted | Blocked:
    """Where the run goes and whether its budget and the namespace Budgets allow it now.

    A resumed run (it has accrued segments and a checkpoint) is estimated for the steps
    it still has to do, against what is left of its maxCost.
    """
    model = _model(run, catalog)
    if model is None:
        return _model_not_found(run)
    run = _with_status(run, status)
    outcome = admission.admit(run, model.spec, list(catalog.pools.values()), catalog.budgets, now,
                              runs=_others(catalog, run), completed_steps=_completed_steps(status))
    if not outcome.admitted:
        return _blocked(outcome)
    deadline = outcome.active_deadline_seconds
    if deadline is not None:
        deadline += BACKSTOP_SLACK_SECONDS
    chosen = outcome.estimate
    note = (f"{outcome.message} (range {formats.human_duration(chosen.min_seconds)}–"
            f"{formats.human_duration(chosen.max_seconds)}; basis: {chosen.basis})")
    if run.spec.hardware.pool == estimate.AUTO:
        note += ". Alternatives: " + "; ".join(
            f"{e.pool}: {formats.money(e.cost, e.currency)} in {formats.human_duration(e.duration_seconds)} "
            f"({e.note})" for e in outcome.estimates)
    return Admitted(pool=catalog.pools[outcome.pool], estimate=outcome.estimate,
                    active_deadline_seconds=deadline, note=note, budget_message=outcome.message)


def choose_pool_for_run(run: Resource, catalog: Catalog, now: datetime | None = None) -> Resource | Blocked:
    """The pool the operator would run `run` on, or why none (`genforge render`'s `auto`).

    Judged on the Budgets' status alone (no other runs, no checkpoint to resume from).
    """
    model = _model(run, catalog)
    if model is None:
        return _model_not_found(run)
    outcome = admission.admit(run, model.spec, list(catalog.pools.values()), catalog.budgets,
                              now or datetime.now(UTC))
    if not outcome.admitted:
        return _blocked(outcome)
    return catalog.pools[outcome.pool]


def _model_not_found(run: Resource) -> Blocked:
    return Blocked(Reason.MODEL_NOT_FOUND,
                   f"GenModel {model_name_of(run)!r} not found in namespace {run.namespace}")


def _blocked(outcome: admission.Admission) -> Blocked:
    return Blocked(outcome.reason, outcome.message, permanent=outcome.decision == "Failed")


def _with_status(run: Resource, status: dict) -> Resource:
    """`run` with the status being written (segments of this very reconcile included)."""
    parsed = from_dict(type(run.status), status, "status", strict=False)
    return dataclasses.replace(run, status=parsed)


def _others(catalog: Catalog, run: Resource) -> list[Resource]:
    return [r for r in catalog.runs if (r.kind, r.name) != (run.kind, run.name)] + [run]


def enforce_run(run: Resource, catalog: Catalog, status: dict, now: datetime) -> enforcement.Enforcement:
    run = _with_status(run, status)
    return enforcement.enforce(run, catalog.budgets, now, runs=_others(catalog, run),
                               interval=enforcement.DEFAULT_INTERVAL)


def resumable(verdict: enforcement.Enforcement) -> bool:
    """Allowed again, with real room — not a limit about to be hit again at once."""
    return verdict.allowed and (verdict.seconds_to_limit is None or verdict.seconds_to_limit >= RESUME_MIN_SECONDS)


def active_deadline(run: Resource, catalog: Catalog, status: dict, now: datetime, pool: Resource | None,
                    job_start: str | None = None) -> int | None:
    """The Job's activeDeadlineSeconds, with slack: when resuming a stopped run or updating a running Job."""
    run = _with_status(run, status)
    rate = None
    if pool is not None:
        rate = accrual.rate_per_second(accrual.accelerators_on(pool.spec, run.spec.hardware), pool.spec.price_per_hour)
    deadline = enforcement.active_deadline_seconds(run, catalog.budgets, now, runs=_others(catalog, run),
                                                   rate_per_second=rate, job_start=job_start)
    return None if deadline is None else deadline + BACKSTOP_SLACK_SECONDS


def estimate_status(chosen: PoolEstimate, from_step: int = 0) -> dict:
    """`status.estimate`: the admitted estimate part by part, with its range and basis, and the
    step it starts from (a resumed run's estimate is of the steps it still has to do)."""
    return {"seconds": float(chosen.duration_seconds), "minSeconds": float(chosen.min_seconds),
            "maxSeconds": float(chosen.max_seconds), "basis": chosen.basis, "fromStep": from_step,
            "parts": [{"part": p.name, "seconds": round(p.seconds, 1), "basis": p.basis, "runs": p.runs}
                      for p in chosen.parts]}


# ------------------------------------------------------------------ after a run
@dataclass(frozen=True)
class Review:
    estimate_error: float | None
    #: pool (as stored now) → the status fields this run changes (`measured`, `calibration`);
    #: applied with an optimistic lock
    measure: Callable[[Resource], dict | None] | None


def review(run: Resource, pool: Resource | None, catalog: Catalog, status: dict, report: dict,
           now: datetime) -> Review:
    """The estimate's error, and how this run calibrates its pool: the trainer's timing of
    each part (`calibration.observe_run`) and the older per-architecture samples/s."""
    error = estimate.estimate_error((status.get("cost") or {}).get("estimatedSeconds"),
                                    status.get("runningSeconds"))
    model = _model(run, catalog)
    speed = report.get("samplesPerSecond")
    timing = report.get("timing") if isinstance(report.get("timing"), dict) else {}
    has_speed = isinstance(speed, (int, float)) and not isinstance(speed, bool) and speed > 0
    if pool is None or model is None or not (has_speed or timing):
        return Review(estimate_error=error, measure=None)
    at = formats.timestamp(now)

    def measure(current: Resource) -> dict | None:
        if calibration.folded(current.status.calibration, run.uid):
            return None  # measured already (a retried reconcile): nothing to add
        fields: dict = {}
        if has_speed:
            fields["measured"] = [to_dict(m) for m in throughput.update_measured(
                current.status.measured, pool=current.spec, spec=run.spec, model=model.spec,
                samples_per_second=float(speed))]  # all processes together
        observed = calibration.observe_run(timing, running_seconds=status.get("runningSeconds"), pool=current,
                                           spec=run.spec, model=model.spec)
        if observed:
            fields["calibration"] = to_dict(calibration.fold_run(current.status.calibration, observed, at=at,
                                                                 run=f"{run.kind}/{run.namespace}/{run.name}",
                                                                 uid=run.uid))
        return fields

    return Review(estimate_error=error, measure=measure)


# ------------------------------------------------------------------ Budgets
@dataclass(frozen=True)
class BudgetEvent:
    type: str
    reason: str
    message: str


def budget_status(budget_resource: Resource, catalog: Catalog, now: datetime) -> tuple[dict, list[BudgetEvent]]:
    report = periods.budget_report(budget_resource, catalog.runs, now)
    previous = budget_resource.status or BudgetStatus()
    status = to_dict(report.status(previous))
    status["observedGeneration"] = budget_resource.generation
    status["conditions"] = cond.set_condition(
        [to_dict(c) for c in previous.conditions], ConditionType.EXHAUSTED,
        ConditionStatus.TRUE if report.exhausted else ConditionStatus.FALSE,
        report.reason, report.message, now, budget_resource.generation)
    events = [BudgetEvent("Warning", Reason.BUDGET_WARNING, periods.warning_message(report.view, t))
              for t in report.new_warnings]
    if report.newly_exhausted:
        events.append(BudgetEvent("Warning", Reason.BUDGET_EXHAUSTED, report.message))
    if report.rolled_over:
        events.append(BudgetEvent("Normal", Reason.PERIOD_ROLLED_OVER,
                                  f"a new {budget_resource.spec.period} period began at {report.period_start}"))
    return status, events

