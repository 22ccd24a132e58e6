"""The re-check queue: one pending call per object, a sooner one replaces a later one, a burst
becomes one call, and an object changed while its call runs is called once more."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
from harness import wait_for

from genforge_operator.delayed import DelayedCalls

KEY = ("TrainingRun", "team-a", "run-1")
MADE: list[DelayedCalls] = []


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    while MADE:
        MADE.pop().close()


def queue(workers: int) -> DelayedCalls:
    calls = DelayedCalls(workers=workers)
    MADE.append(calls)
    return calls


class Recorder:
    def __init__(self, hold: threading.Event | None = None):
        self.calls: list[tuple[str, float]] = []
        self.hold = hold
        self.started = threading.Event()

    def __call__(self, label: str) -> None:
        self.started.set()
        if self.hold is not None:
            self.hold.wait(5)
        self.calls.append((label, time.monotonic()))


def test_a_burst_of_requests_is_one_call():
    calls, rec = queue(2), Recorder()
    for i in range(50):
        calls.schedule(KEY, 0.2, rec, f"event-{i}")
    wait_for(lambda: rec.calls, timeout=5, message="the call ran")
    time.sleep(0.4)
    assert [label for label, _ in rec.calls] == ["event-49"]  # once, with the latest arguments
    assert calls.pending() == 0


def test_a_sooner_request_replaces_a_later_one_and_a_later_one_is_ignored():
    calls, rec = queue(2), Recorder()
    start = time.monotonic()
    calls.schedule(KEY, 5.0, rec, "late")
    calls.schedule(KEY, 0.1, rec, "soon")
    calls.schedule(KEY, 3.0, rec, "later again")
    wait_for(lambda: rec.calls, timeout=5, message="the call ran")
    assert rec.calls[0][1] - start < 2.0
    time.sleep(0.3)
    assert len(rec.calls) == 1 and calls.pending() == 0  # the 5 s and 3 s requests were covered


def test_a_request_while_the_call_runs_runs_once_more_afterwards():
    hold = threading.Event()
    calls, rec = queue(4), Recorder(hold)
    calls.schedule(KEY, 0, rec, "first")
    assert rec.started.wait(5)
    for i in range(5):  # while it runs: not in parallel, once afterwards
        calls.schedule(KEY, 0, rec, f"during-{i}")
    time.sleep(0.2)
    assert rec.calls == []
    hold.set()
    wait_for(lambda: len(rec.calls) == 2, timeout=5, message="called again")
    time.sleep(0.3)
    assert [label for label, _ in rec.calls] == ["first", "during-4"]


def test_different_objects_run_in_parallel_and_a_failure_does_not_stop_the_queue():
    calls = queue(2)
    seen: list[str] = []
    variable = contextvars.ContextVar("variable", default="unset")

    def boom():
        raise RuntimeError("transient")

    calls.schedule(("Dataset", "a", "d"), 0, boom)
    variable.set("the caller's")
    calls.schedule(KEY, 0.05, lambda: seen.append(variable.get()))
    wait_for(lambda: seen, timeout=5, message="the second call ran")
    assert seen == ["the caller's"]  # context variables travel with the call (kopf's posting settings)


def test_a_closed_queue_calls_nothing_more():
    calls, rec = queue(2), Recorder()
    calls.schedule(KEY, 0.2, rec, "never")
    calls.close()
    calls.schedule(KEY, 0, rec, "after close")
    time.sleep(0.5)
    assert rec.calls == [] and calls.pending() == 0
