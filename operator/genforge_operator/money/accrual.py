"""The one cost model: prices, accelerators and time → money. Pure.

Every number genforge shows or enforces comes from here: `genforge estimate`, admission,
live accrual, enforcement, Budgets and metrics.

* A run on a pool holds `nodes × acceleratorsPerNode` accelerators. CPU pools are priced
  per node, so there the run holds `nodes` (one "accelerator" per node).
* Cost of a stretch of time = seconds × accelerators × pricePerHour / 3600, in `Decimal`.
* A run's accrued cost is the sum over its **accrual segments** (`status.segments`):
  stretches during which it held a fixed number of accelerators at a fixed price. A
  price change closes the open segment and opens one at the new price from that moment;
  a stop or suspension closes it; a resume opens a new one. An open segment (no `end`)
  accrues up to `now`.
* Accrued cost, accelerator-seconds and running seconds are always *recomputed* from
  the segments' timestamps, never incremented: an operator restart loses nothing and
  counts nothing twice.

Timestamps in segments are RFC 3339 UTC strings with second resolution (what the
kubelet reports for pods); `now` is an aware `datetime` (naive ones are taken as UTC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..api import AcceleratorPoolSpec, AccrualSegment, HardwareSpec
from ..formats import parse_timestamp, timestamp

SECONDS_PER_HOUR = Decimal(3600)
ZERO = Decimal(0)


# ------------------------------------------------------------------ time
def seconds_between(start: datetime, end: datetime) -> Decimal:
    """Exact seconds from `start` to `end` (negative if `end` is earlier)."""
    delta = end - start
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / Decimal(1_000_000)


# ------------------------------------------------------------------ prices
def accelerators_on(pool: AcceleratorPoolSpec, hardware: HardwareSpec) -> int:
    """How many priced units a run holds on `pool`: accelerators, or nodes on a CPU pool."""
    if pool.accelerator.is_cpu:
        return hardware.nodes
    return hardware.nodes * hardware.accelerators_per_node


def fits_pool(pool: AcceleratorPoolSpec, hardware: HardwareSpec) -> str | None:
    """Why `hardware` cannot run on `pool`, or None when it can."""
    if not pool.accelerator.is_cpu and hardware.accelerators_per_node > pool.accelerator.per_node:
        return (f"needs {hardware.accelerators_per_node} accelerators per node, "
                f"the pool's nodes have {pool.accelerator.per_node}")
    return None


def cost_of(seconds: Decimal | float | int, accelerators: int, price_per_hour: Decimal) -> Decimal:
    """THE cost formula: seconds × accelerators × price per accelerator-hour."""
    return Decimal(str(seconds)) * accelerators * price_per_hour / SECONDS_PER_HOUR


def rate_per_second(accelerators: int, price_per_hour: Decimal) -> Decimal:
    """Money per second while `accelerators` are held at `price_per_hour`."""
    return accelerators * price_per_hour / SECONDS_PER_HOUR


# ------------------------------------------------------------------ segments
def open_segment(segments: Sequence[AccrualSegment]) -> AccrualSegment | None:
    return next((s for s in reversed(segments) if s.end is None), None)


def sync_segments(
    segments: Sequence[AccrualSegment],
    *,
    running: bool,
    at: datetime | str,
    pool: str | None = None,
    accelerators: int = 0,
    price_per_hour: Decimal | None = None,
) -> list[AccrualSegment]:
    """Bring the segments in line with what is observed. Level-based and idempotent.

    `running=True`: the run holds `accelerators` on `pool` at `price_per_hour`. An open
    segment with exactly these terms is kept; one with other terms (a price change, a
    different pool or size) is closed at `at` and a new one opens at `at`; with none
    open, one opens at `at` (pass the pods' start time).
    `running=False`: any open segment is closed at `at` (pass the pods' finish time).

    Time never runs backwards: a close before its segment's start closes it empty, and
    an open before the previous segment's end starts at that end, so no second is
    counted twice. Returns a new list; the input is not modified.
    """
    moment = parse_timestamp(at)
    out = list(segments)
    current = open_segment(out)
    if running:
        if pool is None or price_per_hour is None or accelerators < 1:
            raise ValueError("a running run needs a pool, accelerators >= 1 and a price")
        if current and (current.pool, current.accelerators, current.price_per_hour) == (
                pool, accelerators, price_per_hour):
            return out
    if current is not None:
        out = _close(out, current, moment)
    if not running:
        return out
    latest_end = max((parse_timestamp(s.end) for s in out if s.end), default=None)
    if latest_end is not None and moment < latest_end:
        moment = latest_end
    out.append(AccrualSegment(start=timestamp(moment), pool=pool, accelerators=accelerators,
                              price_per_hour=price_per_hour))
    return out


def close_segments(segments: Sequence[AccrualSegment], at: datetime | str) -> list[AccrualSegment]:
    """Close the open segment (a stop, a suspension, the end of the run) at `at`."""
    return sync_segments(segments, running=False, at=at)


def reprice(segments: Sequence[AccrualSegment], *, at: datetime | str, pool: str,
            price_per_hour: Decimal) -> list[AccrualSegment]:
    """A new price for `pool` from `at` on; segments on other pools are left alone."""
    current = open_segment(segments)
    if current is None or current.pool != pool:
        return list(segments)
    return sync_segments(segments, running=True, at=at, pool=pool,
                         accelerators=current.accelerators, price_per_hour=price_per_hour)


def _close(segments: list[AccrualSegment], segment: AccrualSegment, at: datetime) -> list[AccrualSegment]:
    end = max(at, parse_timestamp(segment.start))
    closed = dataclasses.replace(segment, end=timestamp(end))
    return [closed if s is segment else s for s in segments]


# ------------------------------------------------------------------ accrual
def _bounds(segment: AccrualSegment, now: datetime) -> tuple[datetime, datetime]:
    start = parse_timestamp(segment.start)
    end = parse_timestamp(segment.end) if segment.end else max(parse_timestamp(now), start)
    return start, max(end, start)


def _clip(start: datetime, end: datetime, lo: datetime | None, hi: datetime | None) -> Decimal:
    if lo is not None and start < lo:
        start = lo
    if hi is not None and end > hi:
        end = hi
    return max(ZERO, seconds_between(start, end))


@dataclass(frozen=True)
class Accrual:
    """What a run has used so far, recomputed from its segments."""

    cost: Decimal
    accelerator_seconds: Decimal
    running_seconds: Decimal  # wall-clock seconds with at least one segment open (overlaps once)
    rate_per_second: Decimal  # money per second of the open segment(s): the burn rate now

    @property
    def running(self) -> bool:
        return self.rate_per_second > 0


def accrue(segments: Iterable[AccrualSegment], now: datetime, *, since: datetime | None = None,
           until: datetime | None = None) -> Accrual:
    """Cost, accelerator-seconds and running seconds of `segments` up to `now`.

    `since`/`until` restrict the sum to that window (a Budget period): a run straddling a
    boundary counts only the part of each segment inside it.
    """
    now = parse_timestamp(now)
    cost = accel = ZERO
    rate = ZERO
    spans: list[tuple[datetime, datetime]] = []
    for segment in segments:
        start, end = _bounds(segment, now)
        seconds = _clip(start, end, since, until)
        cost += cost_of(seconds, segment.accelerators, segment.price_per_hour)
        accel += seconds * segment.accelerators
        if seconds > 0:
            lo = max(start, since) if since else start
            hi = min(end, until) if until else end
            spans.append((lo, hi))
        if segment.end is None:
            rate += rate_per_second(segment.accelerators, segment.price_per_hour)
    return Accrual(cost=cost, accelerator_seconds=accel, running_seconds=_union_seconds(spans),
                   rate_per_second=rate)


def _union_seconds(spans: list[tuple[datetime, datetime]]) -> Decimal:
    total = ZERO
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            if current is not None:
                total += seconds_between(*current)
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += seconds_between(*current)
    return total


def accrued_cost(segments: Iterable[AccrualSegment], now: datetime) -> Decimal:
    return accrue(segments, now).cost


def accelerator_seconds(segments: Iterable[AccrualSegment], now: datetime) -> Decimal:
    return accrue(segments, now).accelerator_seconds


def running_seconds(segments: Iterable[AccrualSegment], now: datetime) -> Decimal:
    return accrue(segments, now).running_seconds
