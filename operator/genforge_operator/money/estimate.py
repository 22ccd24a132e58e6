"""How long a run takes and what it costs on each pool, and which pool it goes to. Pure.

Throughput comes from `throughput.py`, money from the one cost model (`accrual.py`).
Admission (`admission.admit`) and `genforge estimate` (`cli/estimate.py`) both call
these functions, so the CLI and the operator agree on every number.

* **Duration** = start-up (pod start → first step, and exit; + rendezvous) + training
  (samples × FLOPs per sample ÷ effective FLOP/s) + evaluation (samples × sampling steps ×
  FLOPs of a denoising step ÷ effective FLOP/s) + checkpoint writes, rounded up to whole
  seconds. Each part is `measured` on the pool (`calibration.py`) or a `prior`
  (`throughput.py`), and carries a range. **Cost** = `accrual.cost_of(duration,
  accelerators, price)`.
* **Pool choice** (`choose_pool`): `pool: auto` takes the cheapest pool that fits, meets
  the deadline and is within maxCost and the Budgets' room; a named pool only has to fit
  and be within budget. Every other pool gets a note saying why it was not chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from ..api import AcceleratorPoolSpec, GenModelSpec, Resource
from ..formats import human_duration, money
from ..units import CENT
from ..vocabulary import Reason
from . import accrual
from .calibration import measured_part
from .throughput import (
    CHECKPOINT_SECONDS_ACCELERATOR,
    CHECKPOINT_SECONDS_CPU,
    RunSpec,
    checkpoint_writes,
    evaluation_calls,
    evaluation_work,
    legacy_measured_flops,
    prior_flops_per_second,
    prior_startup_seconds,
    processes_per_node,
    rendezvous_seconds,
    samples_of,
    sampling_overhead_seconds,
    scaling_efficiency,
    seconds_at,
    step_flops,
    step_overhead_seconds,
)

#: A prior part's range: ÷ / × this factor (priors are within 2× by design, docs/estimates.md).
PRIOR_SPREAD = 2.0
#: A measured part's range is the kept runs' range, widened to at least ± this share
#: (one run cannot show its own spread).
MEASURED_SPREAD = 0.15

# Reasons `pool: auto` (or a named pool) gives for its decision.

AUTO = "auto"


# ------------------------------------------------------------------ estimates
@dataclass(frozen=True)
class Part:
    """One part of a duration estimate, where its rate came from, and its range."""

    name: Literal["startup", "training", "evaluation", "checkpoints"]
    seconds: float
    basis: Literal["measured", "prior"]
    runs: int = 0  # runs behind a measured part
    min_seconds: float = 0.0
    max_seconds: float = 0.0

    def describe(self) -> str:
        return f"{self.name} {self.basis}" + (f" ({self.runs} run{'s' * (self.runs != 1)})"
                                              if self.basis == "measured" else "")


@dataclass(frozen=True)
class PoolEstimate:
    """A run on one pool: how long, how much, and (after `choose_pool`) the verdicts."""

    pool: str
    accelerator_type: str
    cpu: bool
    nodes: int
    accelerators: int
    price_per_hour: Decimal
    currency: str
    samples: int
    samples_per_second: float  # all accelerators together, in the run's own samples
    throughput_source: Literal["measured", "prior"]
    duration_seconds: int
    cost: Decimal
    unfit: str | None = None  # why the run cannot be placed on this pool
    parts: tuple[Part, ...] = ()
    min_seconds: int = 0
    max_seconds: int = 0
    prior_basis: str = ""  # where the pool's prior comes from, in words
    meets_deadline: bool = True
    within_max_cost: bool = True
    within_budget: bool = True  # maxCost and every covering Budget's room
    note: str = ""

    @property
    def seconds(self) -> int:
        return self.duration_seconds

    @property
    def basis(self) -> str:
        """Each part's basis, in words: "startup measured (2 runs), training prior, …"."""
        return ", ".join(p.describe() for p in self.parts if p.seconds > 0 or p.name == "training")

    @property
    def min_cost(self) -> Decimal:
        return accrual.cost_of(self.min_seconds, self.accelerators, self.price_per_hour)

    @property
    def max_cost(self) -> Decimal:
        return accrual.cost_of(self.max_seconds, self.accelerators, self.price_per_hour)

    @property
    def fits(self) -> bool:
        return self.unfit is None

    @property
    def rate_per_second(self) -> Decimal:
        return accrual.rate_per_second(self.accelerators, self.price_per_hour)

    @property
    def accelerator_hours(self) -> float:
        return self.duration_seconds * self.accelerators / 3600

    @property
    def mode(self) -> str:
        """The seed's travel picture: walk (CPU), drive (one machine), fly (a farm)."""
        if self.cpu:
            return "walk"
        return "drive" if self.nodes == 1 else "fly"


