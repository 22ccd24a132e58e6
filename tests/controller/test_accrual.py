"""Accrual from pod timestamps: exact, idempotent across restarts, no gaps double-counted."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from genforge_operator import money
from genforge_operator.observe import PodRun

from .factories import make_pool, make_run

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def at(seconds: int) -> str:
    return datetime.fromtimestamp(T0.timestamp() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now(seconds: int) -> datetime:
    return datetime.fromtimestamp(T0.timestamp() + seconds, UTC)


def pod(name, start, end=None, index=0):
    return PodRun(name=name, index=index, start=at(start) if start is not None else None,
                  end=at(end) if end is not None else None, phase="Succeeded" if end is not None else "Running")


CPU = make_pool("cpu", pricePerHour="3.60")  # 0.001 $/s per node
GPU = make_pool("gpu-l4", pricePerHour="36")  # 0.01 $/s per GPU
HW = make_run().spec.hardware
HW_GPU2 = make_run(hardware={"pool": "gpu-l4", "acceleratorsPerNode": 2}).spec.hardware

CASES = {
    # name: (pool, hardware, pods, now, expected cost, expected accelerator-seconds)
    "running-cpu": (CPU, HW, [pod("a", 0)], 100, Decimal("0.1"), 100),
    "finished-cpu": (CPU, HW, [pod("a", 0, 60)], 100, Decimal("0.06"), 60),
    "gpu-2-per-node": (GPU, HW_GPU2, [pod("a", 0, 50)], 100, Decimal("1.0"), 100),
    "retry-gap-not-billed": (CPU, HW, [pod("a", 0, 30), pod("b", 50)], 100, Decimal("0.08"), 80),
    "two-finished-retries": (CPU, HW, [pod("a", 0, 30), pod("b", 50, 70)], 100, Decimal("0.05"), 50),
    "not-started": (CPU, HW, [PodRun(name="a", index=0, start=None, end=None, phase="Pending")], 100,
                    Decimal("0"), 0),
}


@pytest.mark.parametrize("pool,hardware,pods,t,expected_cost,expected_accel", CASES.values(), ids=CASES.keys())
def test_accrual_from_pods(pool, hardware, pods, t, expected_cost, expected_accel):
    segments = money.sync_run_segments([], pods, pool, hardware, now(t))
    totals = money.totals(segments, now(t))
    assert totals.cost == expected_cost
    assert totals.accelerator_seconds == expected_accel


def test_restart_recomputes_the_same_numbers():
    """Observing the same pods again (an operator restart) changes nothing."""
    pods = [pod("a", 0, 30), pod("b", 50)]
    first = money.sync_run_segments([], pods, CPU, HW, now(60))
    again = money.sync_run_segments(first, pods, CPU, HW, now(60))
    assert again == first
    later = money.sync_run_segments(first, pods, CPU, HW, now(100))
    assert money.totals(later, now(100)).cost == Decimal("0.08")


def test_operator_down_during_whole_pod_life():
    """A pod that started and finished while nobody looked is still billed exactly."""
    seen = money.sync_run_segments([], [pod("a", 0)], CPU, HW, now(10))
    pods = [pod("a", 0, 40), pod("b", 60, 90)]
    after = money.sync_run_segments(seen, pods, CPU, HW, now(200))
    assert money.totals(after, now(200)).accelerator_seconds == 70


def test_price_change_applies_from_its_time_on():
    pods = [pod("a", 0)]
    segments = money.sync_run_segments([], pods, CPU, HW, now(100))
    dearer = make_pool("cpu", pricePerHour="7.20")
    segments = money.sync_run_segments(segments, pods, dearer, HW, now(100))
    totals = money.totals(segments, now(200))
    assert totals.cost == Decimal("0.1") + Decimal("0.2")
    assert len(segments) == 2
