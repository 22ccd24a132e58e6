"""Estimates made of measured parts: what a run measures, how a pool keeps it, how the next
estimate uses it (for the same model and for others), priors, ranges and the basis."""

from __future__ import annotations

import pytest
from budget_builders import make_model, make_pool, make_run

from genforge_operator.api import CalibrationSample, PoolCalibration, to_dict
from genforge_operator.money import calibration, estimate, throughput

MODEL = make_model()  # unet2d-ddpm, 64 px, channels 32/64/64
WIDE = make_model(block_out_channels=[64, 128, 128])  # ~4× the FLOPs per sample
PER_SAMPLE = throughput.train_flops_per_sample(MODEL)
AT = "2026-11-27T18:00:00Z"


def part(e: estimate.PoolEstimate, name: str) -> estimate.Part:
    return next(p for p in e.parts if p.name == name)


def measured(**values: float) -> dict:
    """A pool's status.calibration with one run's value per part."""
    return to_dict(calibration.fold_run(None, values, at=AT, run="TrainingRun/a/first"))


# ------------------------------------------------------------------ robust summary
@pytest.mark.parametrize(("values", "value", "used"), [
    pytest.param([10.0], 10.0, 1, id="one-run"),
    pytest.param([10.0, 12.0, 11.0], 11.0, 3, id="median-of-three"),
    pytest.param([10.0, 11.0, 12.0, 60.0], 11.0, 3, id="a-slow-outlier-is-dropped"),
    pytest.param([10.0, 11.0, 12.0, 2.0], 11.0, 3, id="a-fast-outlier-is-dropped"),
])
def test_a_part_is_the_median_of_recent_runs_without_outliers(values, value, used):
    result = None
    for i, v in enumerate(values):
        result = calibration.fold_run(result, {"startup": v}, at=f"2026-11-27T18:00:0{i}Z", run=f"r{i}")
    startup = result.startup_seconds
    assert (startup.value, startup.used, startup.runs) == (value, used, len(values))
    assert startup.updated == f"2026-11-27T18:00:0{len(values) - 1}Z"
    assert result.training_flops_per_second is None


def test_the_window_keeps_the_last_runs_only():
    result = PoolCalibration()
    for i in range(calibration.WINDOW + 3):
        result = calibration.fold_run(result, {"checkpoints": float(i + 1)}, at=AT, run=f"r{i}")
    recent = result.checkpoint_seconds.recent
    assert len(recent) == calibration.WINDOW and recent[0] == CalibrationSample(4.0, AT, "r3")


# ------------------------------------------------------------------ what a run measures
CPU_OVERHEAD, GPU_OVERHEAD = throughput.STEP_OVERHEAD_SECONDS_CPU, throughput.STEP_OVERHEAD_SECONDS_ACCELERATOR


CPU_PRIOR = throughput.prior_flops_per_second(make_pool(cpu=True).spec)[0]
GPU_PRIOR = throughput.prior_flops_per_second(make_pool().spec)[0]


def rate(step_seconds: float, overhead: float, factor: float = 1.0, efficiency: float = 1.0,
         prior: float = CPU_PRIOR) -> float:
    """FLOP/s at which a 32-sample step and the prior's `overhead`, both scaled by the pool's
    speed (the prior's FLOP/s ÷ this), take `step_seconds`."""
    return (overhead * prior + 32 * PER_SAMPLE * factor / efficiency) / step_seconds


def evaluation_rate(seconds: float, overhead: float, prior: float = CPU_PRIOR) -> float:
    return (overhead * prior + EVALUATION_FLOPS) / seconds


# 16 images × 50 sampling steps: one batch, 50 denoising calls
EVALUATION_FLOPS = 16 * 50 * PER_SAMPLE / 3
CPU_SAMPLING = 50 * throughput.SAMPLING_CALL_OVERHEAD_SECONDS_CPU
GPU_SAMPLING = 50 * throughput.SAMPLING_CALL_OVERHEAD_SECONDS_ACCELERATOR
# 10,000 samples at 32 a step in 100 s: 0.32 s a step on one process
TIMING = {"startStep": 0, "startupSeconds": 4.0, "trainingSeconds": 100.0, "trainingSamples": 10_000,
          "checkpointSeconds": 3.0, "writes": 3, "evaluationSeconds": 20.0, "evaluationSamples": 16,
          "inferenceSteps": 50}