def _rate(pool: Resource, part: str, prior: float) -> tuple[float, str, int, float, float]:
    """(rate, basis, runs, low, high) of a part's rate (FLOP/s or seconds) on `pool`."""
    measured = measured_part(pool, part)
    if measured is None:
        return prior, "prior", 0, prior / PRIOR_SPREAD, prior * PRIOR_SPREAD
    low = min(measured.low or measured.value, measured.value * (1 - MEASURED_SPREAD))
    high = max(measured.high or measured.value, measured.value * (1 + MEASURED_SPREAD))
    return measured.value, "measured", measured.used, low, high


def _part(name, basis: str, runs: int, seconds: float, fastest: float, slowest: float) -> Part:
    return Part(name=name, seconds=seconds, basis=basis, runs=runs, min_seconds=fastest, max_seconds=slowest)


def estimate_parts(pool: Resource, spec: RunSpec, model: GenModelSpec, *,
                   completed_steps: int = 0) -> tuple[list[Part], float, str]:
    """The four parts of `spec`'s remaining work on `pool`, the run's training throughput
    (samples/s, all accelerators, in the run's own samples; 0 when the pool has none) and
    where the pool's prior comes from."""
    pool_spec: AcceleratorPoolSpec = pool.spec
    hardware = spec.hardware
    cpu = pool_spec.accelerator.is_cpu
    accelerators = accrual.accelerators_on(pool_spec, hardware)
    per_node = processes_per_node(pool_spec, hardware.accelerators_per_node)
    efficiency = scaling_efficiency(hardware.nodes, per_node)
    prior_flops, prior_basis = prior_flops_per_second(pool_spec)
    parts = []

    startup, basis, runs, low, high = _rate(pool, "startup", prior_startup_seconds(pool_spec))
    rendezvous = rendezvous_seconds(hardware.nodes)
    parts.append(_part("startup", basis, runs, startup + rendezvous, low + rendezvous, high + rendezvous))

    # each process: steps × (overhead + a step's FLOPs ÷ FLOP/s), the overhead scaled by the pool's
    # measured speed like the FLOPs (`seconds_at`); the processes run together.
    # The first step's warm-up is measured as start-up.
    flops, basis, runs, low, high = _rate(pool, "training", prior_flops)
    legacy = legacy_measured_flops(pool, spec, model) if basis == "prior" else None
    if legacy is not None:
        flops, runs = legacy
        basis, low, high = "measured", flops * (1 - MEASURED_SPREAD), flops * (1 + MEASURED_SPREAD)
    steps = max(0, spec.training.steps - completed_steps - 1)  # the first step ends start-up
    work, overhead = step_flops(spec, model, cpu=cpu), step_overhead_seconds(pool_spec)

    def step_seconds(rate: float) -> float:  # the overhead scales with the pool's speed, like the FLOPs
        return seconds_at(rate * efficiency, work, overhead * efficiency, prior_flops)

    parts.append(_part("training", basis, runs, steps * step_seconds(flops), steps * step_seconds(high),
                       steps * step_seconds(low)))
    per_step = spec.training.batch_size * spec.training.gradient_accumulation * accelerators
    samples_per_second = per_step / step_seconds(flops) if flops > 0 else 0.0

    # evaluation runs on the main process only; its prior rate is training's prior
    # denoising calls × (overhead + a call's FLOPs ÷ FLOP/s), like training's steps
    flops, basis, runs, low, high = _rate(pool, "evaluation", prior_flops)
    work = evaluation_work(spec, model)
    calls = evaluation_calls(spec, model) * sampling_overhead_seconds(pool_spec)

    def evaluation_seconds(rate: float) -> float:
        return seconds_at(rate, work, calls, prior_flops) if work and rate > 0 else 0.0

    parts.append(_part("evaluation", basis, runs, evaluation_seconds(flops), evaluation_seconds(high),
                       evaluation_seconds(low)))

    writes = checkpoint_writes(spec, completed_steps=completed_steps)
    prior = CHECKPOINT_SECONDS_CPU if cpu else CHECKPOINT_SECONDS_ACCELERATOR
    each, basis, runs, low, high = _rate(pool, "checkpoints", prior)
    parts.append(_part("checkpoints", basis, runs, writes * each, writes * low, writes * high))
    return parts, samples_per_second, prior_basis


