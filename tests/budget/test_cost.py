"""The one cost model: accelerators × time × price, from segments, restart-proof."""

from __future__ import annotations

from decimal import Decimal

import pytest
from budget_builders import NOW, at, make_pool, make_run, seg, ts

from genforge_operator import formats
from genforge_operator.api import RunStatus, from_dict, to_dict
from genforge_operator.money import accrual


@pytest.mark.parametrize(("pool", "nodes", "per_node", "expected"), [
    pytest.param(make_pool(per_node=4), 1, 1, 1, id="one-gpu"),
    pytest.param(make_pool(per_node=4), 1, 4, 4, id="one-node-four-gpus"),
    pytest.param(make_pool(per_node=8), 32, 8, 256, id="multi-node-256"),
    pytest.param(make_pool(cpu=True), 1, 1, 1, id="cpu-one-node"),
    pytest.param(make_pool(cpu=True), 4, 8, 4, id="cpu-priced-per-node-ignores-per-node"),
])
def test_accelerators_on_a_pool(pool, nodes, per_node, expected):
    hardware = make_run(nodes=nodes, per_node=per_node).spec.hardware
    assert accrual.accelerators_on(pool.spec, hardware) == expected


@pytest.mark.parametrize(("pool", "per_node", "fits"), [
    pytest.param(make_pool(per_node=4), 4, True, id="exactly-full"),
    pytest.param(make_pool(per_node=4), 8, False, id="too-many-per-node"),
    pytest.param(make_pool(cpu=True), 8, True, id="cpu-pools-take-any"),
])
def test_fits_pool(pool, per_node, fits):
    assert (accrual.fits_pool(pool.spec, make_run(per_node=per_node).spec.hardware) is None) == fits


@pytest.mark.parametrize(("seconds", "accelerators", "price", "expected"), [
    pytest.param(3600, 1, "0.71", "0.71", id="one-gpu-hour"),
    pytest.param(1800, 4, "0.71", "1.42", id="half-hour-four-gpus"),
    pytest.param(3600, 256, "2.93", "750.08", id="256-a100-hour"),
    pytest.param(1, 1, "3.60", "0.001", id="one-second"),
    pytest.param(0, 8, "2.93", "0", id="nothing"),
])
def test_cost_formula(seconds, accelerators, price, expected):
    assert accrual.cost_of(seconds, accelerators, Decimal(price)) == Decimal(expected)


@pytest.mark.parametrize(("segments", "cost_", "accel_seconds", "running", "rate"), [
    pytest.param([], "0", 0, 0, "0", id="never-ran"),
    pytest.param([seg("16:00", "17:00")], "3.60", 3600, 3600, "0", id="one-closed-hour"),
    pytest.param([seg("16:00", "17:00", accelerators=8)], "28.80", 28800, 3600, "0", id="multi-gpu"),
    pytest.param([seg("17:00")], "3.60", 3600, 3600, "0.001", id="open-accrues-to-now"),
    pytest.param([seg("16:00", "17:00", price="3.60"), seg("17:00", price="7.20")], "10.80", 7200, 7200,
                 "0.002", id="price-change-mid-run"),
    pytest.param([seg("15:00", "16:00"), seg("17:00", "17:30")], "5.40", 5400, 5400, "0",
                 id="suspended-gap-not-billed"),
    pytest.param([seg("16:00", "17:00", pool="cpu", price="0.40", accelerators=2)], "0.80", 7200, 3600, "0",
                 id="cpu-nodes"),
    pytest.param([seg("18:30")], "0", 0, 0, "0.001", id="starts-in-the-future"),
])
def test_accrue(segments, cost_, accel_seconds, running, rate):
    used = accrual.accrue(segments, NOW)
    assert used.cost == Decimal(cost_)
    assert used.accelerator_seconds == accel_seconds
    assert used.running_seconds == running
    assert used.rate_per_second == Decimal(rate)


