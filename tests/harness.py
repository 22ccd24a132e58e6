"""The emulated-cluster test harness: the real operator in a thread, a waiting helper, raw HTTP.

Fixtures in `tests/conftest.py` and `tests/integration/conftest.py` build on these; tests
import `wait_for` (and, rarely, the rest) with `from harness import wait_for`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from genforge_local import EmulatedCluster

T = TypeVar("T")

OPERATOR_MODULE = "genforge_operator.main"


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
             ignore: tuple[type[BaseException], ...] = (LookupError, TypeError), message: str = "") -> T:
    """Call `predicate` until it returns something truthy; return that.

    Exceptions in `ignore` (by default a missing key or index, or indexing None: a status not
    written yet) count as "not yet". On timeout, raises TimeoutError with the last value or
    exception, so the failure says what was seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ignore as e:
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message or 'condition'} not met within {timeout} s; last: {last!r}")
        time.sleep(interval)


class OperatorRunner:
    """The real operator, as `kopf run -A --standalone -m MODULE`, in a thread of this process.

    It talks to `cluster` through the module's `@kopf.on.login`, which honours
    `GENFORGE_API_SERVER`. `start()` returns once kopf watches every resource its handlers
    select (kopf's ready flag fires before discovery, so that is the signal); `stop()`
    stops it within about 0.5 s: kopf's exit waits are shortened, so work in flight may be
    cut short, as in a crash (kopf keeps its state in annotations; a restart resumes).
    One operator per process at a time: kopf's handler registry is process-wide.
    """

    def __init__(self, cluster: EmulatedCluster, module: str = OPERATOR_MODULE, args: tuple[str, ...] = ()):
        self.cluster, self.module, self.args = cluster, module, args
        self._runner: Any = None
        self.outputs: list[str] = []  # what each run printed (kopf's log), oldest first

    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self, timeout: float = 20.0) -> OperatorRunner:
        import kopf
        from kopf.testing import KopfRunner

        if self._runner is not None:
            raise RuntimeError("the operator is already running")
        assert self.cluster.url is not None, "start the emulated cluster first"
        os.environ["GENFORGE_API_SERVER"] = self.cluster.url
        mark = self.cluster.mark()
        _shorten_kopf_hung_task_grace()
        # Create kopf's process-wide registry here, before kopf's thread imports the operator
        # module: kopf creates it lazily without a lock, and `_watched_resources` (this thread)
        # reads it while that import runs, so two registries could be made and the module's
        # handlers — its login among them — land in the one that loses (seen in CI: every later
        # operator test then failed with kopf's fallback login).
        kopf.get_default_registry()
        settings = kopf.OperatorSettings()
        # kopf gives each object's queue 2 s to drain at exit; the tests stop the operator often,
        # and a restart re-lists everything anyway (level-based), so drain briefly.
        settings.queueing.exit_timeout = 0.2
        self._runner = KopfRunner(["run", "-A", "--standalone", *self.args, "-m", self.module],
                                  settings=settings, timeout=15)
        self._runner.__enter__()
        try:
            self._wait_watching(mark, timeout)
        except BaseException:
            self.stop(reraise=False)
            raise
        return self

    def stop(self, reraise: bool = True) -> str:
        """Stop it; returns (and keeps) what it printed. Re-raises what crashed it, if anything."""
        runner, self._runner = self._runner, None
        if runner is None:
            return ""
        # An event that arrives while kopf shuts down respawns timers, which kopf then waits
        # 5 s for: so the operator hears nothing more once it is asked to stop.
        try:
            stall = self.cluster.stall_watches(user_agent="kopf")
        except RuntimeError:  # the cluster is already gone
            stall = None
        try:
            runner.__exit__(None, None, None)
        except BaseException:
            if reraise:
                raise
        finally:
            if stall is not None:
                self.cluster.release_watches(stall)
            self.outputs.append(runner.output if runner.future.done() and not runner.future.exception() else "")
            _drop_kopf_log_handlers()
        return self.outputs[-1]

    def restart(self, timeout: float = 20.0) -> OperatorRunner:
        self.stop()
        return self.start(timeout)

    def _wait_watching(self, mark: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            future = self._runner.future
            if future.done():  # it exited during startup: say why
                result = None if future.exception() else future.result()
                why = future.exception() if result is None else result.exception
                raise RuntimeError(f"the operator exited during startup: {why!r}\n{result.output if result else ''}")
            expected = self._watched_resources()
            watched = {(r.group, r.version, r.plural) for r in self.cluster.requests(since=mark)
                       if r.verb == "watch" and r.user_agent.startswith("kopf")}
            if expected is not None and expected <= watched:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator did not start watching {sorted(expected or ())} "
                                   f"within {timeout} s; watching {sorted(watched)}")
            time.sleep(0.01)

    def _watched_resources(self) -> set[tuple[str, str, str]] | None:
        """The served resources kopf's handlers select (as kopf's own observer computes them).

        None until the operator module is imported. Uses kopf's registry internals (kopf is pinned).
        """
        import kopf

        if self.module not in sys.modules:
            return None
        registry = kopf.get_default_registry()
        selectors = (registry._indexing.get_all_selectors() | registry._watching.get_all_selectors()
                     | registry._spawning.get_all_selectors() | registry._changing.get_all_selectors())
        result = set()
        for res, info in self.cluster.resources().items():
            resource = kopf.Resource(
                group=res.group, version=res.version, plural=res.plural, kind=info.kind,
                singular=info.singular, shortcuts=frozenset(info.shortnames),
                categories=frozenset(info.categories), subresources=frozenset(info.subresources),
                namespaced=info.namespaced, verbs=frozenset(info.verbs))
            if any(selector.check(resource) for selector in selectors):
                result.add((res.group, res.version, res.plural))
        return result


