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
* ``startStep`` — the step the loop began at (a resumed run's start-up is not a fresh one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_IMPORTED_AT = time.time()


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
        if self.evaluation_samples:
            out.update(evaluationSeconds=round(self.seconds["evaluation"], 3),
                       evaluationSamples=self.evaluation_samples, inferenceSteps=self.inference_steps)
        return out