@pytest.mark.parametrize(("timing", "running", "pool", "run", "expected"), [
    pytest.param(TIMING, 130.0, make_pool(cpu=True), make_run(),
                 {"startup": 7.0, "training": rate(0.32, CPU_OVERHEAD), "checkpoints": 1.0,
                  "evaluation": evaluation_rate(20, CPU_SAMPLING)}, id="every-part"),
    pytest.param({**TIMING, "startStep": 500}, 130.0, make_pool(cpu=True), make_run(),
                 {"training": rate(0.32, CPU_OVERHEAD), "checkpoints": 1.0,
                  "evaluation": evaluation_rate(20, CPU_SAMPLING)}, id="a-resumed-run-measures-no-start-up"),
    pytest.param(TIMING, 130.0, make_pool(cpu=True), make_run(kind="FineTune", method="lora"),
                 {"startup": 7.0, "training": rate(0.32, CPU_OVERHEAD, factor=0.7), "checkpoints": 1.0,
                  "evaluation": evaluation_rate(20, CPU_SAMPLING)}, id="lora-in-full-training-units"),
    # 150 s of running, 123 s of parts: 27 s, less the rendezvous of two nodes (15 s)
    pytest.param(TIMING, 150.0, make_pool(per_node=8), make_run(per_node=8, nodes=2),
                 {"startup": 12.0,
                  # 16 processes of 32 a step: 19.5 steps of 5.12 s
                  "training": rate(5.12, GPU_OVERHEAD, efficiency=0.98**3 * 0.95, prior=GPU_PRIOR),
                  "checkpoints": 1.0, "evaluation": evaluation_rate(20, GPU_SAMPLING, GPU_PRIOR)},
                 id="per-accelerator-and-one-node-start-up"),
    pytest.param({"trainingSeconds": "x", "writes": 0}, 130.0, make_pool(cpu=True), make_run(), {},
                 id="nonsense-measures-nothing"),
    # the steady-state step (0.25 s), not the loop's mean (0.32 s: a busy minute in it)
    pytest.param({**TIMING, "steadyStepSeconds": 0.25}, 130.0, make_pool(cpu=True), make_run(),
                 {"startup": 7.0, "training": rate(0.25, CPU_OVERHEAD), "checkpoints": 1.0,
                  "evaluation": evaluation_rate(20, CPU_SAMPLING)}, id="the-steady-step-is-the-rate"),
    pytest.param({**TIMING, "steadyStepSeconds": 0}, 130.0, make_pool(cpu=True), make_run(),
                 {"startup": 7.0, "training": rate(0.32, CPU_OVERHEAD), "checkpoints": 1.0,
                  "evaluation": evaluation_rate(20, CPU_SAMPLING)}, id="no-steady-step-the-mean"),
])
def test_observe_run(timing, running, pool, run, expected):
    observed = calibration.observe_run(timing, running_seconds=running, pool=pool, spec=run.spec, model=MODEL)
    assert observed == pytest.approx(expected)


# ------------------------------------------------------------------ estimates from measured parts
CALIBRATED = make_pool(cpu=True, price="3.60", calibration=measured(
    startup=8.0, training=20e9, evaluation=30e9, checkpoints=0.5))


