"""Budgets: which runs a Budget covers, what they spent in its period, and its status. Pure.

A Budget covers the runs in its namespace that match its label selector (no selector:
all of them). Its period is a UTC calendar window: `Daily` from midnight, `Weekly` from
ISO Monday midnight, `Monthly` from the 1st, `Total` since ever. Spent is the sum of the
covered runs' segment costs inside the window (`accrual.accrue`): a run straddling the
rollover counts only its part after it. Deleted runs keep counting through the Budget's
`status.retired` (`retire`).

`budget_report` gives a Budget's status at `now`: spent, remaining, warnings to emit,
exhaustion and its action. Admission and enforcement read the same `BudgetView`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from ..api import BudgetStatus, LabelSelector, Resource, RetiredRun, to_dict
from ..formats import money, parse_timestamp, timestamp
from ..vocabulary import Reason
from .accrual import ZERO, accrue, close_segments

#: A limit due within this many seconds counts as reached (no busy re-checks).
REACHED_WITHIN_SECONDS = 0.1

# Reasons shared by admission, enforcement and Budget conditions.
# Budget Events/conditions.

ACTIVE_PHASES = ("Running",)


# ------------------------------------------------------------------ periods
@dataclass(frozen=True)
class Window:
    """A Budget period: [start, end); `Total` has no start and no end."""

    start: datetime | None
    end: datetime | None

    def seconds_left(self, now: datetime) -> float | None:
        return None if self.end is None else max(0.0, (self.end - parse_timestamp(now)).total_seconds())


def period_window(period: str, now: datetime) -> Window:
    now = parse_timestamp(now)
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


def runs_including(run: Resource, runs: Iterable[Resource] | None) -> list[Resource] | None:
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
            if any(s.end is None or parse_timestamp(s.end) > window.start for s in r.segments)]


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
    now = parse_timestamp(now)
    view = budget_view(budget, list(runs), now)
    start = view.window.start
    period_start = timestamp(start) if start else None
    previous = budget.status or BudgetStatus()
    rolled_over = previous.period_start is not None and previous.period_start != period_start
    already = [] if rolled_over else sorted(set(previous.warned))
    crossed = [t for t in sorted(set(budget.spec.warn_at)) if view.spent >= view.limit * t / 100]
    new_warnings = [t for t in crossed if t not in already and t < 100]
    newly_exhausted = view.exhausted and 100 not in already
    warned = sorted(set(already) | set(new_warnings) | ({100} if view.exhausted else set()))

    share = f"{money(view.spent)} of {money(view.limit)}"
    percent = f"{(view.spent * 100 / view.limit):.0f}%" if view.limit else "100%"
    when = (f"; the {view.period} period rolls over at {timestamp(view.window.end)}"
            if view.window.end else "")
    if view.exhausted:
        effect = {"Stop": "running runs are stopped", "Suspend": "running runs are suspended",
                  "Alert": "running runs continue (Alert)"}[view.on_exhausted]
        reason = Reason.BUDGET_EXHAUSTED
        message = f"spent {share} ({percent}): new runs wait, {effect}{when}"
    else:
        reason = Reason.BUDGET_WARNING if crossed else Reason.WITHIN_BUDGET
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
