"""`genforge local`: the whole control plane on one machine, no cluster.

Three parts, started in this order and stopped in reverse:

1. the emulated Kubernetes API server (`EmulatedCluster`, serving the CRDs from `crds/`
   and the built-in kinds) on 127.0.0.1, with what kubectl needs in front of it
   (`KubectlSupport`: OpenAPI, Tables) and a kubeconfig written for `kubectl`;
2. the local executor (`LocalExecutor`): the Job controller and kubelet, running trainer
   pods as local processes; the PVC `genforge-data` (mounted at `/data`) is the data
   folder itself, so `file:///data/runs/...` lands in `<data>/runs/...`;
3. the real operator, as its own process (`python -m kopf run -A --standalone -m
   genforge_operator.main`), logged in to the emulated API server through
   `GENFORGE_API_SERVER`, its log in `<data>/logs/operator.log`.

    with LocalControlPlane("/tmp/gf") as plane:      # or plane.start() / plane.stop()
        subprocess.run(["kubectl", "apply", "-f", "examples/"],
                       env={**os.environ, "KUBECONFIG": str(plane.kubeconfig_path)})

Stopping stops the operator first (so it does not react to its pods going away), then
every trainer process (SIGTERM, SIGKILL after the grace period), then the API server.

With ``kube=True`` (``genforge local --kube``) the emulator is replaced by a real control
plane built from the pinned Kubernetes binaries (:class:`~.real_cluster.RealCluster`:
etcd, kube-apiserver with RBAC, kube-controller-manager); the executor becomes the node's
kubelet (:class:`~.kubelet.LocalKubelet`: the real Job controller creates the pods, it
binds and runs them); the CRDs are applied with ``kubectl apply --server-side``; and the
operator runs as the Helm chart's ServiceAccount with exactly the chart's RBAC (a bound
token, no admin rights). The kubeconfig written for you is the cluster admin's.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from genforge_operator.api import VERSION
from genforge_operator.bundled import crd_dir as default_crd_dir

from .emulated_cluster import EmulatedCluster
from .executor import LocalExecutor
from .kubectl_support import KubectlSupport

logger = logging.getLogger(__name__)

DATA_CLAIM = "genforge-data"
DATA_MOUNT = "/data"
OPERATOR_MODULE = "genforge_operator.main"
OPERATOR_GROUP = "genforge.dev"


class LocalControlPlane:
    """An emulated API server, the local executor and the operator, on this machine.

    `data_dir` holds the run data (the `genforge-data` PVC), `logs/` (the operator's log
    and one file per pod) and, unless `kubeconfig_path` says otherwise, `kubeconfig`.
    `port`/`metrics_port` 0 pick free ports. `operator=False` leaves the operator out
    (tests that drive Jobs by hand); `operator_env` adds to or overrides its environment;
    `executor_options` go to `LocalExecutor`; in kube mode `kube_options` go to `RealCluster`.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int = 0, metrics_port: int = 0,
                 kubeconfig_path: str | os.PathLike[str] | None = None,
                 crd_dir: str | os.PathLike[str] | None = None, operator: bool = True,
                 operator_env: Mapping[str, str] | None = None,
                 executor_options: Mapping[str, Any] | None = None, kube: bool = False,
                 chart_values: Mapping[str, Any] | None = None,
                 kube_options: Mapping[str, Any] | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.metrics_port = metrics_port
        self.kubeconfig_path = Path(kubeconfig_path).resolve() if kubeconfig_path else self.data_dir / "kubeconfig"
        self.crd_dir = Path(crd_dir) if crd_dir else default_crd_dir()
        self.with_operator = operator
        self.operator_env = dict(operator_env or {})
        self.executor_options = dict(executor_options or {})
        self.kube = kube
        self.chart_values = dict(chart_values or {})
        self.kube_options = dict(kube_options or {})
        self.cluster: EmulatedCluster | None = None
        self.real: Any = None  # a RealCluster in kube mode
        self.operator_account: tuple[str, str] | None = None  # (namespace, name) in kube mode
        self.executor: LocalExecutor | None = None
        self.operator_process: subprocess.Popen[bytes] | None = None
        self._operator_log: TextIO | None = None

    # --- what clients need -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.real is not None:
            return self.real.url
        if self.cluster is None or self.cluster.url is None:
            raise RuntimeError("the local control plane is not started")
        return self.cluster.url

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def operator_log_path(self) -> Path:
        return self.logs_dir / "operator.log"

    def api(self, namespace: str = "default"):
        """A small JSON client (`json_api.Api`) for this control plane, as its admin."""
        from .json_api import Api

        return Api(self.url, namespace, ssl_context=self.real.ssl_context() if self.real is not None else None)

    def kubectl_env(self) -> dict[str, str]:
        """This process's environment with KUBECONFIG pointing here (for `kubectl` subprocesses)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig_path)}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def operator_kubeconfig_path(self) -> Path:
        return self.data_dir / "operator.kubeconfig"

    def start(self, timeout: float = 60.0) -> LocalControlPlane:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.kube:
            try:
                self._start_real(max(timeout, 120.0))
            except BaseException:
                self.stop()
                raise
            return self
        try:
            self.cluster = EmulatedCluster(crd_dir=self.crd_dir, port=self.port, middleware=KubectlSupport())
            self.cluster.start()
            self.cluster.write_kubeconfig(self.kubeconfig_path)
            options = {"pvc_dirs": {DATA_CLAIM: self.data_dir}, **self.executor_options}
            self.executor = LocalExecutor(self.url, self.data_dir, **options).start()
            if self.with_operator:
                self._start_operator(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_real(self, timeout: float) -> None:
        from . import chart
        from .kubelet import LocalKubelet
        from .real_cluster import RealCluster

        objects, name = chart.operator_rbac(self.chart_values)
        account = f"system:serviceaccount:{chart.NAMESPACE}:{name}"
        self.real = RealCluster(self.data_dir / "kube", audit_users=[account], **self.kube_options).start(timeout)
        self.real.write_kubeconfig(self.kubeconfig_path)
        self.install_crds()
        self.real.kubectl("create", "namespace", chart.NAMESPACE)
        self.real.kubectl("apply", "--server-side", "-f", "-", input=_yaml_documents(objects))
        self.operator_account = (chart.NAMESPACE, name)
        self.real.service_account_kubeconfig(chart.NAMESPACE, name, self.operator_kubeconfig_path)
        options = {"pvc_dirs": {DATA_CLAIM: self.data_dir}, **self.executor_options}
        self.executor = LocalKubelet(self.url, self.data_dir, ssl_context=self.real.ssl_context(), **options).start()
        if self.with_operator:
            self._start_operator(timeout)

    def install_crds(self) -> None:
        """`kubectl apply --server-side` every CRD and wait until each is Established."""
        assert self.real is not None
        self.real.kubectl("apply", "--server-side", "-f", str(self.crd_dir))
        self.real.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(self.crd_dir))
        # Established is not yet listable: until its watch cache is up the server answers 429
        # "storage is (re)initializing" (kopf would log each retry as an error).
        for group, plural in sorted(self._genforge_plurals()):
            deadline = time.monotonic() + 60
            while self.real.request("GET", f"/apis/{group}/{VERSION}/{plural}?limit=1")[0] != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{plural}.{group} is not listable 60 s after its CRD was established")
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop_operator()
        if self.executor is not None:
            self.executor.stop()
            self.executor = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.real is not None:
            self.real.stop()
            self.real = None

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the operator ------------------------------------------------------------------------

    def operator_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.real is not None:  # the chart's ServiceAccount through its kubeconfig, as on a cluster
            env.pop("GENFORGE_API_SERVER", None)
            env["KUBECONFIG"] = str(self.operator_kubeconfig_path)
        else:
            env.update({"GENFORGE_API_SERVER": self.url, "KUBECONFIG": str(self.kubeconfig_path)})
        env.update({
            "MALLOC_ARENA_MAX": "2",  # as the chart's Deployment: see docs/benchmarks.md, "Operator load"
            "GENFORGE_STORAGE_URI": f"file://{DATA_MOUNT}",
            "GENFORGE_STORAGE_PVC": DATA_CLAIM,
            "GENFORGE_STORAGE_MOUNT_PATH": DATA_MOUNT,
            "GENFORGE_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.operator_env)
        return env

    def _start_operator(self, timeout: float) -> None:
        if not self.metrics_port:
            self.metrics_port = _free_port()
        mark = self.real.audit_mark() if self.real is not None else self.cluster.mark()
        self._operator_log = open(self.operator_log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop
        self.operator_process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-A", "--standalone", "-m", OPERATOR_MODULE],
            env=self.operator_environment(), stdin=subprocess.DEVNULL, stdout=self._operator_log,
            stderr=subprocess.STDOUT, start_new_session=True)  # Ctrl-C reaches us, not it: we stop it
        atexit.register(self._kill_operator)
        self._wait_operator_watching(mark, timeout)

    def _watched_since(self, mark: int) -> set[tuple[str, str]]:
        if self.real is not None:
            return {((e.get("objectRef") or {}).get("apiGroup", ""), (e.get("objectRef") or {}).get("resource", ""))
                    for e in self.real.audit_events(mark) if e.get("verb") == "watch"}
        assert self.cluster is not None
        return {(r.group, r.plural) for r in self.cluster.requests(since=mark)
                if r.verb == "watch" and r.user_agent.startswith("kopf")}

    def _genforge_plurals(self) -> set[tuple[str, str]]:
        if self.real is not None:
            from genforge_operator.schema import load_crds

            return {(crd["spec"]["group"], crd["spec"]["names"]["plural"]) for crd in load_crds(self.crd_dir).values()}
        assert self.cluster is not None
        return {(res.group, res.plural) for res in self.cluster.resources() if res.group == OPERATOR_GROUP}

    def _wait_operator_watching(self, mark: int, timeout: float) -> None:
        """Return once the operator watches every genforge kind, Jobs and Pods."""
        assert self.operator_process is not None
        wanted = self._genforge_plurals() | {("batch", "jobs"), ("", "pods")}
        deadline = time.monotonic() + timeout
        while True:
            if self.operator_process.poll() is not None:
                raise RuntimeError(f"the operator exited during startup (code {self.operator_process.returncode}); "
                                   f"its log:\n{_tail(self.operator_log_path)}")
            watched = self._watched_since(mark)
            if wanted <= watched:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator did not start watching {sorted(wanted - watched)} within "
                                   f"{timeout} s; its log:\n{_tail(self.operator_log_path)}")
            time.sleep(0.05)

    def _stop_operator(self, grace: float = 10.0) -> None:
        process, self.operator_process = self.operator_process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # kopf stops its handlers and exits
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None:
            atexit.unregister(self._kill_operator)
        if self._operator_log is not None:
            self._operator_log.close()
            self._operator_log = None

    def _kill_operator(self) -> None:
        process = self.operator_process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def kill_operator(self) -> None:
        """SIGKILL the operator (no cleanup, as a node failure would): for restart tests."""
        process = self.operator_process
        if process is not None:
            self._kill_operator()
            process.wait()
        self._stop_operator()

    def start_operator(self, timeout: float = 60.0) -> None:
        """Start the operator again (after :meth:`kill_operator`); returns once it watches everything."""
        if self.operator_alive():
            raise RuntimeError("the operator is running")
        self._start_operator(timeout)

    def operator_alive(self) -> bool:
        return self.operator_process is not None and self.operator_process.poll() is None


def _yaml_documents(objects: list[dict]) -> str:
    import yaml

    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="genforge-data", metavar="DIR",
                        help="the local data folder: datasets, runs, logs (default: ./genforge-data)")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="where to write the kubeconfig (default: DIR/kubeconfig; never ~/.kube/config "
                             "unless you ask)")
    parser.add_argument("--port", type=int, default=0, help="the API server's port (default: a free one)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="the operator's Prometheus port (default: a free one)")
    parser.add_argument("--no-operator", action="store_true",
                        help="run the API server and the executor only (to run the operator yourself)")
    parser.add_argument("--kube", action="store_true",
                        help="a real control plane (etcd, kube-apiserver, kube-controller-manager built by "
                             "scripts/kube-binaries) instead of the emulated API server; the operator runs "
                             "with the Helm chart's RBAC")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plane = LocalControlPlane(args.data, port=args.port, metrics_port=args.metrics_port,
                              kubeconfig_path=args.kubeconfig, operator=not args.no_operator,
                              kube=getattr(args, "kube", False))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        plane.start()
    except Exception as e:
        print(f"genforge local: could not start: {e}", file=sys.stderr)
        plane.stop()
        return 1
    print(describe(plane), flush=True)
    try:
        while not stop.wait(1.0):
            if plane.with_operator and not plane.operator_alive():
                print(f"genforge local: the operator exited; its log:\n{_tail(plane.operator_log_path)}",
                      file=sys.stderr)
                return 1
    finally:
        print("genforge local: stopping (trainer processes get their grace period to checkpoint)…", flush=True)
        plane.stop()
    return 0


def describe(plane: LocalControlPlane) -> str:
    lines = [
        "genforge local control plane is running" + (
            f" (real Kubernetes {plane.real.binaries.kubernetes_version})" if plane.real is not None else ""),
        f"  API server:  {plane.url}",
        f"  kubeconfig:  {plane.kubeconfig_path}",
        f"               export KUBECONFIG={plane.kubeconfig_path}",
        f"  data:        {plane.data_dir}   (the PVC {DATA_CLAIM}, mounted at {DATA_MOUNT} in pods)",
        f"               export GENFORGE_PATH_MAP='{{\"{DATA_MOUNT}\": \"{plane.data_dir}\"}}'"
        f"   (genforge generate/review: {DATA_MOUNT} paths on this machine)",
        f"  logs:        {plane.logs_dir}/<namespace>/<pod>.log",
    ]
    if plane.with_operator:
        lines += [f"  metrics:     {plane.metrics_url}",
                  f"  operator:    pid {plane.operator_process.pid if plane.operator_process else '-'}, "
                  f"log {plane.operator_log_path}"]
    lines += ["Try: kubectl apply -f examples/ && kubectl get genforge", "Ctrl-C stops everything."]
    return "\n".join(lines)
