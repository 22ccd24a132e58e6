"""The emulated API server as a running server: its own thread and event loop on 127.0.0.1.

`EmulatedCluster` loads the CRDs from a folder, serves `KubeApiEmulator` (emulator.py) on
a port, writes a kubeconfig for clients, and gives tests thread-safe access to it:
injected faults, stalled watches, the request log.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml

from .custom_resources import load_crds
from .emulator import Body, Fault, KubeApiEmulator, RequestRecord, Stall, fault_predicate


class EmulatedCluster:
    """An emulated Kubernetes API server on 127.0.0.1, in its own thread and event loop.

        cluster = EmulatedCluster(crd_dir="crds")
        url = cluster.start()            # http://127.0.0.1:PORT
        cluster.write_kubeconfig("kubeconfig")
        cluster.inject(status=500, verb="patch", resource="trainingruns", times=2)
        cluster.stop()

    Its own thread keeps it apart from the clients' loops (kopf cancels tasks it did not
    create; a shared loop breaks both at teardown).
    """

    def __init__(self, crd_dir: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, crds: Iterable[Mapping[str, Any]] = (),
                 middleware: Callable[[KubeApiEmulator, aiohttp.web.BaseRequest], Any] | None = None):
        self.crd_dir = Path(crd_dir) if crd_dir is not None else None
        # In front of the handler: `await middleware(handler, request)` (kubectl_support.KubectlSupport).
        self.middleware = middleware
        self.host, self.port = host, port
        self._extra_crds = list(crds)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.handler: KubeApiEmulator | None = None
        self.url: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; returns the base URL."""
        if self._thread is not None:
            raise RuntimeError("the emulated cluster is already started")
        crds = (load_crds(self.crd_dir) if self.crd_dir is not None else []) + self._extra_crds
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(crds,), name="genforge-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the emulated cluster did not start: {self._error!r}")
        assert self.url is not None
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> EmulatedCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, crds: list[Body]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(crds))
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self, crds: list[Body]) -> None:
        self._stopping = asyncio.Event()
        handler = KubeApiEmulator()
        for crd in crds:
            handler.register_crd(crd)
        self.handler = handler
        async with handler:
            middleware = self.middleware
            serve = handler if middleware is None else (lambda request: middleware(handler, request))
            server = aiohttp.web.Server(serve, handler_cancellation=True, access_log=None)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
            await runner.setup()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            site = aiohttp.web.SockSite(runner, sock)
            await site.start()
            self.port = sock.getsockname()[1]
            self.url = f"http://{self.host}:{self.port}"
            self._ready.set()
            try:
                await self._stopping.wait()
            finally:
                handler.close_watches()
                await asyncio.sleep(0.05)  # let the streams write their end
                await runner.cleanup()

    # --- access from other threads ---------------------------------------------------------

    def call(self, fn: Callable[[KubeApiEmulator], Any], timeout: float = 10.0) -> Any:
        """Run `fn(handler)` on the emulator's loop (thread-safe access to its state)."""
        if self._loop is None or self.handler is None:
            raise RuntimeError("the emulated cluster is not started")
        handler = self.handler

        async def run() -> Any:
            return fn(handler)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        self.call(lambda handler: handler.register_crd(crd))

    def inject(self, status: int | None = 500, *, times: int | None = 1, delay: float = 0.0,
               **criteria: Any) -> Fault:
        """Make the next `times` matching requests fail with `status` and/or answer after `delay` s.

        Criteria (all optional, see `fault_predicate`): verb, resource, namespace, name,
        subresource, user_agent (a prefix: "kopf" hits only the operator), match (a callable).
        """
        assert self.handler is not None, "start the emulated cluster first"
        return self.handler.add_fault(Fault(fault_predicate(**criteria), status=status, times=times, delay=delay))

    def stall_watches(self, **criteria: Any) -> Stall:
        """Make matching watch streams (open and future) go silent until `release_watches()`.

        Criteria as for `inject` (e.g. `user_agent="kopf"`, `resource="trainingruns"`).
        """
        stall = Stall(fault_predicate(verb="watch", **criteria))
        return self.call(lambda handler: handler.stall_watches(stall))

    def release_watches(self, *stalls: Stall) -> None:
        self.call(lambda handler: handler.release_watches(*stalls))

    def clear_faults(self, *faults: Fault) -> None:
        """Remove the given faults, or all of them."""
        assert self.handler is not None
        self.handler.remove_faults(*faults)

    def requests(self, since: int = 0) -> list[RequestRecord]:
        assert self.handler is not None
        return self.handler.requests(since)

    def warned_requests(self, since: int = 0) -> list[RequestRecord]:
        """The requests answered with `Warning` headers (e.g. unknown fields pruned), from id `since` on."""
        assert self.handler is not None
        return self.handler.warned_requests(since)

    def mark(self) -> int:
        """The id the next request will get: pass it as `since` to look only at later requests."""
        records = self.requests()
        return records[-1].id + 1 if records else 0

    def wait_for_request(self, predicate: Callable[[RequestRecord], bool], *, since: int = 0,
                         timeout: float = 10.0) -> RequestRecord:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.requests(since):
                if predicate(record):
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching request within {timeout} s")
            time.sleep(0.01)

    def resources(self) -> dict[kmock.resource, kmock.ResourceInfo]:
        """The served resource table (a copy)."""
        return self.call(lambda handler: {res: handler.resources[res] for res in handler.resources})

    # --- clients ---------------------------------------------------------------------------

    def kubeconfig(self, *, namespace: str = "default", context: str = "genforge-local") -> Body:
        if self.url is None:
            raise RuntimeError("the emulated cluster is not started")
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": "genforge-local"}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(**kwargs), sort_keys=False))
        return path
