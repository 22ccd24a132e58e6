"""Budget decisions: admission, enforcement, the Job's backstop deadline, Budget status. Pure.

Data in (parsed resources, `now`), decisions out (a phase, a CamelCase reason, a message
with the numbers, when to look again). Money and time come from `cost.py`, durations and
pool choice from `estimate.py`.

* **Admission** (`admit`): a run starts only when its estimate fits its `maxCost` and
  the room left in every Budget that covers it. If it cannot fit as specified — the
  estimate exceeds maxCost, or a Budget's whole limit, or a `Total` Budget's remainder —
  it is `Failed`; if a Budget may free up (next period, running runs finishing) it is
  `Waiting`, and `requeue_after` says when to look again.
* **Enforcement** (`enforce`): a running run is stopped (or suspended) when its accrued
  cost reaches maxCost, its running time reaches maxDuration, or a covering Budget with
  `onExhausted: Stop|Suspend` is exhausted. `requeue_after` is the time until the
  nearest limit at the current burn rate, capped by the enforcement interval: overspend
  is bounded by one interval (plus the trainer's checkpoint-and-exit time).
* **Backstop** (`active_deadline_seconds`): the Job's `activeDeadlineSeconds`, so the
  limits hold while the operator is down.
* **Budgets** (`budget_report`): spent in the current period, remaining, warnings to
  emit, exhaustion and its action.

A Budget covers the runs in its namespace that match its label selector (no selector:
all of them). Its period is a UTC calendar window: `Daily` from midnight, `Weekly` from
ISO Monday midnight, `Monthly` from the 1st, `Total` since ever. Spent is the sum of the
covered runs' segment costs inside the window: a run straddling the rollover counts only
its part after it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from ..api import BudgetStatus, GenModelSpec, LabelSelector, Resource, RetiredRun, to_dict
from ..formats import human_duration, money
from . import estimate
from .accrual import accrue, close_segments, format_time, parse_time

#: How often a running run is re-checked at most (seconds): the overspend bound.
DEFAULT_INTERVAL = 5.0
#: A limit due within this many seconds counts as reached (no busy re-checks).
REACHED_WITHIN_SECONDS = 0.1
#: How soon a run waiting for other runs' reservations, or for a pool, looks again.
WAITING_RETRY_SECONDS = 60.0

# Admission reasons (condition reasons users see).
REASON_WITHIN_BUDGET = "WithinBudget"
REASON_ESTIMATE_EXCEEDS_MAX_COST = estimate.REASON_ESTIMATE_EXCEEDS_MAX_COST
REASON_ESTIMATE_EXCEEDS_BUDGET_LIMIT = "EstimateExceedsBudgetLimit"
REASON_INSUFFICIENT_BUDGET = estimate.REASON_INSUFFICIENT_BUDGET
REASON_BUDGET_EXHAUSTED = "BudgetExhausted"
# Enforcement reasons.
REASON_MAX_COST_REACHED = "MaxCostReached"
REASON_MAX_DURATION_REACHED = "MaxDurationReached"
# Budget Events/conditions.
REASON_BUDGET_WARNING = "BudgetWarning"
REASON_PERIOD_ROLLED_OVER = "PeriodRolledOver"

Decision = Literal["Admit", "Waiting", "Failed"]
Action = Literal["Continue", "Stop", "Suspend"]

ZERO = Decimal(0)
ACTIVE_PHASES = ("Running",)


# ------------------------------------------------------------------ periods
@dataclass(frozen=True)
class Window:
    """A Budget period: [start, end); `Total` has no start and no end."""

    start: datetime | None
    end: datetime | None

    def seconds_left(self, now: datetime) -> float | None:
        return None if self.end is None else max(0.0, (self.end - parse_time(now)).total_seconds())


def period_window(period: str, now: datetime) -> Window:
    now = parse_time(now)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "Daily":
        return Window(midnight, midnight + timedelta(days=1))
    if period == "Weekly":
        monday = midnight - timedelta(days=now.weekday())
        return Window(monday, monday + timedelta(days=7))
    if period == "Monthly":
        first = midnight.replace(day=1)
        following = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(
            month=first.month + 1)
        return Window(first, following)
    if period == "Total":
        return Window(None, None)
    raise ValueError(f"unknown Budget period {period!r}")


# ------------------------------------------------------------------ coverage
def selector_matches(selector: LabelSelector | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND every matchExpression)."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def covers(budget: Resource, run: Resource) -> bool:
    return budget.namespace == run.namespace and selector_matches(budget.spec.selector, run.labels)


def covering(budgets: Iterable[Resource], run: Resource) -> list[Resource]:
    return sorted((b for b in budgets if covers(b, run)), key=lambda b: b.name)


def _is_run(resource: Resource) -> bool:
    return resource.kind in ("TrainingRun", "FineTune")


def _same(a: Resource, b: Resource) -> bool:
    return (a.kind, a.namespace, a.name) == (b.kind, b.namespace, b.name)


def _with_run(run: Resource, runs: Iterable[Resource] | None) -> list[Resource] | None:
    """`runs` with `run` itself in it (its freshest copy), or None when runs are not known."""
    if runs is None:
        return None
    return [r for r in runs if not _same(r, run)] + [run]


# ------------------------------------------------------------------ budget accounting
@dataclass(frozen=True)
class BudgetView:
    """One Budget at `now`: what is spent in the period and what is left."""

    name: str
    period: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal  # estimated cost still to come of other running runs it covers
    rate_per_second: Decimal  # burn rate of the covered runs running now
    runs: int  # covered runs with cost in the period
    window: Window
    on_exhausted: str

    @property
    def remaining(self) -> Decimal:
        return max(ZERO, self.limit - self.spent)

    @property
    def available(self) -> Decimal:
        """What a new run may still commit: remaining minus other runs' reservations."""
        return max(ZERO, self.limit - self.spent - self.reserved)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit

    @property
    def enforcing(self) -> bool:
        return self.on_exhausted in ("Stop", "Suspend")