def test_one_run_calibrates_every_part_and_says_so():
    run = make_run(steps=1000, batch=32, evaluation={"samples": 16, "inferenceSteps": 50},
                   checkpoint={"everySteps": 250})
    e = estimate.estimate_on_pool(CALIBRATED, run.spec, MODEL)
    assert [(p.name, p.basis, p.runs) for p in e.parts] == [
        ("startup", "measured", 1), ("training", "measured", 1), ("evaluation", "measured", 1),
        ("checkpoints", "measured", 1)]
    assert part(e, "startup").seconds == 8.0
    # 1,000 steps, the first in start-up; each 32 samples' FLOPs at 20 GFLOP/s and the overhead,
    # scaled by the pool's measured speed against its prior (CPU_PRIOR)
    speed = CPU_PRIOR / 20e9
    assert part(e, "training").seconds == pytest.approx(999 * (CPU_OVERHEAD * speed + 32 * PER_SAMPLE / 20e9))
    # 50 denoising calls (16 images in one batch × 50 steps), each the overhead and its FLOPs
    assert part(e, "evaluation").seconds == pytest.approx(CPU_SAMPLING * CPU_PRIOR / 30e9 + EVALUATION_FLOPS / 30e9)
    assert part(e, "checkpoints").seconds == pytest.approx(5 * 0.5)  # 250, 500, 750; 1000; the model
    assert e.basis == ("startup measured (1 run), training measured (1 run), evaluation measured (1 run), "
                       "checkpoints measured (1 run)")


def test_a_measurement_transfers_to_a_model_of_another_size():
    run = make_run(kind="TrainingRun", steps=1000)
    small = estimate.estimate_on_pool(CALIBRATED, run.spec, MODEL)
    wide = estimate.estimate_on_pool(CALIBRATED, run.spec, WIDE)
    ratio = throughput.train_flops_per_sample(WIDE) / PER_SAMPLE
    assert 3 < ratio < 5
    assert part(wide, "training").basis == "measured"
    # the FLOPs of a step scale with the model, its overhead (the prior's, at the pool's speed) does not
    overhead = 999 * CPU_OVERHEAD * CPU_PRIOR / 20e9
    assert part(wide, "training").seconds - overhead == pytest.approx(ratio * (part(small, "training").seconds
                                                                              - overhead))


@pytest.mark.parametrize("step", [0.02, 0.06, 0.3, 2.0])
def test_the_same_model_is_estimated_at_the_step_it_measured_whatever_the_overhead_prior(step):
    # a step shorter than the prior overhead (50 ms on a CPU) too: the estimate is not clamped
    run = make_run(steps=150, batch=32)
    timing = {"startStep": 0, "trainingSeconds": 149 * step, "trainingSamples": 149 * 32, "steadyStepSeconds": step}
    pool = make_pool(cpu=True)
    observed = calibration.observe_run(timing, running_seconds=None, pool=pool, spec=run.spec, model=MODEL)
    calibrated = make_pool(cpu=True, calibration=measured(training=observed["training"]))
    for steps in (45, 450, 1500):
        longer = make_run(steps=steps, batch=32)
        assert part(estimate.estimate_on_pool(calibrated, longer.spec, MODEL), "training").seconds == \
            pytest.approx((steps - 1) * step)


def test_older_measured_samples_per_second_still_count_for_their_model():
    pool = make_pool(measured=[{"architecture": "unet2d-ddpm", "resolution": 64, "samplesPerSecond": 100.0,
                                "runs": 2}])
    e = estimate.estimate_on_pool(pool, make_run(steps=100, batch=32).spec, MODEL)
    assert (part(e, "training").basis, part(e, "training").runs) == ("measured", 2)
    assert part(e, "training").seconds == pytest.approx(99 * 0.32)  # 100 steps of 32 at 100/s, the first in start-up
    assert part(e, "startup").basis == "prior"


# ------------------------------------------------------------------ priors and ranges
@pytest.mark.parametrize(("pool", "flops", "words"), [
    pytest.param(make_pool(cpu=True, cpus=2), 2 * throughput.CPU_CORE_FLOPS, "2 vCPUs × 50 GFLOP/s",
                 id="cpu-from-its-node-size"),
    pytest.param(make_pool(cpu=True), throughput.REFERENCE_CPU_NODE_FLOPS, "the reference 8-vCPU node",
                 id="cpu-without-a-size"),
    pytest.param(make_pool(type="nvidia-tesla-a100"), 312e12 * 0.25, "nvidia-tesla-a100 312 TFLOP/s peak × 25%",
                 id="a100-from-its-datasheet"),
    pytest.param(make_pool(type="nvidia-h100-80gb", relative=0.8), 989e12 * 0.25 * 0.8,
                 "nvidia-h100-80gb 989 TFLOP/s peak × 25% × relativeThroughput 0.8", id="corrected-by-relative"),
    pytest.param(make_pool(type="acme-x1"), throughput.REFERENCE_ACCELERATOR_FLOPS, "the reference L4",
                 id="unknown-type-is-an-l4"),
])
def test_priors(pool, flops, words):
    assert throughput.prior_flops_per_second(pool.spec) == (pytest.approx(flops), words)


