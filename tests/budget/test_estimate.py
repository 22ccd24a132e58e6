"""Estimates: work, throughput (prior vs measured), duration, cost, and `pool: auto`."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from budget_builders import make_model, make_pool, make_run

from genforge_operator import formats
from genforge_operator.api import MeasuredThroughput
from genforge_operator.money import accrual, estimate, throughput

MODEL = make_model()  # unet2d-ddpm, 64 px, channels 32/64/64
# one L4 (the builders' default pool type): its published peak at the documented utilisation
PRIOR_GPU = throughput.ACCELERATOR_PEAK_FLOPS["nvidia-l4"] * throughput.MODEL_FLOPS_UTILISATION \
    / throughput.train_flops_per_sample(MODEL)
PRIOR_CPU = throughput.reference_samples_per_second(MODEL, cpu=True)
MEASURED = [{"architecture": "unet2d-ddpm", "resolution": 64, "samplesPerSecond": 100.0, "runs": 3}]


def with_overhead(samples_per_second: float, pool, batch: int = 32) -> float:
    """Samples/s of one process once each step also pays the pool's per-step overhead."""
    return batch / (throughput.step_overhead_seconds(pool.spec) + batch / samples_per_second)


def part(e: estimate.PoolEstimate, name: str) -> estimate.Part:
    return next(p for p in e.parts if p.name == name)


def train_seconds(e: estimate.PoolEstimate, pool=None, nodes=1) -> float:
    return part(e, "training").seconds


@pytest.mark.parametrize(("pool", "run", "samples"), [
    pytest.param(make_pool(), make_run(steps=100, batch=32), 3200, id="one-gpu"),
    pytest.param(make_pool(), make_run(steps=100, batch=32, accumulation=4), 12800, id="accumulation"),
    pytest.param(make_pool(per_node=8), make_run(steps=100, batch=32, nodes=2, per_node=4), 25600,
                 id="per-process-batch-on-8-gpus"),
    pytest.param(make_pool(cpu=True), make_run(steps=100, batch=32, nodes=2, per_node=4), 6400,
                 id="cpu-one-process-per-node"),
])
def test_work_is_steps_times_batch_per_process(pool, run, samples):
    assert estimate.estimate_on_pool(pool, run.spec, MODEL).samples == samples


@pytest.mark.parametrize(("pool", "per_accelerator", "source"), [
    pytest.param(make_pool(), PRIOR_GPU, "prior", id="prior-reference-gpu"),
    pytest.param(make_pool(relative=2.5), 2.5 * PRIOR_GPU, "prior", id="prior-scaled-by-relative-throughput"),
    pytest.param(make_pool(cpu=True), PRIOR_CPU, "prior", id="prior-reference-cpu-node"),
    pytest.param(make_pool(relative=2.5, measured=MEASURED), 100.0, "measured", id="measured-replaces-prior"),
    pytest.param(make_pool(measured=[{**MEASURED[0], "resolution": 128}]), PRIOR_GPU, "prior",
                 id="other-resolution-is-not-measured"),
    pytest.param(make_pool(measured=[{**MEASURED[0], "architecture": "stable-diffusion"}]), PRIOR_GPU, "prior",
                 id="other-architecture-is-not-measured"),
])
def test_throughput_prior_or_measured(pool, per_accelerator, source):
    e = estimate.estimate_on_pool(pool, make_run().spec, MODEL)
    assert e.throughput_source == source
    # a measurement is of this very step: its overhead is already in it
    expected = per_accelerator if source == "measured" else with_overhead(per_accelerator, pool)
    assert e.samples_per_second == pytest.approx(expected)


def test_duration_is_the_sum_of_its_parts_rounded_up_and_cost_uses_the_cost_model():
    pool = make_pool(measured=MEASURED, price="0.72")
    e = estimate.estimate_on_pool(pool, make_run(steps=1000, batch=32).spec, MODEL)  # 32,000 samples at 100/s
    # the first step ends start-up, 999 follow at 0.32 s; checkpoints at 500, at 1000 and the
    # final model: 3 writes; no evaluation
    assert [(p.name, p.seconds) for p in e.parts] == [
        ("startup", throughput.STARTUP_SECONDS_ACCELERATOR), ("training", pytest.approx(319.68)),
        ("evaluation", 0.0), ("checkpoints", 3 * throughput.CHECKPOINT_SECONDS_ACCELERATOR)]
    assert e.duration_seconds == math.ceil(throughput.STARTUP_SECONDS_ACCELERATOR + 319.68
                                           + 3 * throughput.CHECKPOINT_SECONDS_ACCELERATOR)
    assert e.cost == accrual.cost_of(e.duration_seconds, 1, Decimal("0.72"))