HUNG_TASK_GRACE = 0.5


def _shorten_kopf_hung_task_grace() -> None:
    """At exit, kopf waits a fixed 5 s for tasks spawned while it ran (kopf 1.45.2).

    An event that arrives as the operator stops respawns a timer, which never ends by
    itself, so a stop would cost 5 s: the harness gives such tasks `HUNG_TASK_GRACE`
    before kopf cancels them (what a killed operator would do anyway).
    """
    from kopf._core.reactor import running

    if isinstance(running.aiotasks, _ShortHungTaskGrace):
        return
    running.aiotasks = _ShortHungTaskGrace(running.aiotasks)


class _ShortHungTaskGrace:
    def __init__(self, aiotasks: Any):
        self._aiotasks = aiotasks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aiotasks, name)

    async def wait(self, tasks: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        if timeout is not None:
            timeout = min(timeout, HUNG_TASK_GRACE)
        return await self._aiotasks.wait(tasks, timeout=timeout, **kwargs)


def _drop_kopf_log_handlers() -> None:
    """kopf's CLI leaves a root log handler bound to the runner's (now discarded) stderr."""
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if type(h).__name__ != "_KopfStreamHandler"]


class RawApi:
    """Plain HTTP to the emulated API server: for tests of the server's own semantics."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.warnings: list[str] = []  # the `Warning` headers of the last answer

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            url = path + ("?" + urllib.parse.urlencode(params) if params else "")
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, url, body=payload, headers={"Content-Type": content_type})
            response = conn.getresponse()
            data = response.read()
            self.warnings = response.headers.get_all("Warning") or []
            return response.status, json.loads(data) if data else None
        finally:
            conn.close()

    def watch(self, path: str, params: dict[str, str] | None = None, *, count: int,
              timeout: float = 5.0) -> list[dict[str, Any]]:
        """The first `count` events of a watch (fewer if the stream ends or `timeout` passes)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            query = urllib.parse.urlencode({"watch": "true", **(params or {})})
            conn.request("GET", f"{path}?{query}")
            response = conn.getresponse()
            return list(_take(_lines(response), count))
        finally:
            conn.close()


def _lines(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    try:
        while line := response.readline():
            yield json.loads(line)
    except TimeoutError:
        return


def _take(items: Iterator[T], count: int) -> Iterator[T]:
    for index, item in enumerate(items):
        yield item
        if index + 1 >= count:
            return


def pruned_status_fields(cluster, namespace: str, since: int = 0) -> list[str]:
    """Every status write in ``namespace`` (from request id ``since`` on) that carried fields its
    CRD does not declare.

    The API server drops such fields — the emulated one as a real one does, with a `Warning`
    header no client reads — so a status field missing from the CRD would vanish silently;
    the emulator's log of warned requests names them. Only ``status`` is checked: tests
    write specs with unknown fields on purpose."""
    return [f"{record.method} {record.path}: {warning}"
            for record in cluster.warned_requests(since)
            if record.namespace == namespace and record.subresource == "status"
            for warning in record.warnings]


def finalizer_before_job_sequence(api_client, namespace: str, spec: dict) -> list[Any]:
    """`Kube.ensure_finalizer` against an API server (emulated or real: both must give the same
    answers). A run is created; another writer adds its own finalizer, so the run body the
    reconciler holds is stale; `ensure_finalizer` must get the server's 409 for the guarded
    merge patch, read the run again and add the finalizer after the other one. Then the run
    is deleted: it stays (finalizers), and no new finalizer can be added to it (422).
    Returns what was observed at each step."""
    import kubernetes

    from genforge_operator.api import FINALIZER, GROUP, VERSION
    from genforge_operator.kube import MERGE_PATCH, Kube

    kube = Kube(api_client)
    custom = kube.custom
    body = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": "fin"}, "spec": spec})
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "fin",
                                          {"metadata": {"finalizers": ["other.example/x"]}},
                                          _content_type=MERGE_PATCH)
    seen: list[Any] = []
    stale = dict(body)
    try:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "fin", {"metadata": {
            "finalizers": [FINALIZER], "resourceVersion": body["metadata"]["resourceVersion"]}},
            _content_type=MERGE_PATCH)
        seen.append("stale patch accepted")
    except kubernetes.client.ApiException as exc:
        seen.append(exc.status)
    added = kube.ensure_finalizer("TrainingRun", stale, FINALIZER)
    seen.append(added["metadata"]["finalizers"])
    seen.append(kube.get("TrainingRun", namespace, "fin")["metadata"]["finalizers"])
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "fin")
    deleting = kube.get("TrainingRun", namespace, "fin")
    seen.append(bool(deleting["metadata"].get("deletionTimestamp")))
    try:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "fin", {"metadata": {
            "finalizers": [*deleting["metadata"]["finalizers"], "late.example/y"]}}, _content_type=MERGE_PATCH)
        seen.append("late finalizer accepted")
    except kubernetes.client.ApiException as exc:
        seen.append(exc.status)
    seen.append(kube.ensure_finalizer("TrainingRun", deleting, FINALIZER))  # None: nothing new starts for it
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "fin",
                                          {"metadata": {"finalizers": None}}, _content_type=MERGE_PATCH)
    seen.append(kube.get("TrainingRun", namespace, "fin"))
    return seen


#: What kube-apiserver answers to `finalizer_before_job_sequence` (the emulator must agree).
FINALIZER_BEFORE_JOB_ANSWERS = [409, ["other.example/x", "genforge.dev/finalizer"],
                                ["other.example/x", "genforge.dev/finalizer"], True, 422, None, None]
