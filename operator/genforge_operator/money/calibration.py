"""What runs on a pool measured, kept robustly in `AcceleratorPool.status.calibration`. Pure.

A run's duration is estimated as four parts (docs/estimates.md): start-up, training,
evaluation and checkpoint writes. At the end of a successful run the trainer reports
how long each took (its termination message's `timing`); `observe_run` turns that into
one value per part that transfers to other runs on the same pool:

* `startupSeconds` — the run's running time minus its training, evaluation and
  checkpoint time: pod start → first step (imports, data and model load) and the exit,
  for one node (the rendezvous of more nodes is added by the estimate);
* `trainingFlopsPerSecond` — training FLOP/s of one accelerator in full-training units:
  the rate at which the prior's step (per-step overhead `throughput.STEP_OVERHEAD_SECONDS_*`
  + FLOPs of a step — batch × accumulation × FLOPs per sample × work factor — ÷ scaling
  efficiency), both scaled by the pool's speed (`throughput.rate_from_seconds`), takes the
  step the trainer measured (its steady-state step, `steadyStepSeconds`). FLOPs, not
  samples/s, so that one run calibrates the pool for every model;
* `evaluationFlopsPerSecond` — the same for the evaluation: samples × sampling steps ×
  FLOPs of a denoising step plus the overhead of its denoising calls
  (`throughput.SAMPLING_CALL_OVERHEAD_SECONDS_*`; held-out loss and FID features ride along);
* `checkpointSeconds` — seconds per checkpoint or final-model write.

`fold_run` adds the values to each part's recent window (`WINDOW` runs) and keeps the
median of the values within ×`OUTLIER_FACTOR` of the window's median, with the counts,
the kept range and the date.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import CalibrationPart, CalibrationSample, GenModelSpec, PoolCalibration, Resource
from . import accrual
from .throughput import (
    RunSpec,
    forward_flops_per_sample,
    prior_flops_per_second,
    processes_per_node,
    rate_from_seconds,
    rendezvous_seconds,
    sampling_calls,
    sampling_overhead_seconds,
    sampling_passes,
    scaling_efficiency,
    step_flops,
    step_overhead_seconds,
)

#: Runs kept per part; older ones fall out.
WINDOW = 9
#: Values beyond ×2 / ÷2 of the window's median are outliers (a run on a busy node, a
#: cold image cache) and are not used.
OUTLIER_FACTOR = 2.0
#: The fields of `PoolCalibration`, by the estimate part they calibrate.
FIELDS = {"startup": "startup_seconds", "training": "training_flops_per_second",
          "evaluation": "evaluation_flops_per_second", "checkpoints": "checkpoint_seconds"}


def _number(timing: Mapping[str, Any], key: str) -> float | None:
    value = timing.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)


def step_seconds(timing: Mapping[str, Any], mean: float) -> float:
    """A run's seconds per step for the pool's rate: the trainer's steady-state step
    (`steadyStepSeconds`, the median of windows' means: a busy minute in a short run is not
    the pool's speed), else the loop's mean (a trainer before it reported one)."""
    steady = _number(timing, "steadyStepSeconds")
    return steady if steady else mean


def observe_run(timing: Mapping[str, Any], *, running_seconds: float | None, pool: Resource, spec: RunSpec,
                model: GenModelSpec) -> dict[str, float]:
    """One value per part this run measured (part → value); parts it did not measure are absent."""
    out: dict[str, float] = {}
    pool_spec, hardware = pool.spec, spec.hardware
    cpu = pool_spec.accelerator.is_cpu
    prior = prior_flops_per_second(pool_spec)[0]
    training_seconds = _number(timing, "trainingSeconds")
    samples = _number(timing, "trainingSamples")
    if training_seconds and samples:
        accelerators = accrual.accelerators_on(pool_spec, hardware)
        efficiency = scaling_efficiency(hardware.nodes, processes_per_node(pool_spec, hardware.accelerators_per_node))
        training = spec.training
        steps = samples / (training.batch_size * training.gradient_accumulation * accelerators)
        out["training"] = rate_from_seconds(step_seconds(timing, training_seconds / steps),
                                            step_flops(spec, model, cpu=cpu) / efficiency,
                                            step_overhead_seconds(pool_spec), prior)
    evaluation_seconds = _number(timing, "evaluationSeconds")
    eval_samples, eval_steps = _number(timing, "evaluationSamples"), _number(timing, "inferenceSteps")
    if evaluation_seconds and eval_samples and eval_steps:
        overhead = sampling_calls(eval_samples, eval_steps) * sampling_overhead_seconds(pool_spec)
        out["evaluation"] = rate_from_seconds(evaluation_seconds,
                                              eval_samples * eval_steps * sampling_passes(model)
                                              * forward_flops_per_sample(model),
                                              overhead, prior)
    checkpoint_seconds, writes = _number(timing, "checkpointSeconds"), _number(timing, "writes")
    if checkpoint_seconds is not None and writes:
        out["checkpoints"] = checkpoint_seconds / writes
    trainer_startup = _number(timing, "startupSeconds")
    fresh = timing.get("startStep") == 0
    if fresh and running_seconds and training_seconds is not None:
        rest = running_seconds - training_seconds - (evaluation_seconds or 0.0) - (checkpoint_seconds or 0.0)
        startup = max(rest, trainer_startup or 0.0) - rendezvous_seconds(hardware.nodes)
        out["startup"] = max(0.0, startup)
    return out


def robust(values: Sequence[float]) -> tuple[float, list[float]]:
    """(median of the kept values, the kept values): values beyond ×OUTLIER_FACTOR of the
    median of all are dropped."""
    middle = statistics.median(values)
    kept = [v for v in values if middle / OUTLIER_FACTOR <= v <= middle * OUTLIER_FACTOR] or list(values)
    return statistics.median(kept), kept


def summarise(recent: Sequence[CalibrationSample]) -> CalibrationPart:
    value, kept = robust([s.value for s in recent])
    return CalibrationPart(value=round(value, 6), runs=len(recent), used=len(kept), low=round(min(kept), 6),
                           high=round(max(kept), 6), updated=max(s.at for s in recent), recent=list(recent))


def folded(calibration: PoolCalibration | None, uid: str) -> bool:
    """Whether the run with `uid` is already in the pool's calibration."""
    if calibration is None or not uid:
        return False
    parts = (getattr(calibration, name) for name in FIELDS.values())
    return any(sample.uid == uid for part in parts if part for sample in part.recent)


def fold_run(calibration: PoolCalibration | None, observed: Mapping[str, float], *, at: str,
             run: str, uid: str = "") -> PoolCalibration:
    """The pool's calibration after a run observed `observed` (part → value) at `at`.

    Idempotent per run: a run whose `uid` is already folded in changes nothing (the pool is
    written before the run's model version and status, and a reconcile retried after a
    conflict there measures the same run again)."""
    calibration = calibration or PoolCalibration()
    if folded(calibration, uid):
        return calibration
    changes = {}
    for part, value in observed.items():
        name = FIELDS[part]
        current: CalibrationPart | None = getattr(calibration, name)
        sample = CalibrationSample(round(value, 6), at, run, uid)
        recent = [*(current.recent if current else []), sample][-WINDOW:]
        changes[name] = summarise(recent)
    return dataclasses.replace(calibration, **changes)


def measured_part(pool: Resource, part: str) -> CalibrationPart | None:
    """The pool's measurement of `part`, if any run measured it."""
    calibration = pool.status.calibration if pool.status else None
    if calibration is None:
        return None
    measured = getattr(calibration, FIELDS[part])
    return measured if measured is not None and measured.value > 0 and measured.used > 0 else None