@pytest.mark.parametrize("pool", [
    pytest.param(make_pool(cpu=True, cpus=4), id="prior"),
    pytest.param(CALIBRATED, id="measured-once"),
])
def test_the_range_contains_the_estimate_and_is_narrower_once_measured(pool):
    e = estimate.estimate_on_pool(pool, make_run(steps=1000).spec, MODEL)
    assert e.min_seconds <= e.duration_seconds <= e.max_seconds
    assert e.min_cost <= e.cost <= e.max_cost
    spread = e.max_seconds / e.min_seconds
    # a prior part ranges ×½–×2 in its rate (the per-step overhead is not ranged): over 3×
    assert spread > 3.0 if pool is not CALIBRATED else spread < 1.4


@pytest.mark.parametrize(("steps", "every", "completed", "writes"), [
    pytest.param(1000, 500, 0, 3, id="500-1000-model"),
    pytest.param(1000, 300, 0, 5, id="300-600-900-1000-model"),
    pytest.param(1000, 1000, 0, 2, id="last-step-and-model"),
    pytest.param(1000, 300, 600, 3, id="resumed-after-600"),
])
def test_checkpoint_writes(steps, every, completed, writes):
    run = make_run(steps=steps, checkpoint={"everySteps": every})
    assert throughput.checkpoint_writes(run.spec, completed_steps=completed) == writes


# ------------------------------------------------------------------ one run, folded once
def test_a_run_is_folded_into_the_pool_once_by_its_uid():
    """The pool is written before the run's version and status: a reconcile retried after a
    conflict there measures the same run again, and must not count it twice."""
    once = calibration.fold_run(None, {"startup": 10.0, "training": 1e10}, at=AT, run="TrainingRun/a/r", uid="u-1")
    again = calibration.fold_run(once, {"startup": 10.0, "training": 1e10}, at=AT, run="TrainingRun/a/r", uid="u-1")
    assert again == once and again.startup_seconds.runs == 1
    assert calibration.folded(again, "u-1") and not calibration.folded(again, "u-2")
    # the same name, created again (another uid), is another run
    other = calibration.fold_run(again, {"startup": 12.0}, at=AT, run="TrainingRun/a/r", uid="u-2")
    assert other.startup_seconds.runs == 2 and other.training_flops_per_second.runs == 1
    # samples without a uid (written before uids were kept) never match
    assert not calibration.folded(calibration.fold_run(None, {"startup": 1.0}, at=AT, run="r"), "")



def test_guidance_doubles_the_evaluation_work_and_the_calibration_counts_it_once():
    """Classifier-free guidance runs the denoiser on twice the batch at every sampling step:
    the evaluation is estimated at twice the FLOPs, and a guided run's evaluation seconds
    are read as twice the FLOPs too (not as a pool half as fast)."""
    guided = make_model(class_dropout=0.1, guidance_scale=2.0)
    run = make_run(evaluation={"samples": 16, "inferenceSteps": 50})
    assert throughput.evaluation_work(run.spec, guided) == 2 * throughput.evaluation_work(run.spec, MODEL)
    observed = calibration.observe_run(TIMING, running_seconds=130.0, pool=make_pool(cpu=True), spec=run.spec,
                                       model=guided)
    assert observed["evaluation"] == pytest.approx((CPU_SAMPLING * CPU_PRIOR + 2 * EVALUATION_FLOPS) / 20)
