"""Admission: whether a run may start now, on which pool, and why (not). Pure.

A run starts only when its estimate fits its `maxCost` and the room left in every
Budget that covers it. If it cannot fit as specified — the estimate exceeds maxCost, or
a Budget's whole limit, or a `Total` Budget's remainder — it is `Failed`; if a Budget
may free up (next period, running runs finishing) it is `Waiting`, and `requeue_after`
says when to look again. An admitted run gets the Job's backstop deadline
(`enforcement.seconds_to_nearest_limit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ..api import GenModelSpec, Resource
from ..formats import human_duration, money, parse_timestamp, timestamp
from ..vocabulary import Reason
from . import estimate
from .accrual import accrue
from .enforcement import seconds_to_nearest_limit
from .periods import (
    BudgetView,
    budget_view,
    covering,
    runs_including,
)

#: How soon a run waiting for other runs' reservations, or for a pool, looks again.
WAITING_RETRY_SECONDS = 60.0


Decision = Literal["Admit", "Waiting", "Failed"]


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
    now = parse_timestamp(now)
    runs = runs_including(run, runs)
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
        running_seconds = accrue(run.status.segments if run.status else [], now).running_seconds
        deadline = seconds_to_nearest_limit(spec, accrued, running_seconds, chosen.rate_per_second, views)
        return Admission("Admit", Reason.WITHIN_BUDGET, message, chosen.pool, chosen,
                         active_deadline_seconds=deadline, **common)

    if choice.reason != Reason.INSUFFICIENT_BUDGET:
        waiting = choice.reason in (Reason.POOL_NOT_FOUND, Reason.NO_POOL_AVAILABLE)
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
            reasons.append(Reason.ESTIMATE_EXCEEDS_BUDGET_LIMIT)
            messages.append(f"{what} exceeds Budget {v.name}'s whole {v.period} limit of {money(v.limit)}")
            continue
        reason = Reason.BUDGET_EXHAUSTED if v.exhausted else Reason.INSUFFICIENT_BUDGET
        reasons.append(reason)
        text = f"{what} exceeds Budget {v.name}'s remainder {money(v.available)} ({numbers})"
        if v.window.end is not None:
            waits.append(v.window.seconds_left(now))
            text += (f"; the period rolls over at {timestamp(v.window.end)} "
                     f"(in {human_duration(v.window.seconds_left(now))})")
        elif best.cost > v.remaining:
            decision = "Failed"
            text += "; a Total Budget never rolls over: raise its limit"
        if v.reserved and best.cost <= v.remaining:
            waits.append(WAITING_RETRY_SECONDS)
            text += "; room frees up as the running runs finish"
        messages.append(text)
    reason = next((r for r in reasons if r == Reason.ESTIMATE_EXCEEDS_BUDGET_LIMIT),
                  reasons[0] if reasons else Reason.INSUFFICIENT_BUDGET)
    return Admission(decision, reason, "; ".join(messages), None, None,
                     requeue_after=min(waits) if decision == "Waiting" and waits else None, **common)
