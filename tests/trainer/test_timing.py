"""The trainer's account of where a run's time went (termination message ``timing``)."""

from __future__ import annotations

import time

import pytest

from genforge_trainer.timing import STEP_WINDOW, RunTimer, process_start_time, steady_step_seconds


def test_process_start_is_in_the_past_and_not_before_boot():
    started = process_start_time()
    assert time.time() - 3600 * 24 * 365 < started <= time.time()


def test_parts_accumulate_and_the_report_names_them():
    timer = RunTimer(started=time.time() - 5.0)
    timer.training_begins(start_step=7)
    with timer.part("checkpoint"):
        time.sleep(0.01)
    with timer.part("checkpoint"):
        time.sleep(0.01)
    timer.writes, timer.training_samples = 2, 640
    report = timer.report()
    assert report["startStep"] == 7 and report["writes"] == 2 and report["trainingSamples"] == 640
    assert 5.0 <= report["startupSeconds"] < 60 and report["checkpointSeconds"] >= 0.02
    assert "evaluationSeconds" not in report  # no evaluation ran


def test_an_evaluation_is_reported_with_its_images_and_steps():
    timer = RunTimer(started=time.time())
    with timer.part("evaluation"):
        time.sleep(0.01)
    timer.evaluation_samples, timer.inference_steps = 16, 25
    report = timer.report()
    assert (report["evaluationSamples"], report["inferenceSteps"]) == (16, 25)
    assert report["evaluationSeconds"] >= 0.01 and "startupSeconds" not in report


W = STEP_WINDOW


@pytest.mark.parametrize(("steps", "expected"), [
    pytest.param([], None, id="no-steps"),
    pytest.param([0.1, 0.2, 0.3], 0.2, id="under-three-windows-the-mean"),
    pytest.param([0.1] * (3 * W - 2) + [0.4], (0.1 * (3 * W - 2) + 0.4) / (3 * W - 1), id="still-the-mean"),
    # nine windows, two of them slow (another process took a core for a while): the quiet ones
    pytest.param([0.1] * (7 * W) + [0.5] * (2 * W), 0.1, id="busy-windows-are-not-the-rate"),
    # a slow step in every window (an epoch start) recurs in every run: it stays in the rate
    pytest.param(([0.1] * (W - 1) + [0.9]) * 9, 0.15, id="what-every-window-has-stays"),
    # a short tail (under half a window) joins the window before; a longer one is a window
    pytest.param([0.1] * (3 * W) + [1.0] * (W // 2 - 1), 0.1, id="a-short-tail-joins"),
    pytest.param([0.2] * (3 * W) + [1.0] * W + [0.1] * W, 0.2, id="median-of-five"),
])
def test_steady_step_is_the_median_of_window_means(steps, expected):
    result = steady_step_seconds(steps)
    assert result == (None if expected is None else pytest.approx(expected))


def test_the_report_carries_the_steady_step_once_steps_ran():
    timer = RunTimer(started=time.time())
    assert "steadyStepSeconds" not in timer.report()
    for seconds in [0.1] * (8 * W) + [2.0] * W:
        timer.step_done(seconds)
    assert timer.report()["steadyStepSeconds"] == pytest.approx(0.1)
