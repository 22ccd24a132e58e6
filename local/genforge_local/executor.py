"""The local executor: the Job controller and the kubelet, for Jobs in an (emulated) API server.

It watches Jobs over plain HTTP, creates their Pod objects the way the Job controller
does, and runs each pod's container command as a local process the way a kubelet
would, writing Pod and Job status back. The decisions are pure (`jobcontrol.py`); this
module is the I/O: watches, processes, files, status writes.

What a pod's process gets (docs/contract.md, "Local mode"):

* its command from the container (`command` + `args`, `$(VAR)` expanded as the kubelet
  does), resolved on a PATH that starts with this Python's `bin/` (so `genforge-trainer`
  and `torchrun` are the ones of the current environment), run from a per-pod scratch dir;
* the executor's own environment, then the container's env (`envFrom` Secrets and
  ConfigMaps read from the API, `valueFrom.fieldRef` — completion index, pod name,
  namespace, pod IP — `secretKeyRef`, `configMapKeyRef`), then the local overrides:
  `GENFORGE_PATH_MAP` (every `volumeMount` → its local folder: ConfigMap and Secret
  volumes materialised in a per-pod temp dir, `emptyDir` a per-pod dir, a PVC a folder
  of the data dir), `GENFORGE_METRICS_HOST` (a loopback address of its own, 127.0.0.2,
  .3, …, also reported as `status.podIP`; never one that something on this host still
  holds, see `_AddressPool`), `GENFORGE_TERMINATION_LOG` (a file whose
  content becomes `state.terminated.message`, ≤ 4096 bytes; with
  `FallbackToLogsOnError`, the log's tail when the file is empty and the pod failed);
* stdout and stderr in `<data>/logs/<namespace>/<pod>.log` (the path is also the pod's
  `local.genforge.dev/log` annotation).

Multi-node (Indexed) Jobs run every index as its own process. There is no cluster DNS,
so a pod-DNS name under the pod's subdomain (`<job>-0.<svc>.<ns>.svc[.cluster.local]`,
what `MASTER_ADDR` holds) is rewritten to 127.0.0.1 — torchrun's rendezvous store
listens on every address of the index-0 process — and `MASTER_PORT` to a free port of
the Job's own, since all pods share one network namespace here. Gloo is pinned to the
loopback interface.

Stopping a process is what a kubelet does: SIGTERM to the main process, SIGKILL to its
whole process group after the pod's `terminationGracePeriodSeconds` (or at once when the
main process ends: the container is gone). Pods carry the Job controller's
`batch.kubernetes.io/job-tracking` finalizer, so a deleted pod stays visible (with its
terminated state and `finishedAt`) until its process has ended and it has been counted.

Not emulated: `restartPolicy: OnFailure` restarts in place (treated as `Never`),
`backoffLimitPerIndex`, `successPolicy`, init and sidecar containers (only the first
container runs), probes (a running container is Ready), resource limits, images.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock files, the bind probe alone
    fcntl = None  # type: ignore[assignment]

from . import jobcontrol as jc

logger = logging.getLogger(__name__)

Body = dict[str, Any]
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
NODE_NAME = "genforge-local"
HOST_IP = "127.0.0.1"
LOG_ANNOTATION = "local.genforge.dev/log"
CONFIG_RETRY_SECONDS = 2.0
DEFAULT_GRACE_SECONDS = 30
#: What the project's images run (the Dockerfile's ENTRYPOINT and CMD), by the repository's
#: last two path parts: a container without `command` runs the local command that the image
#: would (this Python's `bin/` is first on the pod's PATH), e.g. the Helm chart's operator pod.
IMAGE_ENTRYPOINTS: dict[str, tuple[list[str], list[str]]] = {
    "genforge/operator": (["genforge"], ["operator", "--all-namespaces"]),
    "genforge/trainer": (["genforge-trainer"], ["--help"]),
}
#: A pod's wildcard listen address means "every address of its own network namespace"; here
#: pods share the host's, so it becomes the pod's own loopback address.
WILDCARD_ADDRESS = "0.0.0.0"
DEFAULT_METRICS_PORT = 9090  # the trainer's, when neither the container nor this process sets one
ADDRESS_LINGER_SECONDS = 60.0  # the longest a released address waits for its pod's process group
ADDRESS_PROBES = 64  # candidates whose ports are tried before one is handed out anyway


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body!r}"[:500])
        self.status, self.body = status, body


class _Api:
    """The few API calls the executor makes, over aiohttp, with JSON bodies."""

    def __init__(self, url: str, token: str | None, ssl_context: Any = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl_context = ssl_context
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context is not None else None
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={**self.headers, "User-Agent": "genforge-local-executor"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), read_bufsize=2**22)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(self, method: str, path: str, body: Any = None, *, content_type: str = JSON,
                      params: Mapping[str, str] | None = None) -> Any:
        assert self.session is not None
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(5):
            try:
                async with self.session.request(method, self.url + path, data=data, params=params,
                                                headers={"Content-Type": content_type},
                                                timeout=aiohttp.ClientTimeout(total=30)) as response:
                    payload = await response.read()
                    parsed = json.loads(payload) if payload else None
                    if response.status >= 500 and attempt < 4:
                        await asyncio.sleep(0.1 * 2 ** attempt)
                        continue
                    if response.status >= 400:
                        raise ApiError(response.status, parsed)
                    return parsed
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.1 * 2 ** attempt)
        raise AssertionError("unreachable")

    async def get(self, path: str) -> Body | None:
        try:
            return await self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, path: str, patch: Body) -> Body | None:
        try:
            return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete(self, path: str) -> None:
        try:
            await self.request("DELETE", path, {"propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[Body]:
        assert self.session is not None
        params = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": "60",
                  "allowWatchBookmarks": "true"}
        async with self.session.get(self.url + path, params=params,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=90)) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


def _pods_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/pods"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def _jobs_path(namespace: str, name: str, sub: str | None = None) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}" + (f"/{sub}" if sub else "")


def _status_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Body:
    """A merge patch turning `old` into `new` (lists replaced whole, removed keys nulled)."""
    patch: Body = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = _status_diff(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass(eq=False)
class _Pod:
    job: _Job
    name: str
    index: int | None
    log_path: Path
    work_dir: Path
    uid: str | None = None
    body: Body | None = None
    ip: str | None = None
    process: asyncio.subprocess.Process | None = None
    start_time: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    stop_reason: str | None = None  # suspend, failed, succeeded, deleted, shutdown
    grace: float = DEFAULT_GRACE_SECONDS
    deleting: bool = False  # the Pod object has a deletionTimestamp
    gone: bool = False  # the Pod object no longer exists
    disruption: Body | None = None  # a DisruptionTarget condition (eviction)
    counted: bool = False
    released: bool = False
    ip_released: bool = False  # its address went back to the pool (freed once its process group is gone)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    stopped: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def namespace(self) -> str:
        return self.job.namespace

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


@dataclasses.dataclass(eq=False)
class _Job:
    uid: str
    namespace: str
    name: str
    body: Body
    pods: dict[str, _Pod] = dataclasses.field(default_factory=dict)
    start_time: datetime.datetime | None = None
    completion_time: datetime.datetime | None = None
    succeeded: int = 0
    failed: int = 0
    succeeded_indexes: set[int] = dataclasses.field(default_factory=set)
    last_failure: float | None = None  # monotonic
    failure: tuple[str, str] | None = None  # (reason, message) once the Job is decided Failed
    success: bool = False
    conditions: list[Body] = dataclasses.field(default_factory=list)
    status_written: Body | None = None
    deleted: bool = False
    closed: bool = False
    rendezvous_port: int | None = None
    create_blocked_until: float = 0.0  # monotonic; after a failed pod creation
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None

    def ref(self) -> Body:
        return {"apiVersion": "batch/v1", "kind": "Job", "name": self.name, "namespace": self.namespace,
                "uid": self.uid}


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """One running pod process (for tests and `genforge local`'s listing)."""

    namespace: str
    pod: str
    job: str
    index: int | None
    pid: int
    ip: str | None
    log_path: Path


# ----------------------------------------------------------------------------- the executor


class LocalExecutor:
    """Runs the pods of every Job in the API at `api_url` as local processes.

        executor = LocalExecutor("http://127.0.0.1:PORT", data_dir="/tmp/genforge")
        executor.start()    # returns once it watches Jobs and Pods
        ...
        executor.stop()     # SIGTERM every process, SIGKILL after the grace period

    `pvc_dirs` maps a claim name to its local folder (default: `<data>/volumes/<ns>/<claim>`);
    `backoff_base`/`backoff_cap` shape the delay before a failed pod is replaced (the
    Job controller's 10 s doubling to 6 min, shortened for a laptop); `shutdown_grace`
    caps each pod's grace period on `stop()`; `namespace` limits it to the Jobs of one
    namespace (tests run one executor per namespace).
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike[str], *, token: str | None = None,
                 pvc_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
                 work_dir: str | os.PathLike[str] | None = None, node_name: str = NODE_NAME,
                 backoff_base: float = 1.0, backoff_cap: float = 60.0, shutdown_grace: float = 15.0,
                 env: Mapping[str, str] | None = None, register_node: bool = True,
                 namespace: str | None = None, ssl_context: Any = None):
        self.api_url = api_url
        self.data_dir = Path(data_dir).resolve()
        self.pvc_dirs = {name: Path(path).resolve() for name, path in (pvc_dirs or {}).items()}
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="genforge-executor-")).resolve()
        self.node_name = node_name
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.shutdown_grace = shutdown_grace
        self.base_env = dict(os.environ if env is None else env)
        self.register_node = register_node
        self.namespace = namespace
        scope = f"/namespaces/{namespace}" if namespace else ""
        self._jobs_url, self._pods_url = f"/apis/batch/v1{scope}/jobs", f"/api/v1{scope}/pods"
        self._api = _Api(api_url, token, ssl_context)
        self._jobs: dict[str, _Job] = {}
        self._pods_by_uid: dict[str, _Pod] = {}
        self._ips_in_use: set[str] = set()  # the addresses of this executor's pods (from `_POOL`)
        self._address_pods: dict[str, _Pod] = {}  # address -> the pod holding it, until released
        self._distinct_ips = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._pgids: set[int] = set()  # every process group started, for the atexit safety net
        self.bin_dir = str(Path(sys.executable).parent)

    # --- lifecycle (any thread) ----------------------------------------------------------

    def start(self, timeout: float = 15.0) -> LocalExecutor:
        if self._thread is not None:
            raise RuntimeError("the executor is already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._distinct_ips = _loopback_aliases_work()
        if not self._distinct_ips:
            logger.warning("127.0.0.2 is not usable here: every pod gets 127.0.0.1, so only one trainer "
                           "at a time can serve its metrics port")
        atexit.register(self._kill_all_now)
        self._thread = threading.Thread(target=self._run, name="genforge-executor", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the local executor did not start: {self._error!r}")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop every process (SIGTERM, SIGKILL after `shutdown_grace`), then the executor."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout if timeout is not None else self.shutdown_grace + 15)
        self._thread = None
        self._kill_all_now()
        for p in list(self._address_pods.values()):  # pods whose task never finished: freed once their group is gone
            self._release_ip(p)
        atexit.unregister(self._kill_all_now)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> LocalExecutor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def processes(self) -> list[ProcessInfo]:
        """The pod processes running now."""
        return self._call(lambda: [
            ProcessInfo(p.namespace, p.name, p.job.name, p.index, p.process.pid, p.ip, p.log_path)
            for job in self._jobs.values() for p in job.pods.values()
            if p.process is not None and p.process.returncode is None])

    def evict(self, namespace: str, pod: str, timeout: float = 10.0) -> None:
        """Evict a pod as a node drain or a spot preemption would: a `DisruptionTarget`
        condition (which `podFailurePolicy` rules can `Ignore`), then graceful deletion."""
        future = asyncio.run_coroutine_threadsafe(self._evict(namespace, pod), self._require_loop())
        future.result(timeout)

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.pvc_dirs.get(claim) or self.data_dir / "volumes" / namespace / claim

    def pod_pid(self, namespace: str, pod: str) -> int | None:
        """The process id of a pod's running container (its process group), or None."""
        for p in list(self._pods_by_uid.values()):
            if p.namespace == namespace and p.name == pod and p.process is not None and not p.done.is_set():
                return p.process.pid
        return None

    def log_path(self, namespace: str, pod: str) -> Path:
        return self.data_dir / "logs" / namespace / f"{pod}.log"

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the executor is not started")
        return self._loop

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._require_loop()).result(timeout)

    def _kill_all_now(self) -> None:
        for pgid in list(self._pgids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self._pgids.discard(pgid)

    # --- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:
            self._error = e
            logger.exception("the local executor failed")
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        await self._api.open()
        try:
            if self.register_node:
                await self._register_node()
            job_rv = await self._relist_jobs()
            pod_rv = (await self._api.request("GET", self._pods_url))["metadata"]["resourceVersion"]
            watches = [asyncio.create_task(self._watch_loop(self._jobs_url, job_rv, self._on_job, self._relist_jobs)),
                       asyncio.create_task(self._watch_loop(self._pods_url, pod_rv, self._on_pod, self._relist_pods))]
            self._ready.set()
            await self._stopping.wait()
            await self._shutdown()
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
        finally:
            await self._api.close()

    async def _shutdown(self) -> None:
        self._closing = True
        pods = [p for job in self._jobs.values() for p in job.pods.values() if not p.done.is_set()]
        for p in pods:
            self._stop_pod(p, "shutdown", min(p.grace, self.shutdown_grace), delete=False)
        if pods:
            await asyncio.wait([asyncio.create_task(p.done.wait()) for p in pods],
                               timeout=self.shutdown_grace + 5)
        for job in self._jobs.values():
            if job.task is not None:
                job.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(j.task for j in self._jobs.values() if j.task), return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch_loop(self, path: str, rv: str, on_event: Callable[[str, Body], None],
                          relist: Callable[[], Any]) -> None:
        while True:
            try:
                async for event in self._api.watch(path, rv):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = await relist()
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if event.get("type") != "BOOKMARK":
                        on_event(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken stream: reconnect from where we were
                logger.debug("watch %s broke: %r; reconnecting", path, e)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    if isinstance(e, ApiError) and e.status == 410:
                        rv = await relist()

    async def _relist_jobs(self) -> str:
        listing = await self._api.request("GET", self._jobs_url)
        seen = set()
        for job in listing.get("items") or []:
            seen.add(job["metadata"]["uid"])
            self._on_job("ADDED", job)
        for uid, job in list(self._jobs.items()):
            if uid not in seen:
                self._on_job("DELETED", job.body)
        return listing["metadata"]["resourceVersion"]

    async def _relist_pods(self) -> str:
        listing = await self._api.request("GET", self._pods_url)
        seen = set()
        for pod in listing.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._on_pod("MODIFIED", pod)
        for uid, p in list(self._pods_by_uid.items()):
            if uid not in seen and p.body is not None:
                self._on_pod("DELETED", p.body)
        return listing["metadata"]["resourceVersion"]

    async def _register_node(self) -> None:
        path = f"/api/v1/nodes/{self.node_name}"
        if await self._api.get(path) is None:
            with contextlib.suppress(ApiError):
                await self._api.request("POST", "/api/v1/nodes", {
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.node_name, "labels": {
                        "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": sys.platform,
                        "node.kubernetes.io/instance-type": "local"}}})
        cpus, now = str(os.cpu_count() or 1), jc.timestamp(jc.now_utc())
        await self._api.patch(path + "/status", {"status": {
            "capacity": {"cpu": cpus, "pods": "110"}, "allocatable": {"cpu": cpus, "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "genforge local executor is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "genforge-local", "operatingSystem": sys.platform,
                         "architecture": os.uname().machine, "containerRuntimeVersion": "local-process://"}}})

    # --- Jobs ------------------------------------------------------------------------------

    def _on_job(self, kind: str, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        job = self._jobs.get(uid) if uid else None
        if kind == "DELETED":
            if job is not None and job.closed:
                self._jobs.pop(job.uid, None)
            elif job is not None:
                job.deleted = True
                job.wake.set()
            return
        if job is None:
            if not uid or jc.is_finished(obj):
                return  # finished before this executor saw it: nothing to run
            status = obj.get("status") or {}
            job = _Job(uid=uid, namespace=meta["namespace"], name=meta["name"], body=obj,
                       start_time=jc.parse_timestamp(status.get("startTime")),
                       succeeded=int(status.get("succeeded") or 0), failed=int(status.get("failed") or 0),
                       conditions=list(status.get("conditions") or []), status_written=dict(status))
            self._jobs[uid] = job
            job.task = asyncio.get_running_loop().create_task(self._job_loop(job))
        elif _newer(obj, job.body):
            job.body = obj
        job.wake.set()

    async def _job_loop(self, job: _Job) -> None:
        while not job.closed:
            await job.wake.wait()
            job.wake.clear()
            try:
                await self._sync(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("syncing Job %s/%s failed; retrying", job.namespace, job.name)
                self._wake_later(job, 1.0)
        if job.deleted:  # a finished Job stays known (late events must not start it again) until deleted
            self._jobs.pop(job.uid, None)

    def _wake_later(self, job: _Job, delay: float) -> None:
        """Sync `job` again in `delay` s (one timer per Job: the earliest wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if job.timer is not None and not job.timer.cancelled() and loop.time() <= job.timer.when() <= when:
            return
        if job.timer is not None:
            job.timer.cancel()
        job.timer = loop.call_at(when, job.wake.set)

    async def _sync(self, job: _Job) -> None:
        """One pass of the Job controller over one Job: count, decide, create or stop pods, write status."""
        spec = jc.JobSpec.of(job.body)
        now = jc.now_utc()
        if job.deleted:
            for p in job.pods.values():
                if not p.done.is_set():
                    self._stop_pod(p, "deleted", p.grace, delete=False)
            if all(p.done.is_set() for p in job.pods.values()):
                job.closed = True
            return
        if self._closing:
            return
        if job.status_written is not None and jc.is_finished({"status": job.status_written}):
            job.closed = all(p.done.is_set() for p in job.pods.values())
            return

        self._count_finished(job, spec, now)
        running = [p for p in job.pods.values() if not p.done.is_set()]
        active = [p for p in running if p.stop_reason is None]

        if job.failure is None and not job.success:
            if job.failed > spec.backoff_limit:
                job.failure = (jc.REASON_BACKOFF_LIMIT, "Job has reached the specified backoff limit")
            elif jc.completed(spec, job.succeeded, job.succeeded_indexes, len(active)):
                job.success = True
            elif (not spec.suspend and spec.active_deadline_seconds is not None and job.start_time is not None
                  and now >= job.start_time + datetime.timedelta(seconds=spec.active_deadline_seconds)):
                job.failure = (jc.REASON_DEADLINE, "Job was active longer than specified deadline")
            if job.failure is not None:
                self._event(job.ref(), "Warning", job.failure[0], job.failure[1], "job-controller")

        if job.failure is not None:
            reason, message = job.failure
            for p in active:
                self._stop_pod(p, "failed", p.grace)
            job.conditions = jc.set_condition(job.conditions, "FailureTarget", "True", reason, message, now)
            if not running:
                job.conditions = jc.set_condition(job.conditions, "Failed", "True", reason, message, now)
        elif job.success:
            for p in active:
                self._stop_pod(p, "succeeded", p.grace)
            message = "Reached expected number of succeeded pods"
            job.conditions = jc.set_condition(job.conditions, "SuccessCriteriaMet", "True",
                                              jc.REASON_COMPLETIONS_REACHED, message, now)
            if not running:
                job.completion_time = job.completion_time or now
                job.conditions = jc.set_condition(job.conditions, "Complete", "True",
                                                  jc.REASON_COMPLETIONS_REACHED, message, now)
                self._event(job.ref(), "Normal", "Completed", "Job completed", "job-controller")
        elif spec.suspend:
            for p in active:
                self._stop_pod(p, "suspend", p.grace)
            suspended = jc.condition(job.conditions, "Suspended")
            if suspended is None or suspended.get("status") != "True":
                job.conditions = jc.set_condition(job.conditions, "Suspended", "True", jc.REASON_SUSPENDED,
                                                  "Job suspended", now)
                self._event(job.ref(), "Normal", "Suspended", "Job suspended", "job-controller")
        else:
            suspended = jc.condition(job.conditions, "Suspended")
            if suspended is not None and suspended.get("status") == "True":
                job.conditions = jc.set_condition(job.conditions, "Suspended", "False", jc.REASON_RESUMED,
                                                  "Job resumed", now)
                job.start_time = now  # the activeDeadlineSeconds timer starts anew
                self._event(job.ref(), "Normal", "Resumed", "Job resumed", "job-controller")
            job.start_time = job.start_time or now
            self._create_pods(job, spec, running, active)
            if spec.active_deadline_seconds is not None:
                deadline = job.start_time + datetime.timedelta(seconds=spec.active_deadline_seconds)
                self._wake_later(job, (deadline - jc.now_utc()).total_seconds() + 0.01)

        # As the real Job controller orders it (uncountedTerminatedPods): a finished pod's
        # tracking finalizer is removed before the Job's status counts it, so a counted pod
        # never still carries it.
        await self._release_counted(job)
        await self._write_job_status(job, spec)

    def _count_finished(self, job: _Job, spec: jc.JobSpec, now: datetime.datetime) -> None:
        for p in job.pods.values():
            if not p.done.is_set() or p.counted:
                continue
            p.counted = True
            if p.succeeded:
                if p.index is not None:
                    job.succeeded_indexes.add(p.index)
                job.succeeded = len(job.succeeded_indexes) if spec.indexed else job.succeeded + 1
                continue
            if p.stop_reason in ("suspend", "succeeded", "shutdown") or p.uid is None:
                continue  # stopped by the controller (or never created): not a failure of the pod
            if job.failure is not None or p.stop_reason == "failed":
                job.failed += 1
                continue
            outcome = jc.PodOutcome(p.name, p.index, False, p.exit_code, container=self._container_name(job),
                                    conditions=(p.disruption,) if p.disruption else ())
            verdict = jc.judge_failure(spec.pod_failure_rules, outcome, job.namespace)
            if verdict.action == "Ignore":
                continue
            job.failed += 1
            job.last_failure = time.monotonic()
            if verdict.action == "FailJob":
                job.failure = (jc.REASON_POD_FAILURE_POLICY, verdict.message)

    @staticmethod
    def _container_name(job: _Job) -> str:
        containers = ((job.body.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
        return str(containers[0].get("name", ""))

    def _create_pods(self, job: _Job, spec: jc.JobSpec, running: list[_Pod], active: list[_Pod]) -> None:
        if spec.wait_for_terminating and len(running) > len(active):
            return  # podReplacementPolicy: Failed — the replaced pod must be gone first
        if job.create_blocked_until > time.monotonic():
            self._wake_later(job, job.create_blocked_until - time.monotonic())
            return
        if job.last_failure is not None:
            delay = jc.backoff_delay(job.failed, self.backoff_base, self.backoff_cap)
            wait = job.last_failure + delay - time.monotonic()
            if wait > 0:
                self._wake_later(job, wait)
                return
        wanted = jc.pods_wanted(spec, succeeded=job.succeeded, succeeded_indexes=job.succeeded_indexes,
                                running_indexes=[p.index for p in active], running=len(active))
        for index in wanted:
            name = jc.pod_name(job.name, index)
            while name in job.pods:
                name = jc.pod_name(job.name, index)
            pod = _Pod(job=job, name=name, index=index, log_path=self.log_path(job.namespace, name),
                       work_dir=self.work_dir / job.namespace / name)
            job.pods[name] = pod
            pod.task = self._spawn(self._run_pod(pod))

    def _job_status(self, job: _Job, spec: jc.JobSpec) -> Body:
        running = [p for p in job.pods.values() if not p.done.is_set()]
        active = [p for p in running if p.stop_reason is None]
        status: Body = {
            "active": len(active),
            "ready": sum(1 for p in active if p.process is not None),
            "terminating": len(running) - len(active),
            "succeeded": job.succeeded,
            "failed": job.failed,
            "conditions": job.conditions,
        }
        for key in ("active", "succeeded", "failed"):
            if not status[key]:
                del status[key]
        if not status["conditions"]:
            del status["conditions"]
        if job.start_time is not None:
            status["startTime"] = jc.timestamp(job.start_time)
        if job.completion_time is not None:
            status["completionTime"] = jc.timestamp(job.completion_time)
        if spec.indexed and job.succeeded_indexes:
            status["completedIndexes"] = jc.compress_indexes(job.succeeded_indexes)
        return status

    async def _write_job_status(self, job: _Job, spec: jc.JobSpec) -> None:
        status = self._job_status(job, spec)
        if status == job.status_written:
            return
        patch = _status_diff(job.status_written or {}, status)
        result = await self._api.patch(_jobs_path(job.namespace, job.name, "status"), {"status": patch})
        job.status_written = copy.deepcopy(status)
        if result is not None and _newer(result, job.body):
            job.body = result

    async def _release_counted(self, job: _Job) -> None:
        """Drop the tracking finalizer of pods already counted in the Job's status."""
        for p in list(job.pods.values()):
            if p.counted and not p.released:
                p.released = True
                await self._release(p)
            if p.released and (p.gone or p.uid is None):
                job.pods.pop(p.name, None)

    async def _release(self, p: _Pod) -> None:
        if p.gone or p.uid is None:
            return
        current = await self._api.get(_pods_path(p.namespace, p.name))
        if current is None or (current.get("metadata") or {}).get("uid") != p.uid:
            return
        finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != jc.TRACKING_FINALIZER]
        await self._api.patch(_pods_path(p.namespace, p.name), {"metadata": {
            "finalizers": finalizers or None, "resourceVersion": current["metadata"]["resourceVersion"]}})

    # --- Pods: watch -----------------------------------------------------------------------

    def _on_pod(self, kind: str, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        p = self._pods_by_uid.get(meta.get("uid", ""))
        if p is None:
            return
        if kind == "DELETED":
            p.gone = True
            self._pods_by_uid.pop(meta["uid"], None)
            # Not its address: its process may still be ending (a forced deletion does not
            # wait); `_run_container` gives that back once the process has ended.
            if not p.done.is_set():
                self._stop_pod(p, "deleted", p.grace, delete=False)
            p.job.wake.set()
            return
        p.body = obj
        if meta.get("deletionTimestamp") and not p.deleting:
            p.deleting = True
            if not p.done.is_set():
                self._stop_pod(p, "deleted", p.grace, delete=False)
            p.job.wake.set()

    async def _evict(self, namespace: str, name: str) -> None:
        p = next((p for job in self._jobs.values() for p in job.pods.values()
                  if p.namespace == namespace and p.name == name), None)
        if p is None:
            raise LookupError(f"no pod {namespace}/{name} is run by this executor")
        now = jc.timestamp(jc.now_utc())
        p.disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                        "message": "Eviction API: evicting", "lastTransitionTime": now}
        if p.body is not None:
            conditions = [c for c in (p.body.get("status") or {}).get("conditions") or []
                          if c.get("type") != "DisruptionTarget"] + [p.disruption]
            await self._api.patch(_pods_path(namespace, name, "status"), {"status": {"conditions": conditions}})
        await self._api.delete(_pods_path(namespace, name))

    # --- Pods: the kubelet -------------------------------------------------------------------

    def _stop_pod(self, p: _Pod, reason: str, grace: float, *, delete: bool = True) -> None:
        """Stop a pod's process gracefully (and, as the Job controller does, delete the Pod)."""
        if p.stop_reason is None:
            p.stop_reason = reason
        if p.stopped.is_set():
            return
        p.stopped.set()
        if delete and not p.deleting and not p.gone:
            p.deleting = True
            self._spawn(self._delete_pod(p))
        if p.process is not None and p.process.returncode is None:
            self._event(self._pod_ref(p), "Normal", "Killing", f"Stopping container {self._container_name(p.job)}",
                        "kubelet")
            with contextlib.suppress(ProcessLookupError):
                p.process.send_signal(signal.SIGTERM)
            asyncio.get_running_loop().call_later(grace, self._kill_group, p)

    async def _delete_pod(self, p: _Pod) -> None:
        while p.uid is None and not p.done.is_set():  # still being created
            await asyncio.sleep(0.05)
        if p.uid is not None:
            await self._api.delete(_pods_path(p.namespace, p.name))
            self._event(p.job.ref(), "Normal", "SuccessfulDelete", f"Deleted pod: {p.name}", "job-controller")

    def _kill_group(self, p: _Pod) -> None:
        if p.process is None or p.process.pid not in self._pgids:
            return  # never started, or already reaped (its pid may belong to someone else now)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.process.pid, signal.SIGKILL)

    def _pod_ref(self, p: _Pod) -> Body:
        return {"apiVersion": "v1", "kind": "Pod", "name": p.name, "namespace": p.namespace, "uid": p.uid}

    def _allocate_ip(self, ports: Iterable[int] = (), owner: object = None) -> str:
        """A loopback address of the pod's own on which `ports` bind now (see `_AddressPool`)."""
        if not self._distinct_ips:
            taken = [port for port in ports if not _port_free(HOST_IP, port)]
            if taken:
                logger.warning("%s:%s is taken and every pod gets %s here: this pod cannot serve on it",
                               HOST_IP, ",".join(map(str, taken)), HOST_IP)
            return HOST_IP
        ip = _POOL.acquire(ports, owner=owner)
        self._ips_in_use.add(ip)
        return ip

    def _release_ip(self, p: _Pod) -> None:
        """Give the pod's address back; the pool frees it once the pod's whole process group is gone."""
        if p.ip is None or p.ip_released:
            return
        p.ip_released = True
        self._ips_in_use.discard(p.ip)
        if self._address_pods.get(p.ip) is p:
            del self._address_pods[p.ip]
        if p.ip != HOST_IP:
            _POOL.release(p.ip, p.process.pid if p.process is not None else None, owner=p)

    def _pod_ports(self, container: Body) -> list[int]:
        """The ports the container will listen on at its pod address: its TCP `containerPort`s and
        the trainer's metrics port (`GENFORGE_METRICS_PORT` of the container, else of this
        process's environment, else 9090)."""
        ports = [port.get("containerPort") for port in container.get("ports") or []
                 if (port.get("protocol") or "TCP") == "TCP"]
        metrics = next((e.get("value") for e in container.get("env") or []
                        if e.get("name") == "GENFORGE_METRICS_PORT" and "value" in e),
                       self.base_env.get("GENFORGE_METRICS_PORT"))
        try:
            ports.append(int(metrics) if metrics is not None else DEFAULT_METRICS_PORT)
        except ValueError:
            ports.append(DEFAULT_METRICS_PORT)
        return [port for port in ports if isinstance(port, int) and 0 < port < 65536]

    async def _run_container(self, p: _Pod) -> None:
        """The kubelet's part for a pod bound here: prepare (retrying config errors), run, report."""
        try:
            await self._run_container_once(p)
        finally:
            self._release_ip(p)  # its main process has ended (or never started, or the task was cancelled)

    async def _run_container_once(self, p: _Pod) -> None:
        spec = (p.body or {}).get("spec") or {}
        p.grace = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        container = (spec.get("containers") or [{}])[0]
        p.start_time = jc.now_utc()
        await self._write_pod_status(p, container, "Pending", {"waiting": {"reason": "ContainerCreating"}})
        launch = None
        while launch is None and p.stop_reason is None:
            try:
                launch = await self._prepare(p, container)
            except jc.ConfigError as e:
                await self._write_pod_status(p, container, "Pending",
                                             {"waiting": {"reason": e.reason, "message": e.message}})
                self._event(self._pod_ref(p), "Warning", "Failed", e.message, "kubelet")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.stopped.wait(), CONFIG_RETRY_SECONDS)
        if launch is None:  # stopped before its container started
            p.exit_code, p.reason = 137, "ContainerStatusUnknown"
            p.message = "The container could not be located when the pod was terminated"
        else:
            await self._execute(p, container, *launch)
        p.finished_at = p.finished_at or jc.now_utc()
        if not p.gone:
            await self._write_pod_status(p, container, "Succeeded" if p.succeeded else "Failed",
                                         self._terminated(p))

    async def _run_pod(self, p: _Pod) -> None:
        job = p.job
        try:
            await self._create_pod_object(p)
            if p.uid is None:
                return
            await self._run_container(p)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("running pod %s/%s failed", p.namespace, p.name)
            if p.exit_code is None:
                p.exit_code, p.reason = 128, "StartError"
        finally:
            if p.process is not None:
                self._kill_group(p)
                self._pgids.discard(p.process.pid)
            self._release_ip(p)
            p.done.set()
            p.stopped.set()
            job.wake.set()
            if job.closed or job.deleted:  # nobody will count it: let it go
                p.released = True
                with contextlib.suppress(Exception):
                    await self._release(p)
            shutil.rmtree(p.work_dir, ignore_errors=True)

    async def _create_pod_object(self, p: _Pod) -> None:
        job = p.job
        while True:
            body = jc.build_pod(job.body, p.index, p.name, self.node_name)
            body["metadata"].setdefault("annotations", {})[LOG_ANNOTATION] = str(p.log_path)
            try:
                created = await self._api.request("POST", _pods_path(job.namespace), body)
            except ApiError as e:
                if e.status == 409:  # a name clash: draw another suffix
                    del job.pods[p.name]
                    p.name = jc.pod_name(job.name, p.index)
                    p.log_path = self.log_path(job.namespace, p.name)
                    p.work_dir = self.work_dir / job.namespace / p.name
                    job.pods[p.name] = p
                    continue
                self._event(job.ref(), "Warning", "FailedCreate", f"Error creating: {e}", "job-controller")
                p.exit_code, p.reason, p.message = None, "FailedCreate", str(e)
                job.create_blocked_until = time.monotonic() + CONFIG_RETRY_SECONDS
                return
            break
        p.body, p.uid = created, created["metadata"]["uid"]
        self._pods_by_uid[p.uid] = p
        self._event(job.ref(), "Normal", "SuccessfulCreate", f"Created pod: {p.name}", "job-controller")
        self._event(self._pod_ref(p), "Normal", "Scheduled",
                    f"Successfully assigned {p.namespace}/{p.name} to {self.node_name}", "default-scheduler")

    async def _prepare(self, p: _Pod, container: Body) -> tuple[list[str], dict[str, str], Path]:
        """The argv, environment and working directory of the pod's container (ConfigError: not yet)."""
        assert p.body is not None
        pod = copy.deepcopy(p.body)
        spec = pod.get("spec") or {}
        if p.ip is None:
            p.ip = self._allocate_ip(self._pod_ports(container), owner=p)
            self._address_pods[p.ip] = p
        pod["status"] = {"podIP": p.ip, "hostIP": HOST_IP}
        p.work_dir.mkdir(parents=True, exist_ok=True)
        path_map = await self._mount_volumes(p, spec, container)
        config_maps, secrets_ = await self._env_sources(p.namespace, container)
        env = jc.container_env(pod, container, config_maps=config_maps, secrets_=secrets_,
                               cpu_count=os.cpu_count() or 1)
        self._localise_network(p, spec, env)
        argv = jc.container_argv(_with_entrypoint(container), env)
        if not argv:
            raise jc.ConfigError("CreateContainerError",
                                 f"the container has no command and image {container.get('image')!r} has no local "
                                 f"stand-in (known: {', '.join(sorted(IMAGE_ENTRYPOINTS))})")
        if p.ip and p.ip != HOST_IP:
            argv = [part.replace(WILDCARD_ADDRESS, p.ip) for part in argv]
            env = {key: value.replace(WILDCARD_ADDRESS, p.ip) for key, value in env.items()}
        termination_log = p.work_dir / "termination-log"
        termination_log.write_bytes(b"")
        process_env = dict(self.base_env)
        process_env.update(env)
        process_env.update({
            "HOSTNAME": spec.get("hostname") or p.name,
            "GENFORGE_PATH_MAP": json.dumps(path_map),
            "GENFORGE_METRICS_HOST": p.ip,
            "GENFORGE_TERMINATION_LOG": str(termination_log),
            "PATH": os.pathsep.join([self.bin_dir, process_env.get("PATH", os.defpath)]),
        })
        working_dir = container.get("workingDir")
        cwd = Path(_map_path(working_dir, path_map)) if working_dir else p.work_dir
        if not cwd.is_dir():
            cwd = p.work_dir
        return argv, process_env, cwd

    def _localise_network(self, p: _Pod, spec: Body, env: dict[str, str]) -> None:
        """No cluster DNS and one shared network namespace: pod-DNS names → loopback, own rendezvous port."""
        subdomain = spec.get("subdomain")
        if subdomain:
            pattern = re.compile(rf"\b[a-z0-9]([-a-z0-9]*[a-z0-9])?\.{re.escape(subdomain)}\."
                                 rf"{re.escape(p.namespace)}\.svc(\.cluster\.local)?\b")
            for key, value in env.items():
                env[key] = pattern.sub(HOST_IP, value)
        if "MASTER_PORT" in env and "MASTER_ADDR" in env:
            if p.job.rendezvous_port is None:
                p.job.rendezvous_port = _free_port()
            env["MASTER_PORT"] = str(p.job.rendezvous_port)
            if sys.platform.startswith("linux"):
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")

    async def _mount_volumes(self, p: _Pod, spec: Body, container: Body) -> dict[str, str]:
        local: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            target = p.work_dir / "volumes" / name
            if "configMap" in volume or "secret" in volume:
                await self._materialise(p.namespace, volume, target)
            elif "projected" in volume:
                for source in volume["projected"].get("sources") or []:
                    if "configMap" in source or "secret" in source:
                        await self._materialise(p.namespace, source, target)
                    elif "serviceAccountToken" in source:
                        await self._project_token(p, spec, source["serviceAccountToken"], target)
                    elif "downwardAPI" in source:
                        self._project_downward(p, source["downwardAPI"], target)
                target.mkdir(parents=True, exist_ok=True)
            elif "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                target = self.claim_dir(p.namespace, volume["persistentVolumeClaim"]["claimName"])
                target.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                target = Path(volume["hostPath"]["path"])
            else:
                raise jc.ConfigError("ContainerCreating", f"volume {name!r}: this kind of volume is not supported "
                                                          "by the local executor")
            local[name] = target
        path_map: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in local:
                raise jc.ConfigError("CreateContainerConfigError", f"volume {mount['name']!r} is not defined")
            target = local[mount["name"]] / mount.get("subPath", "")
            if mount.get("subPath"):
                target.mkdir(parents=True, exist_ok=True)
            path_map[mount["mountPath"]] = str(target)
        return path_map

    async def _project_token(self, p: _Pod, spec: Body, source: Body, target: Path) -> None:
        """A projected ServiceAccount token, bound to the pod (TokenRequest), as the kubelet writes it."""
        account = spec.get("serviceAccountName") or "default"
        request: Body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": int(source.get("expirationSeconds") or 3607),
                                  "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": p.name, "uid": p.uid}}}
        if source.get("audience"):
            request["spec"]["audiences"] = [source["audience"]]
        try:
            answer = await self._api.request(
                "POST", f"/api/v1/namespaces/{p.namespace}/serviceaccounts/{account}/token", request)
        except ApiError as e:
            raise jc.ConfigError("ContainerCreating", f"MountVolume.SetUp failed: cannot get a token for "
                                                      f"serviceaccount {account!r}: {e}") from e
        path = target / source.get("path", "token")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(answer["status"]["token"])

    def _project_downward(self, p: _Pod, source: Body, target: Path) -> None:
        meta = (p.body or {}).get("metadata") or {}
        for item in source.get("items") or []:
            field = (item.get("fieldRef") or {}).get("fieldPath", "")
            value = {"metadata.namespace": p.namespace, "metadata.name": p.name,
                     "metadata.uid": p.uid or ""}.get(field)
            if value is None and field.startswith(("metadata.labels", "metadata.annotations")):
                kind = "labels" if field.startswith("metadata.labels") else "annotations"
                value = "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(kind) or {}).items()))
            if value is not None:
                path = target / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(value)

    async def _materialise(self, namespace: str, source: Body, target: Path) -> None:
        """A ConfigMap or Secret volume (source) as files in `target`."""
        kind = "configMap" if "configMap" in source else "secret"
        ref = source[kind]
        name = ref.get("name") or ref.get("secretName", "")
        data = await self._read_data(namespace, kind, name)
        target.mkdir(parents=True, exist_ok=True)
        if data is None:
            if ref.get("optional"):
                return
            raise jc.ConfigError("ContainerCreating", f'MountVolume.SetUp failed: {kind.lower()} "{name}" not found')
        items = ref.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise jc.ConfigError("ContainerCreating", f"MountVolume.SetUp failed: key {item['key']!r} "
                                                          f"not found in {kind} {name!r}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])

    async def _read_data(self, namespace: str, kind: str, name: str) -> dict[str, bytes] | None:
        plural = "configmaps" if kind == "configMap" else "secrets"
        obj = await self._api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        if obj is None:
            return None
        data: dict[str, bytes] = {}
        if plural == "configmaps":
            data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return data

    async def _env_sources(self, namespace: str, container: Body) -> tuple[dict, dict]:
        names: dict[str, set[str]] = {"configMap": set(), "secret": set()}
        for source in container.get("envFrom") or []:
            for kind, ref in (("configMap", source.get("configMapRef")), ("secret", source.get("secretRef"))):
                if ref:
                    names[kind].add(ref.get("name", ""))
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            for kind, ref in (("configMap", source.get("configMapKeyRef")), ("secret", source.get("secretKeyRef"))):
                if ref:
                    names[kind].add(ref.get("name", ""))
        found: dict[str, dict[str, dict[str, str] | None]] = {"configMap": {}, "secret": {}}
        for kind, wanted in names.items():
            for name in wanted:
                data = await self._read_data(namespace, kind, name)
                found[kind][name] = None if data is None else {k: v.decode(errors="replace") for k, v in data.items()}
        return found["configMap"], found["secret"]

    async def _execute(self, p: _Pod, container: Body, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        executable = shutil.which(argv[0], path=env.get("PATH")) if os.sep not in argv[0] else argv[0]
        p.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(p.log_path, "ab") as log:
            try:
                if executable is None:
                    raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
                p.process = await asyncio.create_subprocess_exec(
                    executable, *argv[1:], env=env, cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                p.started_at = p.finished_at = jc.now_utc()
                p.exit_code, p.reason = 128, "StartError"
                p.message = f"failed to start container {container.get('name')!r}: {e}"
                log.write(f"{p.message}\n".encode())
                self._event(self._pod_ref(p), "Warning", "Failed", p.message, "kubelet")
                return
        self._pgids.add(p.process.pid)
        p.started_at = jc.now_utc()
        self._event(self._pod_ref(p), "Normal", "Started", f"Started container {container.get('name')}", "kubelet")
        if p.stopped.is_set():  # stopped while it was starting
            p.stopped.clear()
            self._stop_pod(p, p.stop_reason or "deleted", p.grace, delete=False)
        else:
            await self._write_pod_status(p, container, "Running", {"running": {"startedAt": jc.timestamp(p.started_at)}})
            p.job.wake.set()  # `ready` changed
        returncode = await p.process.wait()
        p.finished_at = jc.now_utc()
        self._kill_group(p)  # the container ends with its main process
        self._pgids.discard(p.process.pid)
        p.exit_code = jc.exit_code_of(returncode)
        p.reason = "Completed" if p.exit_code == 0 else "Error"
        written = (p.work_dir / "termination-log").read_bytes() if (p.work_dir / "termination-log").exists() else b""
        p.message = jc.termination_message(written, _tail(p.log_path), failed=p.exit_code != 0,
                                           policy=container.get("terminationMessagePolicy"))

    def _terminated(self, p: _Pod) -> Body:
        terminated: Body = {"exitCode": p.exit_code if p.exit_code is not None else 137, "reason": p.reason}
        if p.started_at is not None:
            terminated["startedAt"] = jc.timestamp(p.started_at)
        if p.finished_at is not None:
            terminated["finishedAt"] = jc.timestamp(p.finished_at)
        if p.message:
            terminated["message"] = p.message
        if p.process is not None:
            terminated["containerID"] = f"local://{p.process.pid}"
        return {"terminated": terminated}

    async def _write_pod_status(self, p: _Pod, container: Body, phase: str, state: Body) -> None:
        now = jc.timestamp(jc.now_utc())
        running = phase == "Running"
        started = jc.timestamp(p.start_time or jc.now_utc())
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True" if p.ip else "False", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "Ready", "status": "True" if running else "False", "lastTransitionTime": now,
             **({} if running else {"reason": "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"})},
            {"type": "ContainersReady", "status": "True" if running else "False", "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
        ]
        if p.disruption:
            conditions.append(p.disruption)
        status: Body = {
            "phase": phase, "conditions": conditions, "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "startTime": started,
            "containerStatuses": [{
                "name": container.get("name", ""), "image": container.get("image", ""), "imageID": "",
                "ready": running, "started": running, "restartCount": 0, "state": state,
                **({"containerID": f"local://{p.process.pid}"} if p.process is not None else {}),
            }],
        }
        if p.ip:
            status.update(podIP=p.ip, podIPs=[{"ip": p.ip}])
        if not ((p.body or {}).get("status") or {}).get("qosClass"):
            status["qosClass"] = "BestEffort"  # a real API server sets it at creation
        try:
            result = await self._api.patch(_pods_path(p.namespace, p.name, "status"), {"status": status})
        except ApiError as e:
            logger.warning("could not write the status of pod %s/%s: %s", p.namespace, p.name, e)
            return
        if result is not None and not p.gone:
            p.body = result

    # --- events ------------------------------------------------------------------------------

    def _event(self, involved: Body, type_: str, reason: str, message: str, component: str) -> None:
        """Post an Event (fire and forget: events are best effort, as in Kubernetes)."""
        if not involved.get("uid") or asyncio.get_running_loop().is_closed():
            return
        now = jc.timestamp(jc.now_utc())
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{involved['name']}.{jc.random_suffix(10)}", "namespace": involved["namespace"]},
                "involvedObject": involved, "reason": reason, "message": message, "type": type_,
                "source": {"component": component, **({"host": self.node_name} if component == "kubelet" else {})},
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                "reportingComponent": component, "reportingInstance": self.node_name}

        async def post() -> None:
            with contextlib.suppress(Exception):
                await self._api.request("POST", f"/api/v1/namespaces/{involved['namespace']}/events", body)

        self._spawn(post())


# ----------------------------------------------------------------------------- helpers


def _newer(obj: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `obj` is a later version than `than` (the emulator's resourceVersions are integers)."""
    try:
        return int(obj["metadata"]["resourceVersion"]) >= int(than["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True


def _map_path(path: str, path_map: Mapping[str, str]) -> str:
    best = max((m for m in path_map if path == m or path.startswith(m.rstrip("/") + "/")), key=len, default=None)
    if best is None:
        return path
    return os.path.join(path_map[best], path[len(best):].lstrip("/"))


def _tail(path: Path, size: int = 8192) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST_IP, 0))
        return int(sock.getsockname()[1])


def _loopback_aliases_work() -> bool:
    """Whether 127.0.0.2 can be bound (Linux: all of 127/8 is local; macOS needs aliases)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


def image_repository(image: str) -> str:
    """`ghcr.io/genforge/operator:0.1.0@sha256:…` → `genforge/operator` (its last two path parts)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return "/".join(name.split("/")[-2:])


def _with_entrypoint(container: Body) -> Body:
    """The container with the command its image would run, when it sets none itself."""
    if container.get("command"):
        return container
    known = IMAGE_ENTRYPOINTS.get(image_repository(str(container.get("image") or "")))
    if known is None:
        return container
    entrypoint, cmd = known
    return {**container, "command": list(entrypoint), "args": list(container.get("args") or cmd)}


def _port_free(ip: str, port: int) -> bool:
    """Whether `ip:port` binds right now, without SO_REUSEADDR: nothing listens there and no
    connection of an earlier listener lingers (TIME_WAIT, FIN_WAIT, …)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((ip, port))
        return True
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still exists (its sockets close only once it has exited)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _AddressPool:
    """The pod addresses (127.0.0.2, .3, …) of every executor in this process.

    In a cluster a pod IP is the pod's alone; here every pod shares the host's loopback, so
    an address is handed out only when

    * no executor of this process holds it: one numbering for all of them, so a restarted
      plane, a second executor or the kubelet do not start again at 127.0.0.2;
    * no other process on this host holds it (another `genforge local`, a test run): a lock
      file per address in `lock_dir`, `flock`ed while the address is held (the kernel drops
      the lock when the holder dies);
    * every port the pod will listen on binds there right now (`_port_free`), so nothing the
      pools do not know of is in the way: a trainer orphaned by a killed plane, a process
      that left its pod's process group, connections of an earlier pod still closing.

    A released address stays held until its pod's process group is gone — SIGKILL is
    asynchronous and a dying process keeps its sockets until it has exited — or, at most,
    `linger` seconds (then the bind probe still guards it). When `probes` candidates in a
    row have a port taken (something listens on 0.0.0.0 at that port), the first of them is
    handed out with a warning: the trainer then serves elsewhere or not at all, it does not fail.
    """

    FIRST, LAST = 2, 0xFFFFFE

    def __init__(self, lock_dir: str | os.PathLike[str] | None = None, *,
                 linger: float = ADDRESS_LINGER_SECONDS, probes: int = ADDRESS_PROBES):
        default = Path(tempfile.gettempdir()) / f"genforge-pod-addresses-{os.getuid()}"
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default
        self.linger, self.probes = linger, probes
        self._lock = threading.Lock()
        self._next = self.FIRST
        self._held: dict[str, tuple[int | None, object]] = {}  # address -> (its lock file's fd, owner)
        self._draining: dict[str, tuple[float, int]] = {}  # released, group alive -> (give up at, pgid)
        self._lock_dir_warned = False

    @staticmethod
    def _address(n: int) -> str:
        return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def acquire(self, ports: Iterable[int] = (), *, owner: object = None) -> str:
        wanted = sorted({port for port in ports if 0 < port < 65536})
        with self._lock:
            self._reclaim()
            fallback: tuple[str, int | None] | None = None
            probed = 0
            for _ in range(self.probes * 256):  # skipping held ones; never a walk over all of 127/8
                n = self._next
                self._next = self.FIRST if n >= self.LAST else n + 1
                ip = self._address(n)
                if n & 255 in (0, 255) or ip in self._held:
                    continue
                locked, fd = self._try_lock(ip)
                if not locked:
                    continue  # another process on this host holds it
                if all(_port_free(ip, port) for port in wanted):
                    if fallback is not None:
                        self._unlock(*fallback)
                    self._held[ip] = (fd, owner)
                    return ip
                if fallback is None:
                    fallback = (ip, fd)
                else:
                    self._unlock(ip, fd)
                probed += 1
                if probed >= self.probes:
                    break
            if fallback is None:
                raise RuntimeError("no free loopback address for a pod: every candidate is held")
            ip, fd = fallback
            logger.warning("port(s) %s are taken on %d loopback addresses in a row (something listens on "
                           "0.0.0.0?): pod address %s is handed out anyway, its server cannot listen there",
                           ",".join(map(str, wanted)), probed, ip)
            self._held[ip] = (fd, owner)
            return ip

    def release(self, ip: str, pgid: int | None, *, owner: object = None) -> None:
        """`ip`'s pod has ended; free it once process group `pgid` is gone (None: it never started)."""
        with self._lock:
            if ip not in self._held or self._held[ip][1] is not owner or ip in self._draining:
                return
            if pgid is not None and _group_alive(pgid):
                self._draining[ip] = (time.monotonic() + self.linger, pgid)
            else:
                self._free(ip)

    def reclaim(self) -> None:
        """Free the released addresses whose process groups are gone (`acquire` does it first)."""
        with self._lock:
            self._reclaim()

    def _reclaim(self) -> None:
        now = time.monotonic()
        for ip, (deadline, pgid) in list(self._draining.items()):
            if not _group_alive(pgid):
                self._free(ip)
            elif now >= deadline:
                logger.warning("process group %d of the pod on %s outlived its pod by %.0f s; the address is "
                               "free again for a pod whose ports bind there", pgid, ip, self.linger)
                self._free(ip)

    def _free(self, ip: str) -> None:
        self._draining.pop(ip, None)
        fd, _owner = self._held.pop(ip)
        self._unlock(ip, fd)

    def _try_lock(self, ip: str) -> tuple[bool, int | None]:
        """(False, None): another process holds `ip`; (True, fd or None without lock files)."""
        if fcntl is None:
            return True, None
        path = self.lock_dir / ip
        try:
            self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            if not self._lock_dir_warned:
                self._lock_dir_warned = True
                logger.warning("cannot lock pod addresses in %s (%s): other processes on this host are not "
                               "told which addresses this one uses (the bind probe still guards them)",
                               self.lock_dir, e)
            return True, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                raise BlockingIOError  # its last holder unlinked it meanwhile: someone may hold the new one
        except OSError:
            os.close(fd)
            return False, None
        return True, fd

    def _unlock(self, ip: str, fd: int | None) -> None:
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_dir / ip)  # while still locked: see `_try_lock`'s inode check
        os.close(fd)


_POOL = _AddressPool()