def budget_view(budget: Resource, runs: Iterable[Resource] | None, now: datetime, *,
                exclude: Resource | None = None) -> BudgetView:
    """Spent, reservations and burn rate of `budget`, from the segments of `runs`.

    With `runs=None` the Budget's own status (as its reconciler last wrote it) stands in
    for spent, and nothing is reserved. `exclude`: the run being admitted (its own
    estimate is not a reservation against itself).
    """
    spec = budget.spec
    window = period_window(spec.period, now)
    if runs is None:
        spent = budget.status.spent if budget.status and budget.status.spent is not None else ZERO
        return BudgetView(budget.name, spec.period, spec.limit, spent, ZERO, ZERO,
                          budget.status.runs if budget.status else 0, window, spec.on_exhausted)
    spent = reserved = rate = ZERO
    counted = 0
    for run in runs:
        if not _is_run(run) or not covers(budget, run):
            continue
        segments = run.status.segments if run.status else []
        in_period = accrue(segments, now, since=window.start, until=window.end)
        spent += in_period.cost
        rate += in_period.rate_per_second
        counted += 1 if in_period.cost > 0 or in_period.rate_per_second > 0 else 0
        if exclude is not None and _same(run, exclude):
            continue
        if run.status and run.status.phase in ACTIVE_PHASES and run.status.cost and run.status.cost.estimated:
            reserved += max(ZERO, run.status.cost.estimated - accrue(segments, now).cost)
    live = {run.uid for run in runs if run.uid}
    for retired in _retired_in_window(budget, window, now):
        if retired.uid in live:
            continue  # still being deleted: counted above
        in_period = accrue(retired.segments, now, since=window.start, until=window.end)
        spent += in_period.cost
        counted += 1 if in_period.cost > 0 else 0
    return BudgetView(budget.name, spec.period, spec.limit, spent, reserved, rate, counted, window,
                      spec.on_exhausted)


def _retired_in_window(budget: Resource, window: Window, now: datetime) -> list[RetiredRun]:
    """Deleted runs whose segments still reach into the Budget's current period."""
    retired = budget.status.retired if budget.status else []
    if window.start is None:
        return list(retired)
    return [r for r in retired
            if any(s.end is None or parse_time(s.end) > window.start for s in r.segments)]


