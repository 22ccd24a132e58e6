"""Where a run's time went, for the operator's estimates (the termination message's ``timing``).

The operator estimates a run as start-up + training + evaluation + checkpoint writes
(docs/estimates.md) and calibrates each part per pool from what the trainer measured here:

* ``startupSeconds`` — process start → the end of the first training step (imports, data
  and model load, ``prepare``, rendezvous, resume, and the first step's warm-up);
* ``trainingSeconds`` and ``trainingSamples`` — the loop's time after the first step
  without checkpoint writes, and the samples it processed (all processes);
* ``checkpointSeconds`` and ``writes`` — checkpoint and final-model writes;
* ``evaluationSeconds``, ``evaluationSamples``, ``inferenceSteps`` — the evaluation (held-out
  loss, sampling, FID/KID features);
* ``steadyStepSeconds`` — the loop's steady-state seconds per step: the median of the mean
  step times of consecutive windows of ``STEP_WINDOW`` steps (``steady_step_seconds``),
  so that a busy minute during a short run (another process taking a core) does not
  become the pool's rate, while what recurs in every window (epoch starts, logging) stays;
* ``startStep`` — the step the loop began at (a resumed run's start-up is not a fresh one).
"""

from __future__ import annotations

import os
import statistics
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

_IMPORTED_AT = time.time()
#: Steps per window of ``steady_step_seconds``: long enough to hold an epoch start of the
#: demo's data (512 images ÷ batch 32) and the logging, short enough that a 150-step
#: calibration run has nine windows to take the median of.
STEP_WINDOW = 16


def steady_step_seconds(step_seconds: Sequence[float], window: int = STEP_WINDOW) -> float | None:
    """Steady-state seconds per step: the median over consecutive windows of `window` steps
    of each window's mean (a last window shorter than half of `window` joins the one before).
    Fewer than three windows: the mean of all. None without steps."""
    count = len(step_seconds)
    if count == 0:
        return None
    if count < 3 * window:
        return statistics.fmean(step_seconds)
    bounds = list(range(0, count, window))
    if count - bounds[-1] < window / 2:
        bounds.pop()
    ends = [*bounds[1:], count]
    return statistics.median(statistics.fmean(step_seconds[a:b]) for a, b in zip(bounds, ends, strict=True))


def process_start_time() -> float:
    """Wall-clock time this process started (Linux: /proc; elsewhere: when this module was imported)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22, counted after the command name
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


class RunTimer:
    """Accumulates the parts of one trainer process's run."""

    def __init__(self, started: float | None = None) -> None:
        self.started = process_start_time() if started is None else started
        self.startup: float | None = None
        self.start_step = 0
        self.seconds = {"training": 0.0, "checkpoint": 0.0, "evaluation": 0.0}
        self.writes = 0
        self.training_samples = 0
        self.evaluation_samples = 0
        self.inference_steps = 0
        self.step_seconds = array("d")  # every step after the first: 8 bytes a step

    def step_done(self, seconds: float) -> None:
        """One training step after the first took `seconds` (checkpoint writes excluded)."""
        self.step_seconds.append(seconds)

    def training_begins(self, start_step: int) -> None:
        self.startup = max(0.0, time.time() - self.started)
        self.start_step = start_step

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - begun

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "startStep": self.start_step,
            "trainingSeconds": round(self.seconds["training"], 3),
            "trainingSamples": self.training_samples,
            "checkpointSeconds": round(self.seconds["checkpoint"], 3),
            "writes": self.writes,
        }
        if self.startup is not None:
            out["startupSeconds"] = round(self.startup, 3)
        steady = steady_step_seconds(self.step_seconds)
        if steady is not None:
            out["steadyStepSeconds"] = round(steady, 6)
        if self.evaluation_samples:
            out.update(evaluationSeconds=round(self.seconds["evaluation"], 3),
                       evaluationSamples=self.evaluation_samples, inferenceSteps=self.inference_steps)
        return out
