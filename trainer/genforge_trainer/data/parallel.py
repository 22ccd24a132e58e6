"""An order-preserving, bounded process-pool map for the preparation pipeline.

``multiprocessing.Pool.imap`` would do, except that its feeder thread drains the whole
input at once; here at most ``window`` chunks are in flight, so memory stays bounded
however large the source is, and results still come back in input order (which makes
deduplication, file names and the content hash deterministic).

Workers come from a ``forkserver`` (a clean process that imports the pipeline once, then
forks cheaply): no locks or threads inherited from the parent (the progress HTTP server,
OpenCV's thread pool), and no re-import per worker as with ``spawn``. The parent's
environment is handed to each worker explicitly, because the fork server is started once
per interpreter and would otherwise keep the environment of that moment
(``GENFORGE_PATH_MAP``, storage credentials).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV = "GENFORGE_PREPARE_WORKERS"
_PRELOAD = ["genforge_trainer.data.process", "cv2", "ai_edge_litert.interpreter"]  # imported once, shared by every worker (a missing one is skipped)


def available_cpus() -> int:
    """CPUs this process may use: affinity, bounded by a cgroup v2/v1 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.5)))
    return max(1, count)


def _cgroup_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with (
            open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fq,
            open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fp,
        ):
            quota_us, period_us = int(fq.read()), int(fp.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def default_workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        return max(1, int(raw))
    return available_cpus()


def _init_worker(environ: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environ)
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core already
    except ImportError:  # pragma: no cover - cv2 is a trainer dependency
        pass


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def ordered_map(
    fn: Callable[[list[T]], list[R]],
    items: Iterable[T],
    *,
    workers: int,
    chunk_size: int = 8,
    window: int | None = None,
) -> Iterator[R]:
    """``fn`` over chunks of ``items``, flattened, in input order.

    ``workers <= 1`` runs in this process. Closing the iterator early (``break``) cancels
    the chunks not yet started and waits only for those running.
    """
    chunks = chunked(items, chunk_size)
    if workers <= 1:
        for chunk in chunks:
            yield from fn(chunk)
        return
    window = window or workers * 3
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(dict(os.environ),)
    )
    pending: collections.deque[Future[list[R]]] = collections.deque()
    try:
        for chunk in islice(chunks, window):
            pending.append(executor.submit(fn, chunk))
        while pending:
            results = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(executor.submit(fn, nxt))
            yield from results
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