def retire(budget: Resource, run: Resource, now: datetime) -> list[dict] | None:
    """`budget.status.retired` with the deleted `run` added; None if it changes nothing.

    Open segments are closed at `now` (the run's pods go with it). Entries that fell out
    of the current period are dropped, so the list stays short.
    """
    if not covers(budget, run) or not (run.status and run.status.segments):
        return None
    window = period_window(budget.spec.period, now)
    kept = [r for r in _retired_in_window(budget, window, now) if r.uid != run.uid]
    segments = close_segments(run.status.segments, now)
    if accrue(segments, now, since=window.start, until=window.end).cost <= 0:
        return None
    kept.append(RetiredRun(kind=run.kind, name=run.name, uid=run.uid, segments=segments))
    return [to_dict(r) for r in kept]


# ------------------------------------------------------------------ admission
@dataclass(frozen=True)
class Admission:
    """Whether a run may start now, where, and what it will cost."""

    decision: Decision
    reason: str
    message: str
    pool: str | None  # where it runs (Admit), else None
    estimate: estimate.PoolEstimate | None  # the chosen pool's estimate (Admit)
    estimates: list[estimate.PoolEstimate]  # every pool with verdicts and notes (for the Event)
    auto_choice: str | None  # what `pool: auto` would choose now (same as `pool` for auto runs)
    auto_reason: str
    auto_message: str
    requeue_after: float | None = None  # Waiting: when to look again
    active_deadline_seconds: int | None = None  # Admit: the Job's backstop
    budgets: list[BudgetView] = field(default_factory=list)

    @property
    def admitted(self) -> bool:
        return self.decision == "Admit"

    @property
    def phase(self) -> str | None:
        """The run's phase when not admitted (`Waiting` or `Failed`)."""
        return None if self.admitted else self.decision


