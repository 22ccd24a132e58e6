"""A node whose pods are local processes: what the executor and the kubelet share.

`LocalNode` is the kubelet's part of `LocalExecutor` (executor.py: with the home-made Job
controller, for the emulated API server) and so of `LocalKubelet` (kubelet.py: for a real
kube-apiserver): a thread with its own event loop, watches that reconnect, and each pod's
container run as a local process the way a kubelet runs it, its status written back.

What a pod's process gets (docs/contract.md, "Local mode"):

* its command from the container (`command` + `args`, `$(VAR)` expanded as the kubelet
  does), resolved on a PATH that starts with this Python's `bin/` (so `genforge-trainer`
  and `torchrun` are the ones of the current environment), run from a per-pod scratch dir;
* the executor's own environment, then the container's env (`envFrom` Secrets and
  ConfigMaps read from the API, `valueFrom.fieldRef` — completion index, pod name,
  namespace, pod IP — `secretKeyRef`, `configMapKeyRef`), then the local overrides:
  `GENFORGE_PATH_MAP` (every `volumeMount` → its local folder: ConfigMap and Secret
  volumes materialised in a per-pod temp dir, downward-API volumes written there too,
  `emptyDir` a per-pod dir, a PVC a folder
  of the data dir), `GENFORGE_METRICS_HOST` (a loopback address of its own, 127.0.0.2,
  .3, …, also reported as `status.podIP`; never one that something on this host still
  holds, see pod_addresses.py), `GENFORGE_TERMINATION_LOG` (a file whose
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
main process ends: the container is gone).

Not emulated: init and sidecar containers (only the first container runs), probes (a
running container is Ready), resource limits, images.
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from . import jobcontrol as jc
from .api_client import ApiClient, ApiError, Body, pods_path
from .pod_addresses import POOL, loopback_aliases_work, port_free

logger = logging.getLogger(__name__)

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

# ----------------------------------------------------------------------------- state


@dataclasses.dataclass(eq=False)
class TrackedPod:
    """What the node knows of one pod it runs: its Pod object, process, address and outcome."""

    job: TrackedJob
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
class TrackedJob:
    """A Job the executor controls (counts, conditions, back-off), or for the kubelet the pods of
    one owner (they share a rendezvous port)."""

    uid: str
    namespace: str
    name: str
    body: Body
    pods: dict[str, TrackedPod] = dataclasses.field(default_factory=dict)
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


class LocalNode:
    """Runs the pods bound to it as local processes (the kubelet's part). Use a subclass:
    `LocalExecutor` (the emulated API server) or `LocalKubelet` (a real one).

    `pvc_dirs` maps a claim name to its local folder (default: `<data>/volumes/<ns>/<claim>`);
    `shutdown_grace` caps each pod's grace period on `stop()`; `namespace` limits it to the
    pods of one namespace; `bin_dir` is the folder put first on every pod's PATH (default: this
    Python's, so that the images' commands run this checkout's `genforge-trainer`; a benchmark
    can point it at stand-ins).
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike[str], *, token: str | None = None,
                 pvc_dirs: Mapping[str, str | os.PathLike[str]] | None = None,
                 work_dir: str | os.PathLike[str] | None = None, node_name: str = NODE_NAME,
                 shutdown_grace: float = 15.0, env: Mapping[str, str] | None = None,
                 namespace: str | None = None, ssl_context: Any = None,
                 bin_dir: str | os.PathLike[str] | None = None):
        self.api_url = api_url
        self.data_dir = Path(data_dir).resolve()
        self.pvc_dirs = {name: Path(path).resolve() for name, path in (pvc_dirs or {}).items()}
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="genforge-executor-")).resolve()
        self.node_name = node_name
        self.shutdown_grace = shutdown_grace
        self.base_env = dict(os.environ if env is None else env)
        self.namespace = namespace
        self._scope = f"/namespaces/{namespace}" if namespace else ""
        self._pods_url = f"/api/v1{self._scope}/pods"
        self._api = ApiClient(api_url, token, ssl_context)
        self._pods_by_uid: dict[str, TrackedPod] = {}
        self._ips_in_use: set[str] = set()  # the addresses of this executor's pods (from `POOL`)
        self._address_pods: dict[str, TrackedPod] = {}  # address -> the pod holding it, until released
        self._distinct_ips = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._pgids: set[int] = set()  # every process group started, for the atexit safety net
        self.bin_dir = str(bin_dir) if bin_dir else str(Path(sys.executable).parent)

    # --- lifecycle (any thread) ----------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Self:
        if self._thread is not None:
            raise RuntimeError("the executor is already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._distinct_ips = loopback_aliases_work()
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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

    async def _main(self) -> None:
        """Watch and run until `stop()` (each subclass watches what it needs)."""
        raise NotImplementedError

    def _on_pod(self, kind: str, obj: Body) -> None:
        """A Pod watch event (or a relisted pod)."""
        raise NotImplementedError

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

    # --- Pods: the kubelet -------------------------------------------------------------------

    @staticmethod
    def _container_name(job: TrackedJob) -> str:
        containers = ((job.body.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
        return str(containers[0].get("name", ""))

    def _stop_pod(self, p: TrackedPod, reason: str, grace: float, *, delete: bool = True) -> None:
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

    async def _delete_pod(self, p: TrackedPod) -> None:
        while p.uid is None and not p.done.is_set():  # still being created
            await asyncio.sleep(0.05)
        if p.uid is not None:
            await self._api.delete(pods_path(p.namespace, p.name))
            self._event(p.job.ref(), "Normal", "SuccessfulDelete", f"Deleted pod: {p.name}", "job-controller")

    def _kill_group(self, p: TrackedPod) -> None:
        if p.process is None or p.process.pid not in self._pgids:
            return  # never started, or already reaped (its pid may belong to someone else now)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.process.pid, signal.SIGKILL)

    def _pod_ref(self, p: TrackedPod) -> Body:
        return {"apiVersion": "v1", "kind": "Pod", "name": p.name, "namespace": p.namespace, "uid": p.uid}

    def _allocate_ip(self, ports: Iterable[int] = (), owner: object = None) -> str:
        """A loopback address of the pod's own on which `ports` bind now (see `AddressPool`)."""
        if not self._distinct_ips:
            taken = [port for port in ports if not port_free(HOST_IP, port)]
            if taken:
                logger.warning("%s:%s is taken and every pod gets %s here: this pod cannot serve on it",
                               HOST_IP, ",".join(map(str, taken)), HOST_IP)
            return HOST_IP
        ip = POOL.acquire(ports, owner=owner)
        self._ips_in_use.add(ip)
        return ip

    def _release_ip(self, p: TrackedPod) -> None:
        """Give the pod's address back; the pool frees it once the pod's whole process group is gone."""
        if p.ip is None or p.ip_released:
            return
        p.ip_released = True
        self._ips_in_use.discard(p.ip)
        if self._address_pods.get(p.ip) is p:
            del self._address_pods[p.ip]
        if p.ip != HOST_IP:
            POOL.release(p.ip, p.process.pid if p.process is not None else None, owner=p)

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

    async def _run_container(self, p: TrackedPod) -> None:
        """The kubelet's part for a pod bound here: prepare (retrying config errors), run, report."""
        try:
            await self._run_container_once(p)
        finally:
            self._release_ip(p)  # its main process has ended (or never started, or the task was cancelled)

    async def _run_container_once(self, p: TrackedPod) -> None:
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

    async def _prepare(self, p: TrackedPod, container: Body) -> tuple[list[str], dict[str, str], Path]:
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

    def _localise_network(self, p: TrackedPod, spec: Body, env: dict[str, str]) -> None:
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

    async def _mount_volumes(self, p: TrackedPod, spec: Body, container: Body) -> dict[str, str]:
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
            elif "downwardAPI" in volume:
                self._project_downward(p, volume["downwardAPI"], target)
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

    async def _project_token(self, p: TrackedPod, spec: Body, source: Body, target: Path) -> None:
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

    def _project_downward(self, p: TrackedPod, source: Body, target: Path) -> None:
        """A downward-API volume's files, as the kubelet writes them: the pod's name,
        namespace, uid, all its labels or annotations (`key="value"` lines), or one of them
        (`metadata.annotations['key']`: its value as it is; a missing key, an empty file)."""
        meta = (p.body or {}).get("metadata") or {}
        for item in source.get("items") or []:
            field = (item.get("fieldRef") or {}).get("fieldPath", "")
            value = {"metadata.namespace": p.namespace, "metadata.name": p.name,
                     "metadata.uid": p.uid or ""}.get(field)
            one = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field)
            if one:
                value = (meta.get(one.group(1)) or {}).get(one.group(2), "")
            elif value is None and field in ("metadata.labels", "metadata.annotations"):
                kind = field.rpartition(".")[2]
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

    async def _execute(self, p: TrackedPod, container: Body, argv: list[str], env: dict[str, str], cwd: Path) -> None:
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

    def _terminated(self, p: TrackedPod) -> Body:
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

    async def _write_pod_status(self, p: TrackedPod, container: Body, phase: str, state: Body) -> None:
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
            result = await self._api.patch(pods_path(p.namespace, p.name, "status"), {"status": status})
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
