"""A work queue of re-checks, deduplicated per object: the operator's "requeue after".

    calls = DelayedCalls(workers=8)
    calls.schedule(("TrainingRun", "team-a", "run-1"), 2.0, reconcile, ...)   # in 2 s
    calls.schedule(("TrainingRun", "team-a", "run-1"), 0.1, reconcile, ...)   # sooner: replaces it
    calls.schedule(("TrainingRun", "team-a", "run-1"), 5.0, reconcile, ...)   # later: ignored

The shape of client-go's workqueue: a key is queued at most once and processed by one worker
at a time; a key scheduled again while queued is not queued twice, and one scheduled while
it is being processed runs once more afterwards (it may have changed meanwhile). One thread
keeps a heap of due times. So a burst of events about one object (its pod's status changing
several times a second) becomes one call, and thousands of pending re-checks cost a heap
entry each, not a thread each.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("genforge")


class DelayedCalls:
    def __init__(self, workers: int, name: str = "genforge-recheck"):
        self._mutex = threading.Lock()
        # Two conditions on one lock: a new item wakes one worker, a sooner due time the timer
        # thread — not every thread on every call (at load that herd was a tenth of the
        # operator's time, all of it waiting for this lock).
        self._lock = threading.Condition(self._mutex)  # the timer waits on this one
        self._work = threading.Condition(self._mutex)  # the workers on this one
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # keys waiting in the heap -> their due time
        self._calls: dict[Hashable, Callable[[], Any]] = {}  # the latest call asked for each key
        self._queue: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._again: set[Hashable] = set()  # became due while running: once more afterwards
        self._order = itertools.count()
        self._closed = False
        threading.Thread(target=self._timer, name=f"{name}-timer", daemon=True).start()
        for i in range(workers):
            threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True).start()

    def schedule(self, key: Hashable, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn(*args)` in `delay` seconds, unless a call for `key` is already due sooner.
        The caller's context variables go with the call."""
        due = time.monotonic() + max(0.0, delay)
        context = contextvars.copy_context()  # kopf's event-posting settings live in context variables
        with self._lock:
            if self._closed:
                return
            self._calls[key] = lambda: context.run(fn, *args)
            if key in self._queued or (key in self._due and self._due[key] <= due):
                return
            if delay <= 0:
                self._due.pop(key, None)
                self._enqueue(key)
                return
            self._due[key] = due
            sooner = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, next(self._order), key))
            if sooner:
                self._lock.notify()

    def close(self) -> None:
        """Drop what is pending and let the threads end (calls running now finish)."""
        with self._lock:
            self._closed = True
            self._heap.clear()
            self._due.clear()
            self._queue.clear()
            self._queued.clear()
            self._again.clear()
            self._lock.notify_all()
            self._work.notify_all()

    def due_in(self, key: Hashable) -> float | None:
        """Seconds until `key`'s call is due (0 when queued or running), None when none is pending."""
        with self._lock:
            if key in self._queued or key in self._running:
                return 0.0
            due = self._due.get(key)
            return None if due is None else max(0.0, due - time.monotonic())

    def pending(self) -> int:
        """Keys waiting for their time, queued or running."""
        with self._lock:
            return len(self._due.keys() | self._queued | self._running)

    def _enqueue(self, key: Hashable) -> None:  # with the lock held
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._work.notify()

    def _timer(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due, _, key = heapq.heappop(self._heap)
                    if self._due.get(key) == due:  # not replaced by a sooner one
                        del self._due[key]
                        self._enqueue(key)
                self._lock.wait(self._heap[0][0] - now if self._heap else None)

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._work.wait()
                if self._closed:
                    return
                key = self._queue.popleft()
                self._queued.discard(key)
                self._running.add(key)
                call = self._calls[key]
            try:
                call()
            except Exception:  # the next event or periodic re-check retries
                log.exception("re-check of %s failed", key)
            finally:
                with self._lock:
                    self._running.discard(key)
                    if key in self._again:
                        self._again.discard(key)
                        self._enqueue(key)
                    elif key not in self._due and key not in self._queued:
                        self._calls.pop(key, None)