def test_more_nodes_process_more_samples_at_the_scaling_efficiency():
    pool = make_pool(per_node=8, measured=MEASURED)
    one = estimate.estimate_on_pool(pool, make_run(nodes=1, per_node=8).spec, MODEL)
    four = estimate.estimate_on_pool(pool, make_run(nodes=4, per_node=8).spec, MODEL)
    assert (four.accelerators, four.samples) == (32, 4 * one.samples)
    assert four.samples_per_second == pytest.approx(100.0 * 32 * 0.98**3 * 0.95**2)
    assert train_seconds(four, pool, 4) > train_seconds(one, pool)


@pytest.mark.parametrize(("run", "factor"), [
    pytest.param(make_run(precision="bf16"), 1.0, id="bf16"),
    pytest.param(make_run(precision="no"), 2.0, id="fp32-costs-double"),
    pytest.param(make_run(kind="FineTune", method="lora"), 0.7, id="lora"),
    pytest.param(make_run(kind="FineTune", method="full"), 1.0, id="full-finetune"),
])
def test_work_factors_scale_training_time(run, factor):
    pool = make_pool(measured=MEASURED)
    base = estimate.estimate_on_pool(pool, make_run().spec, MODEL)
    e = estimate.estimate_on_pool(pool, run.spec, MODEL)
    assert train_seconds(e, pool) == pytest.approx(factor * train_seconds(base, pool), abs=1)


def test_resumed_run_estimates_the_remaining_steps():
    pool = make_pool(measured=MEASURED)
    e = estimate.estimate_on_pool(pool, make_run(steps=1000).spec, MODEL, completed_steps=750)
    assert e.samples == 250 * 32


@pytest.mark.parametrize(("model", "low", "high"), [
    # 64 px [32, 64, 64]: a 16-px [32, 64] model ran ~250 samples/s on 2 vCPUs (docs/benchmarks.md);
    # 16× the pixels on 4× the vCPUs: ~60
    pytest.param(make_model(), 8, 100, id="tiny-ddpm-on-a-cpu-node"),
    pytest.param(make_model(resolution=32), 30, 200, id="tiny-ddpm-32px-on-a-cpu-node"),
])
def test_cpu_prior_is_plausible_for_tiny_models(model, low, high):
    """Batch 32 on the reference 8-vCPU node, the per-step overhead included."""
    pool = make_pool(cpu=True)
    assert low <= estimate.estimate_on_pool(pool, make_run(batch=32).spec, model).samples_per_second <= high


def test_stable_diffusion_unet_forward_is_about_0_8_tflop_at_512px():
    unet = throughput.unet_forward_macs(throughput.SD_UNET, 64, in_channels=4, attention=throughput.SD_ATTENTION_LEVELS,
                                      context_dim=768)
    assert 0.6e12 <= 2 * unet <= 1.0e12
    sd = make_model("stable-diffusion", 512)
    assert 5 <= throughput.reference_samples_per_second(sd, cpu=False) <= 15  # one L4, bf16


def test_bigger_models_and_resolutions_are_slower():
    small, wide, large = make_model(), make_model(block_out_channels=[64, 128, 128]), make_model(resolution=128)
    flops = [throughput.train_flops_per_sample(m) for m in (small, wide, large)]
    assert flops[0] < flops[1] and flops[0] < flops[2]


# ------------------------------------------------------------------ choosing
def est(pool: str, seconds: int, cost_: str, *, unfit: str | None = None) -> estimate.PoolEstimate:
    return estimate.PoolEstimate(pool=pool, accelerator_type="x", cpu=False, nodes=1, accelerators=1,
                                 price_per_hour=Decimal(1), currency="USD", samples=1, samples_per_second=1.0,
                                 throughput_source="prior", duration_seconds=seconds, cost=Decimal(cost_),
                                 unfit=unfit)


WALK, DRIVE, FLY = est("cpu", 36000, "4.00"), est("gpu", 3600, "2.00"), est("tpu", 600, "6.00")
TRIO = [WALK, DRIVE, FLY]