def estimate_on_pool(pool: Resource, spec: RunSpec, model: GenModelSpec, *,
                     completed_steps: int = 0) -> PoolEstimate:
    """Duration and cost of `spec`'s remaining work on `pool`, part by part."""
    pool_spec: AcceleratorPoolSpec = pool.spec
    hardware = spec.hardware
    cpu = pool_spec.accelerator.is_cpu
    accelerators = accrual.accelerators_on(pool_spec, hardware)
    samples = samples_of(spec, accelerators, completed_steps=completed_steps)
    parts, throughput, prior_basis = estimate_parts(pool, spec, model, completed_steps=completed_steps)
    unfit = accrual.fits_pool(pool_spec, hardware)
    if throughput <= 0 or not all(math.isfinite(p.seconds) for p in parts):
        unfit, throughput = "has no throughput (relativeThroughput is 0)", math.inf
        parts = [dataclasses.replace(p, seconds=0.0, min_seconds=0.0, max_seconds=0.0) for p in parts]
    training = next(p for p in parts if p.name == "training")
    duration = math.ceil(sum(p.seconds for p in parts))
    return PoolEstimate(
        pool=pool.name, accelerator_type=pool_spec.accelerator.type, cpu=cpu, nodes=hardware.nodes,
        accelerators=accelerators, price_per_hour=pool_spec.price_per_hour, currency=pool_spec.currency,
        samples=samples, samples_per_second=throughput, throughput_source=training.basis,
        duration_seconds=duration, cost=accrual.cost_of(duration, accelerators, pool_spec.price_per_hour),
        unfit=unfit, parts=tuple(parts), min_seconds=math.floor(sum(p.min_seconds for p in parts)),
        max_seconds=math.ceil(sum(p.max_seconds for p in parts)), prior_basis=prior_basis,
    )


def estimate_pools(pools: Iterable[Resource], spec: RunSpec, model: GenModelSpec, *,
                   completed_steps: int = 0) -> list[PoolEstimate]:
    """Estimates on every pool: slowest first (walk, drive, fly); pools that don't fit last."""
    estimates = [estimate_on_pool(p, spec, model, completed_steps=completed_steps) for p in pools]
    return sorted(estimates, key=lambda e: (not e.fits, -e.duration_seconds, e.pool))


# ------------------------------------------------------------------ choosing a pool
@dataclass(frozen=True)
class Choice:
    """A pool decision: `pool` is None when nothing qualifies (then `reason` says why)."""

    pool: str | None
    reason: str
    message: str
    estimates: list[PoolEstimate]  # every pool, with verdicts and a note for the Event

    @property
    def chosen(self) -> PoolEstimate | None:
        return next((e for e in self.estimates if e.pool == self.pool), None)

    def alternatives(self) -> str:
        """One line per pool, for the Event that explains the decision."""
        return "; ".join(f"{e.pool}: {money(e.cost, e.currency)} in {human_duration(e.duration_seconds)}"
                         f" ({e.note})" for e in self.estimates)


def _cheapest(estimates: Iterable[PoolEstimate]) -> PoolEstimate | None:
    """Cheapest to the cent; equal costs → faster; then by name."""
    return min(estimates, key=lambda e: (e.cost.quantize(CENT, rounding=ROUND_HALF_UP), e.duration_seconds,
                                         e.pool), default=None)


def choose_pool(
    estimates: Sequence[PoolEstimate],
    *,
    requested: str = AUTO,
    deadline_seconds: float | None = None,
    max_cost_room: Decimal | None = None,
    budget_room: Decimal | None = None,
) -> Choice:
    """The pool a run goes to, and why every other pool did not.

    `requested`: `auto`, or the pool the run names. `max_cost_room`: maxCost minus what
    the run accrued already (None: no maxCost). `budget_room`: the smallest room left in
    the Budgets covering the run (None: no Budget). `auto` picks the cheapest pool that
    fits, meets the deadline and is within budget; a named pool only has to fit and be
    within budget (a deadline only steers `auto`).
    """
    judged = [
        dataclasses.replace(
            e,
            meets_deadline=deadline_seconds is None or e.duration_seconds <= deadline_seconds,
            within_max_cost=max_cost_room is None or e.cost <= max_cost_room,
            within_budget=(max_cost_room is None or e.cost <= max_cost_room)
            and (budget_room is None or e.cost <= budget_room),
        )
        for e in estimates
    ]
    auto = requested == AUTO
    deadline = human_duration(deadline_seconds) if deadline_seconds is not None else None
    if auto:
        considered = judged
    else:
        considered = [e for e in judged if e.pool == requested]
        if not considered:
            known = ", ".join(sorted(e.pool for e in judged)) or "none"
            return Choice(None, Reason.POOL_NOT_FOUND, f"AcceleratorPool {requested!r} not found (pools: {known})",
                          _notes(judged, None, deadline, auto))
    fitting = [e for e in considered if e.fits]
    timely = [e for e in fitting if e.meets_deadline or not auto]
    affordable = [e for e in timely if e.within_max_cost]
    allowed = [e for e in affordable if e.within_budget]
    chosen = _cheapest(allowed)
    if chosen is not None:
        reason, message = Reason.POOL_CHOSEN, _chosen_message(chosen, len(allowed), deadline, auto)
    elif not judged:
        reason, message = Reason.NO_POOL_AVAILABLE, "no AcceleratorPool exists"
    elif not fitting:
        reason = Reason.NO_POOL_FITS
        message = "; ".join(f"{e.pool} {e.unfit}" for e in considered)
    elif not timely:
        fastest = min(fitting, key=lambda e: e.duration_seconds)
        reason = Reason.DEADLINE_UNREACHABLE
        message = (f"no pool meets the {deadline} deadline: the fastest, {fastest.pool}, needs an estimated "
                   f"{human_duration(fastest.duration_seconds)}")
    elif not affordable:
        best = _cheapest(timely)
        reason = Reason.ESTIMATE_EXCEEDS_MAX_COST
        where = f"{best.pool}, the cheapest pool meeting the {deadline} deadline," if auto and deadline else best.pool
        message = (f"estimated {money(best.cost, best.currency)} on {where} exceeds the "
                   f"{money(max_cost_room, best.currency)} left of maxCost")
    else:
        best = _cheapest(affordable)
        reason = Reason.INSUFFICIENT_BUDGET
        message = (f"estimated {money(best.cost, best.currency)} on {best.pool} exceeds the "
                   f"{money(budget_room, best.currency)} left in the Budget")
    return Choice(chosen.pool if chosen else None, reason, message, _notes(judged, chosen, deadline, auto))