def admit(
    run: Resource,
    model: GenModelSpec,
    pools: Iterable[Resource],
    budgets: Iterable[Resource],
    now: datetime,
    *,
    runs: Iterable[Resource] | None = None,
    completed_steps: int = 0,
) -> Admission:
    """Decide whether `run` starts, on which pool, and why (not).

    `runs`: every TrainingRun/FineTune the Budgets may cover (for spent, reservations and
    burn rate); None → use the Budgets' status. `completed_steps`: the step of the
    checkpoint a resumed run starts from: the estimate covers the remaining steps, and
    maxCost is checked against what was accrued plus that estimate.
    """
    now = parse_time(now)
    runs = _with_run(run, runs)
    spec = run.spec
    accrued = accrue(run.status.segments if run.status else [], now).cost
    views = [budget_view(b, runs, now, exclude=run) for b in covering(budgets, run)]
    max_cost_room = None if spec.budget.max_cost is None else spec.budget.max_cost - accrued
    budget_room = min((v.available for v in views), default=None)
    estimates = estimate.estimate_pools(pools, spec, model, completed_steps=completed_steps)
    limits = {"deadline_seconds": spec.hardware.deadline_seconds, "max_cost_room": max_cost_room,
              "budget_room": budget_room}
    choice = estimate.choose_pool(estimates, requested=spec.hardware.pool, **limits)
    auto = choice if spec.hardware.pool == estimate.AUTO else estimate.choose_pool(estimates, **limits)
    common = {"estimates": choice.estimates, "auto_choice": auto.pool, "auto_reason": auto.reason,
              "auto_message": auto.message, "budgets": views}

    chosen = choice.chosen
    if chosen is not None:
        message = choice.message
        if views:
            message += "; " + "; ".join(f"Budget {v.name}: {money(v.available)} available" for v in views)
        deadline = _deadline(spec, accrued, accrue(run.status.segments if run.status else [], now)
                             .running_seconds, chosen.rate_per_second, views)
        return Admission("Admit", REASON_WITHIN_BUDGET, message, chosen.pool, chosen,
                         active_deadline_seconds=deadline, **common)

    if choice.reason != estimate.REASON_INSUFFICIENT_BUDGET:
        waiting = choice.reason in (estimate.REASON_POOL_NOT_FOUND, estimate.REASON_NO_POOL)
        return Admission("Waiting" if waiting else "Failed", choice.reason, choice.message, None, None,
                         requeue_after=WAITING_RETRY_SECONDS if waiting else None, **common)

    # Blocked by one or more Budgets: can it ever fit (Waiting), or not as specified (Failed)?
    candidates = [e for e in choice.estimates if e.fits and e.within_max_cost
                  and (e.meets_deadline or spec.hardware.pool != estimate.AUTO)
                  and (spec.hardware.pool in (estimate.AUTO, e.pool))]
    best = min(candidates, key=lambda e: (e.cost, e.duration_seconds), default=None)
    if best is None:  # pragma: no cover - choose_pool only blames the Budget when a candidate exists
        return Admission("Waiting", choice.reason, choice.message, None, None,
                         requeue_after=WAITING_RETRY_SECONDS, **common)
    decision: Decision = "Waiting"
    reasons, messages, waits = [], [], []
    for v in views:
        if best.cost <= v.available:
            continue
        what = f"estimated {money(best.cost)} on {best.pool}"
        numbers = (f"limit {money(v.limit)}, spent {money(v.spent)}"
                   + (f" this {v.period} period" if v.period != "Total" else "")
                   + (f", {money(v.reserved)} reserved by running runs" if v.reserved else ""))
        if best.cost > v.limit:
            decision = "Failed"
            reasons.append(REASON_ESTIMATE_EXCEEDS_BUDGET_LIMIT)
            messages.append(f"{what} exceeds Budget {v.name}'s whole {v.period} limit of {money(v.limit)}")
            continue
        reason = REASON_BUDGET_EXHAUSTED if v.exhausted else REASON_INSUFFICIENT_BUDGET
        reasons.append(reason)
        text = f"{what} exceeds Budget {v.name}'s remainder {money(v.available)} ({numbers})"
        if v.window.end is not None:
            waits.append(v.window.seconds_left(now))
            text += (f"; the period rolls over at {format_time(v.window.end)} "
                     f"(in {human_duration(v.window.seconds_left(now))})")
        elif best.cost > v.remaining:
            decision = "Failed"
            text += "; a Total Budget never rolls over: raise its limit"
        if v.reserved and best.cost <= v.remaining:
            waits.append(WAITING_RETRY_SECONDS)
            text += "; room frees up as the running runs finish"
        messages.append(text)
    reason = next((r for r in reasons if r == REASON_ESTIMATE_EXCEEDS_BUDGET_LIMIT),
                  reasons[0] if reasons else REASON_INSUFFICIENT_BUDGET)
    return Admission(decision, reason, "; ".join(messages), None, None,
                     requeue_after=min(waits) if decision == "Waiting" and waits else None, **common)


# ------------------------------------------------------------------ enforcement
@dataclass(frozen=True)
class Enforcement:
    """What to do with a run now: continue, or stop/suspend it (and why)."""

    allowed: bool
    action: Action
    reason: str
    message: str
    requeue_after: float  # when to check again (≤ the interval)
    seconds_to_limit: float | None  # at the current burn rate; None: no limit applies
    accrued: Decimal
    running_seconds: float