@pytest.mark.parametrize(("estimates", "limits", "pool", "reason"), [
    pytest.param(TRIO, {}, "gpu", "PoolChosen", id="cheapest-without-deadline"),
    pytest.param(TRIO, {"deadline_seconds": 7200}, "gpu", "PoolChosen", id="cheapest-meeting-deadline"),
    pytest.param(TRIO, {"deadline_seconds": 1800}, "tpu", "PoolChosen", id="tight-deadline-flies"),
    pytest.param(TRIO, {"deadline_seconds": 60}, None, "DeadlineUnreachable", id="nothing-fast-enough"),
    pytest.param(TRIO, {"deadline_seconds": 1800, "max_cost_room": Decimal(5)}, None, "EstimateExceedsMaxCost",
                 id="fast-one-too-dear"),
    pytest.param(TRIO, {"budget_room": Decimal("1.50")}, None, "InsufficientBudget", id="budget-too-small"),
    pytest.param(TRIO, {"budget_room": Decimal(3)}, "gpu", "PoolChosen", id="within-budget-room"),
    pytest.param([est("a", 3600, "2.001"), est("b", 1800, "1.999")], {}, "b", "PoolChosen",
                 id="tie-to-the-cent-goes-faster"),
    pytest.param([est("a", 60, "1", unfit="too small")], {}, None, "NoPoolFits", id="nothing-fits"),
    pytest.param([], {}, None, "NoPoolAvailable", id="no-pools"),
    pytest.param(TRIO, {"requested": "cpu", "deadline_seconds": 60}, "cpu", "PoolChosen",
                 id="named-pool-ignores-deadline"),
    pytest.param(TRIO, {"requested": "tpu", "max_cost_room": Decimal(5)}, None, "EstimateExceedsMaxCost",
                 id="named-pool-over-max-cost"),
    pytest.param(TRIO, {"requested": "nope"}, None, "PoolNotFound", id="named-pool-missing"),
])
def test_choose_pool(estimates, limits, pool, reason):
    choice = estimate.choose_pool(estimates, **limits)
    assert (choice.pool, choice.reason) == (pool, reason)


def test_choice_explains_every_alternative():
    choice = estimate.choose_pool(TRIO, deadline_seconds=7200)
    assert {e.pool: e.note for e in choice.estimates} == {
        "cpu": "misses the 2h deadline", "gpu": "chosen", "tpu": "$4.00 more than gpu"}
    assert [e.meets_deadline for e in choice.estimates] == [False, True, True]
    assert "tpu: $6.00 in 10m (" in choice.alternatives()


# ------------------------------------------------------------------ after a run
@pytest.mark.parametrize(("estimated", "actual", "error"), [
    pytest.param(1000, 1250, 0.25, id="took-longer"),
    pytest.param(1000, 800, -0.2, id="took-shorter"),
    pytest.param(1000, 1000, 0.0, id="exact"),
    pytest.param(None, 1000, None, id="no-estimate"),
])
def test_estimate_error(estimated, actual, error):
    assert estimate.estimate_error(estimated, actual) == error


def test_update_measured_keeps_a_running_mean_per_architecture_and_resolution():
    pool = make_pool().spec
    other = MeasuredThroughput("stable-diffusion", 512, 9.0, 2)
    start = [other, MeasuredThroughput("unet2d-ddpm", 64, 100.0, 3)]
    after = throughput.update_measured(start, pool=pool, spec=make_run().spec, model=MODEL, samples_per_second=200.0)
    assert after == [other, MeasuredThroughput("unet2d-ddpm", 64, 125.0, 4)]
    first = throughput.update_measured([], pool=pool, spec=make_run().spec, model=MODEL, samples_per_second=50.0)
    assert first == [MeasuredThroughput("unet2d-ddpm", 64, 50.0, 1)]


def test_a_measurement_predicts_the_same_throughput_back():
    """Normalised per accelerator and work factor, then scaled back for the same run shape."""
    pool = make_pool(per_node=8)
    run = make_run(kind="FineTune", method="lora", nodes=2, per_node=8, precision="no")
    measured = throughput.update_measured([], pool=pool.spec, spec=run.spec, model=MODEL, samples_per_second=640.0)
    measured_pool = make_pool(per_node=8, measured=[{"architecture": "unet2d-ddpm", "resolution": 64,
                                                     "samplesPerSecond": measured[0].samples_per_second}])
    again = estimate.estimate_on_pool(measured_pool, run.spec, MODEL)
    assert again.samples_per_second == pytest.approx(640.0, rel=1e-6)


@pytest.mark.parametrize(("seconds", "text"), [
    (45, "45s"), (750, "12m30s"), (11100, "3h05m"), (21 * 86400, "21d"), (12 * 86400 + 4 * 3600, "12d04h"),
    (3 * 365 * 86400 + 86400, "3y1d"),
])
def test_human_duration(seconds, text):
    assert formats.human_duration(seconds) == text
