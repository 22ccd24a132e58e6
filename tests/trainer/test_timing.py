"""The trainer's account of where a run's time went (termination message ``timing``)."""

from __future__ import annotations

import time

from genforge_trainer.timing import RunTimer, process_start_time


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