def enforce(
    run: Resource,
    budgets: Iterable[Resource],
    now: datetime,
    *,
    runs: Iterable[Resource] | None = None,
    interval: float = DEFAULT_INTERVAL,
) -> Enforcement:
    """Stop/suspend `run` if it has reached maxCost, maxDuration or an enforcing Budget.

    `runs`: every run the Budgets may cover (the run itself included), for Budget spent
    and burn rate; None → the Budgets' status, burned by this run alone.
    """
    now = parse_time(now)
    spec = run.spec.budget
    accrual = accrue(run.status.segments if run.status else [], now)
    running = float(accrual.running_seconds)
    runs = _with_run(run, runs)
    views = [budget_view(b, runs, now) for b in covering(budgets, run)]
    if runs is None:  # only this run is known to burn
        views = [dataclasses.replace(v, rate_per_second=accrual.rate_per_second) for v in views]

    # (seconds left, action if reached, reason, message)
    limits: list[tuple[float, Action, str, str]] = []
    if spec.max_cost is not None:
        left = _seconds_until(spec.max_cost - accrual.cost, accrual.rate_per_second)
        limits.append((left, spec.on_exceeded, REASON_MAX_COST_REACHED,
                       f"accrued {money(accrual.cost)} of maxCost {money(spec.max_cost)}"))
    if spec.max_duration_seconds is not None:
        left = spec.max_duration_seconds - running if accrual.running else (
            0.0 if running >= spec.max_duration_seconds else math.inf)
        limits.append((left, spec.on_exceeded, REASON_MAX_DURATION_REACHED,
                       f"ran {human_duration(running)} of maxDuration {spec.max_duration}"))
    for v in views:
        if not v.enforcing:
            continue
        left = _seconds_until(v.limit - v.spent, v.rate_per_second)
        limits.append((left, v.on_exhausted, REASON_BUDGET_EXHAUSTED,
                       f"Budget {v.name} spent {money(v.spent)} of its {v.period} limit {money(v.limit)}"))

    reached = [lim for lim in limits if lim[0] <= REACHED_WITHIN_SECONDS]
    finite = [lim[0] for lim in limits if math.isfinite(lim[0])]
    seconds_to_limit = min(finite) if finite else None
    if reached:
        _, action, reason, message = reached[0]
        return Enforcement(False, action, reason, message, interval, 0.0, accrual.cost, running)
    requeue = min(interval, seconds_to_limit) if seconds_to_limit is not None else interval
    summary = "; ".join(lim[3] for lim in limits) or "no limits"
    if seconds_to_limit is not None:
        summary += f"; nearest limit in {human_duration(seconds_to_limit)} at the current rate"
    return Enforcement(True, "Continue", REASON_WITHIN_BUDGET, summary, max(requeue, REACHED_WITHIN_SECONDS),
                       seconds_to_limit, accrual.cost, running)


def _seconds_until(money_left: Decimal, rate_per_second: Decimal) -> float:
    if money_left <= 0:
        return 0.0
    if rate_per_second <= 0:
        return math.inf
    return float(money_left / rate_per_second)


def active_deadline_seconds(
    run: Resource,
    budgets: Iterable[Resource],
    now: datetime,
    *,
    runs: Iterable[Resource] | None = None,
    rate_per_second: Decimal | None = None,
    job_start: datetime | str | None = None,
) -> int | None:
    """The Job's `activeDeadlineSeconds`: the limits' backstop while the operator is down.

    The nearest of: maxDuration minus running time; maxCost minus accrued at the burn
    rate; each enforcing Budget's remainder at its burn rate (this run's included).
    `rate_per_second` overrides this run's burn rate (at admission no segment is open
    yet: pass the chosen estimate's rate). `job_start`: the Job's `status.startTime`
    when updating a running Job (the deadline counts from it). Rounded up, at least 1;
    None when no limit applies.
    """
    now = parse_time(now)
    accrual = accrue(run.status.segments if run.status else [], now)
    rate = rate_per_second if rate_per_second is not None else accrual.rate_per_second
    runs = _with_run(run, runs)
    views = [budget_view(b, runs, now) for b in covering(budgets, run)]
    deadline = _deadline(run.spec, accrual.cost, accrual.running_seconds, rate, views,
                         extra_rate=ZERO if accrual.running and runs is not None else rate)
    if deadline is None or job_start is None:
        return deadline
    elapsed = max(0.0, (now - parse_time(job_start)).total_seconds())
    return max(1, math.ceil(deadline + elapsed))


def _deadline(spec, accrued: Decimal, running_seconds: Decimal, rate: Decimal, views: Sequence[BudgetView],
              *, extra_rate: Decimal | None = None) -> int | None:
    """Seconds until the nearest limit; `extra_rate` is this run's burn not yet in the views."""
    extra = rate if extra_rate is None else extra_rate
    terms: list[float] = []
    if spec.budget.max_duration_seconds is not None:
        terms.append(spec.budget.max_duration_seconds - float(running_seconds))
    if spec.budget.max_cost is not None:
        terms.append(_seconds_until(spec.budget.max_cost - accrued, rate))
    for v in views:
        if v.enforcing:
            terms.append(_seconds_until(v.limit - v.spent, v.rate_per_second + extra))
    finite = [t for t in terms if math.isfinite(t)]
    if not finite:
        return None
    return max(1, math.ceil(min(finite)))


