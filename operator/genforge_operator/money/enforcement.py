"""Enforcement: whether a running run must stop now, and the Job's backstop deadline. Pure.

* **Enforcement** (`enforce`): a running run is stopped (or suspended) when its accrued
  cost reaches maxCost, its running time reaches maxDuration, or a covering Budget with
  `onExhausted: Stop|Suspend` is exhausted. `requeue_after` is the time until the
  nearest limit at the current burn rate, capped by the enforcement interval: overspend
  is bounded by one interval (plus the trainer's checkpoint-and-exit time).
* **Backstop** (`active_deadline_seconds`): the Job's `activeDeadlineSeconds`, so the
  limits hold while the operator is down.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from ..api import Resource
from ..formats import human_duration, money, parse_timestamp
from ..vocabulary import Reason
from .accrual import ZERO, accrue
from .periods import (
    REACHED_WITHIN_SECONDS,
    BudgetView,
    budget_view,
    covering,
    runs_including,
)

#: How often a running run is re-checked at most (seconds): the overspend bound.
DEFAULT_INTERVAL = 5.0


Action = Literal["Continue", "Stop", "Suspend"]


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
    now = parse_timestamp(now)
    spec = run.spec.budget
    accrual = accrue(run.status.segments if run.status else [], now)
    running = float(accrual.running_seconds)
    runs = runs_including(run, runs)
    views = [budget_view(b, runs, now) for b in covering(budgets, run)]
    if runs is None:  # only this run is known to burn
        views = [dataclasses.replace(v, rate_per_second=accrual.rate_per_second) for v in views]

    # (seconds left, action if reached, reason, message)
    limits: list[tuple[float, Action, str, str]] = []
    if spec.max_cost is not None:
        left = _seconds_until(spec.max_cost - accrual.cost, accrual.rate_per_second)
        limits.append((left, spec.on_exceeded, Reason.MAX_COST_REACHED,
                       f"accrued {money(accrual.cost)} of maxCost {money(spec.max_cost)}"))
    if spec.max_duration_seconds is not None:
        left = spec.max_duration_seconds - running if accrual.running else (
            0.0 if running >= spec.max_duration_seconds else math.inf)
        limits.append((left, spec.on_exceeded, Reason.MAX_DURATION_REACHED,
                       f"ran {human_duration(running)} of maxDuration {spec.max_duration}"))
    for v in views:
        if not v.enforcing:
            continue
        left = _seconds_until(v.limit - v.spent, v.rate_per_second)
        limits.append((left, v.on_exhausted, Reason.BUDGET_EXHAUSTED,
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
    return Enforcement(True, "Continue", Reason.WITHIN_BUDGET, summary, max(requeue, REACHED_WITHIN_SECONDS),
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
    now = parse_timestamp(now)
    accrual = accrue(run.status.segments if run.status else [], now)
    rate = rate_per_second if rate_per_second is not None else accrual.rate_per_second
    runs = runs_including(run, runs)
    views = [budget_view(b, runs, now) for b in covering(budgets, run)]
    deadline = seconds_to_nearest_limit(run.spec, accrual.cost, accrual.running_seconds, rate, views,
                                        extra_rate=ZERO if accrual.running and runs is not None else rate)
    if deadline is None or job_start is None:
        return deadline
    elapsed = max(0.0, (now - parse_timestamp(job_start)).total_seconds())
    return max(1, math.ceil(deadline + elapsed))


def seconds_to_nearest_limit(spec, accrued: Decimal, running_seconds: Decimal, rate: Decimal,
                             views: Sequence[BudgetView], *, extra_rate: Decimal | None = None) -> int | None:
    """Seconds until the nearest limit, rounded up (at least 1); None when no limit applies.

    `rate` is this run's burn rate; `extra_rate` the part of it not yet in the views'
    burn rates (default: all of it). Admission uses it for the new Job's backstop.
    """
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