def _chosen_message(chosen: PoolEstimate, count: int, deadline: str | None, auto: bool) -> str:
    what = f"{money(chosen.cost, chosen.currency)} in {human_duration(chosen.duration_seconds)}"
    if not auto:
        return f"pool {chosen.pool} as requested: estimated {what}"
    qualifier = f"meeting the {deadline} deadline " if deadline else ""
    which = "the only pool" if count == 1 else f"the cheapest of {count} pools"
    return f"chose {chosen.pool}, {which} {qualifier}within budget: estimated {what}"


def _notes(judged: list[PoolEstimate], chosen: PoolEstimate | None, deadline: str | None,
           auto: bool) -> list[PoolEstimate]:
    out = []
    for e in judged:
        if chosen is not None and e.pool == chosen.pool:
            note = "chosen"
        elif not e.fits:
            note = f"does not fit: {e.unfit}"
        elif not e.meets_deadline:
            note = f"misses the {deadline} deadline"
        elif not e.within_max_cost:
            note = "exceeds maxCost"
        elif not e.within_budget:
            note = "exceeds the Budget's room"
        elif not auto:
            note = "not requested"
        elif chosen is not None and e.cost > chosen.cost:
            note = f"{money(e.cost - chosen.cost, e.currency)} more than {chosen.pool}"
        elif chosen is not None:
            note = f"as cheap as {chosen.pool} but slower"
        else:
            note = "eligible"
        out.append(dataclasses.replace(e, note=note))
    return out


# ------------------------------------------------------------------ after a run
def estimate_error(estimated_seconds: float | None, actual_seconds: float | None) -> float | None:
    """(actual − estimated) / estimated: +0.25 = the run took 25 % longer than estimated."""
    if not estimated_seconds or actual_seconds is None:
        return None
    return round((actual_seconds - estimated_seconds) / estimated_seconds, 4)


def prorated_seconds(estimate: dict, *, completed_steps: int, total_steps: int) -> float | None:
    """The admitted estimate (`status.estimate`) of a run that stopped early, pro-rated to the
    steps it completed: start-up in full, training and checkpoint writes × the share of the
    estimated steps done (those after `fromStep`, where the estimate began), no evaluation
    (a run stopped early does not evaluate). None without the estimate's parts."""
    parts = {p.get("part"): float(p.get("seconds") or 0.0) for p in estimate.get("parts") or []}
    if not parts:
        return None
    start = int(estimate.get("fromStep") or 0)
    remaining = total_steps - start
    share = min(1.0, max(0.0, (completed_steps - start) / remaining)) if remaining > 0 else 1.0
    return parts.get("startup", 0.0) + share * (parts.get("training", 0.0) + parts.get("checkpoints", 0.0))


def finished_estimate_error(status: dict, *, total_steps: int, complete: bool) -> float | None:
    """`status.cost.estimateError` of a finished run: against the whole estimate when it
    completed its steps (`complete`), else against the estimate pro-rated to the steps it
    did (`prorated_seconds`). None for a run that never ran or was never estimated."""
    cost = status.get("cost") or {}
    actual = status.get("runningSeconds")
    if not cost.get("estimatedSeconds") or not actual:
        return None
    if complete:
        return estimate_error(cost["estimatedSeconds"], actual)
    completed = int((status.get("progress") or {}).get("step") or 0)
    expected = prorated_seconds(status.get("estimate") or {}, completed_steps=completed, total_steps=total_steps)
    return estimate_error(expected, actual) if expected else None
