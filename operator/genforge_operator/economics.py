"""The reconciler's view of money and time: observations in, decisions out.

A thin adapter between what the operator observes (pods, status dicts) and the pure
budget core — `cost` (the one cost model), `estimate` (durations, pool choice) and
`budget` (admission, enforcement, Budgets). No formula lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from . import cost
from .api import AccrualSegment, HardwareSpec, Resource, from_dict, to_dict
from .observe import PodRun

DEFAULT_INTERVAL = 5.0


# ------------------------------------------------------------------ accrual from pods
def _segments(raw: list[dict]) -> list[AccrualSegment]:
    return [from_dict(AccrualSegment, s, "status.segments", strict=False) for s in raw]


def sync_segments(raw: list[dict], pods: list[PodRun], pool: Resource | None, hardware: HardwareSpec,
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
    units = cost.accelerators_on(pool.spec, hardware)
    price = pool.spec.price_per_hour
    latest_end = max((cost.parse_time(s.end) for s in segments if s.end), default=None)
    finished = sorted((p for p in pods if p.start and p.end), key=lambda p: p.start)
    for pod in finished:
        if latest_end is not None and cost.parse_time(pod.end) <= latest_end:
            continue  # already accounted
        if cost.open_segment(segments) is None:
            segments = cost.sync_segments(segments, running=True, at=pod.start, pool=pool.name,
                                          accelerators=units, price_per_hour=price)
        if not _covered_after(pod, pods):
            segments = cost.sync_segments(segments, running=False, at=pod.end)
        latest_end = max(latest_end or cost.parse_time(pod.end), cost.parse_time(pod.end))
    running = [p for p in pods if p.start and not p.end and p.phase == "Running"]
    if running:
        # An open segment with other terms (a new price) is closed now, not in the past.
        at = now if cost.open_segment(segments) else min(p.start for p in running)
        segments = cost.sync_segments(segments, running=True, at=at, pool=pool.name,
                                      accelerators=units, price_per_hour=price)
    elif cost.open_segment(segments) is not None:
        ends = [p.end for p in pods if p.end]
        segments = cost.sync_segments(segments, running=False, at=max(ends) if ends else now)
    return [to_dict(s) for s in segments]


def _covered_after(pod: PodRun, pods: list[PodRun]) -> bool:
    """Whether another pod was running when `pod` finished (the run kept its accelerators)."""
    end = cost.parse_time(pod.end)
    return any(q is not pod and q.start and cost.parse_time(q.start) <= end
               and (q.end is None or cost.parse_time(q.end) > end) for q in pods)


@dataclass(frozen=True)
class Totals:
    cost: Decimal
    accelerator_seconds: float
    running_seconds: float
    rate_per_second: Decimal


def totals(raw: list[dict], now: datetime) -> Totals:
    accrual = cost.accrue(_segments(raw), now)
    return Totals(cost=accrual.cost, accelerator_seconds=float(accrual.accelerator_seconds),
                  running_seconds=float(accrual.running_seconds), rate_per_second=accrual.rate_per_second)


def observe_reconcile(kind: str, seconds: float) -> None:
    """Hook for the metrics module (reconcile latency)."""