def test_restart_recomputes_the_same_numbers_from_status():
    segments = [seg("09:00", "12:00", accelerators=4, price="0.71"), seg("12:00", accelerators=4, price="0.65")]
    before = accrual.accrue(segments, NOW)
    stored = to_dict(RunStatus(segments=segments))  # what the API keeps across an operator restart
    after = accrual.accrue(from_dict(RunStatus, stored, "status").segments, NOW)
    assert after == before
    assert accrual.accrue(segments, NOW) == before  # recomputing twice counts nothing twice


@pytest.mark.parametrize(("since", "until", "expected"), [
    pytest.param(None, None, "7.20", id="whole"),
    pytest.param("17:00", None, "3.60", id="from-boundary"),
    pytest.param(None, "17:00", "3.60", id="until-boundary"),
    pytest.param("19:00", None, "0", id="after"),
])
def test_accrue_within_a_window(since, until, expected):
    segments = [seg("16:00", "18:00")]
    used = accrual.accrue(segments, NOW, since=at(since) if since else None, until=at(until) if until else None)
    assert used.cost == Decimal(expected)


GPU = {"pool": "gpu", "accelerators": 4, "price_per_hour": Decimal("0.71")}


@pytest.mark.parametrize(("before", "running", "when", "terms", "after"), [
    pytest.param([], True, "17:00", GPU, [seg("17:00", accelerators=4, price="0.71")], id="start-opens"),
    pytest.param([seg("17:00", accelerators=4, price="0.71")], True, "17:30", GPU,
                 [seg("17:00", accelerators=4, price="0.71")], id="still-running-is-idempotent"),
    pytest.param([seg("17:00", accelerators=4, price="0.71")], True, "17:30", {**GPU, "price_per_hour": Decimal("0.5")},
                 [seg("17:00", "17:30", accelerators=4, price="0.71"), seg("17:30", accelerators=4, price="0.5")],
                 id="price-change-splits"),
    pytest.param([seg("17:00", accelerators=4, price="0.71")], False, "17:45", {},
                 [seg("17:00", "17:45", accelerators=4, price="0.71")], id="stop-closes"),
    pytest.param([seg("17:00", "17:45", accelerators=4, price="0.71")], False, "17:50", {},
                 [seg("17:00", "17:45", accelerators=4, price="0.71")], id="closed-stays-closed"),
    pytest.param([seg("16:00", "17:00", accelerators=4, price="0.71")], True, "17:30", GPU,
                 [seg("16:00", "17:00", accelerators=4, price="0.71"), seg("17:30", accelerators=4, price="0.71")],
                 id="resume-opens-new"),
    pytest.param([seg("16:00", "17:00", accelerators=4, price="0.71")], True, "16:30", GPU,
                 [seg("16:00", "17:00", accelerators=4, price="0.71"), seg("17:00", accelerators=4, price="0.71")],
                 id="resume-never-overlaps"),
    pytest.param([seg("17:00", accelerators=4, price="0.71")], False, "16:00", {},
                 [seg("17:00", "17:00", accelerators=4, price="0.71")], id="close-before-start-is-empty"),
])
def test_sync_segments(before, running, when, terms, after):
    assert accrual.sync_segments(before, running=running, at=at(when), **terms) == after


def test_reprice_only_touches_the_pool_it_names():
    segments = [seg("17:00", pool="gpu", price="0.71")]
    assert accrual.reprice(segments, at=at("17:30"), pool="tpu", price_per_hour=Decimal("1")) == segments
    assert accrual.reprice(segments, at=at("17:30"), pool="gpu", price_per_hour=Decimal("1")) == [
        seg("17:00", "17:30", pool="gpu", price="0.71"), seg("17:30", pool="gpu", price="1")]


def test_time_round_trips():
    assert formats.timestamp(formats.parse_timestamp("2026-11-27T18:00:00Z")) == "2026-11-27T18:00:00Z"
    assert formats.parse_timestamp(ts("18:00")) == NOW
    assert formats.parse_timestamp(None) is None and formats.parse_timestamp("") is None