# ------------------------------------------------------------------ Budget status
@dataclass(frozen=True)
class BudgetReport:
    """A Budget at `now`: the status to write and the Events to emit."""

    view: BudgetView
    period_start: str | None
    rolled_over: bool  # a new period began since the status was written
    warned: list[int]  # thresholds already announced this period (100: exhaustion)
    new_warnings: list[int]  # warnAt thresholds crossed now: one Warning Event each
    newly_exhausted: bool  # emit the exhaustion Event once per period
    action: str | None  # onExhausted when exhausted, else None
    reason: str
    message: str
    requeue_after: float | None  # next rollover, or the next threshold at the burn rate
    retired: list[RetiredRun] = field(default_factory=list)  # deleted runs still counting this period

    @property
    def exhausted(self) -> bool:
        return self.view.exhausted

    def status(self, previous: BudgetStatus | None = None) -> BudgetStatus:
        """The new `BudgetStatus` (conditions and observedGeneration carried over)."""
        base = previous or BudgetStatus()
        return dataclasses.replace(base, spent=self.view.spent, remaining=self.view.remaining,
                                   period_start=self.period_start, runs=self.view.runs, warned=list(self.warned),
                                   retired=list(self.retired))


def budget_report(budget: Resource, runs: Iterable[Resource], now: datetime) -> BudgetReport:
    """Spent, remaining, warnings and exhaustion of `budget` now, from the covered runs."""
    now = parse_time(now)
    view = budget_view(budget, list(runs), now)
    start = view.window.start
    period_start = format_time(start) if start else None
    previous = budget.status or BudgetStatus()
    rolled_over = previous.period_start is not None and previous.period_start != period_start
    already = [] if rolled_over else sorted(set(previous.warned))
    crossed = [t for t in sorted(set(budget.spec.warn_at)) if view.spent >= view.limit * t / 100]
    new_warnings = [t for t in crossed if t not in already and t < 100]
    newly_exhausted = view.exhausted and 100 not in already
    warned = sorted(set(already) | set(new_warnings) | ({100} if view.exhausted else set()))

    share = f"{money(view.spent)} of {money(view.limit)}"
    percent = f"{(view.spent * 100 / view.limit):.0f}%" if view.limit else "100%"
    when = (f"; the {view.period} period rolls over at {format_time(view.window.end)}"
            if view.window.end else "")
    if view.exhausted:
        effect = {"Stop": "running runs are stopped", "Suspend": "running runs are suspended",
                  "Alert": "running runs continue (Alert)"}[view.on_exhausted]
        reason = REASON_BUDGET_EXHAUSTED
        message = f"spent {share} ({percent}): new runs wait, {effect}{when}"
    else:
        reason = REASON_BUDGET_WARNING if crossed else REASON_WITHIN_BUDGET
        message = f"spent {share} ({percent}) on {view.runs} run(s); {money(view.remaining)} remaining{when}"

    waits = [view.window.seconds_left(now)] if view.window.end else []
    pending = [t for t in sorted(set(budget.spec.warn_at) | {100}) if t not in warned]
    if pending and view.rate_per_second > 0:
        target = view.limit * pending[0] / 100
        waits.append(max(REACHED_WITHIN_SECONDS, float((target - view.spent) / view.rate_per_second)))
    return BudgetReport(view, period_start, rolled_over, warned, new_warnings, newly_exhausted,
                        view.on_exhausted if view.exhausted else None, reason, message,
                        min(waits) if waits else None, _retired_in_window(budget, view.window, now))


def warning_message(view: BudgetView, threshold: int) -> str:
    return f"Budget {view.name} crossed {threshold}%: spent {money(view.spent)} of {money(view.limit)}"

