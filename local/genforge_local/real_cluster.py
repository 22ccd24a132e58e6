"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The binaries are the project's pinned builds (``scripts/kube-binaries``, see
:mod:`.kube_binaries`). Nothing is emulated here: CRD installation, defaulting, pruning,
CEL, RBAC, server-side apply, watches, the Job controller and the garbage collector are
Kubernetes' own. There is no kubelet and no scheduler: :class:`~.kubelet.LocalKubelet`
registers a Node, binds pods to it and runs them as local processes.

    with RealCluster(workdir) as cluster:           # or cluster.start() / cluster.stop()
        cluster.kubectl("apply", "--server-side", "-f", "crds/")
        token_kubeconfig = cluster.service_account_kubeconfig("genforge-system", "genforge", path)

Every component listens on 127.0.0.1 on a free port, writes its log to ``<workdir>/logs``,
and is stopped (SIGTERM, then SIGKILL) by :meth:`RealCluster.stop` — exactly the processes
this object started. A failed start raises with the last lines of each component's log.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import kube_binaries

logger = logging.getLogger(__name__)

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "genforge-real"


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class _Component:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text)


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class _KeyPair:
    cert: Path
    key: Path


class _Pki:
    """A throwaway CA and the certificates and keys the components need."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genforge-local-ca")])
        self._ca_cert = self._sign(name, name, self._ca_key.public_key(), [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(True, False, False, False, False, True, True, False, False), True),
        ])
        self.ca = _KeyPair(self._write_cert("ca.crt", self._ca_cert), self._write_key("ca.key", self._ca_key))

    def _sign(self, subject: x509.Name, issuer: x509.Name, public_key: Any,
              extensions: list[tuple[Any, bool]]) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(self._ca_key, hashes.SHA256())

    def _write_cert(self, name: str, cert: x509.Certificate) -> Path:
        path = self.folder / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def _write_key(self, name: str, key: Any) -> Path:
        path = self.folder / name
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return path

    def issue(self, stem: str, common_name: str, *, organizations: Sequence[str] = (), server: bool = False,
              dns: Sequence[str] = (), ips: Sequence[str] = ()) -> _KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        extensions = [(x509.BasicConstraints(ca=False, path_length=None), True),
                      (x509.ExtendedKeyUsage([usage]), False)]
        if server:
            names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            extensions.append((x509.SubjectAlternativeName(names), False))
        cert = self._sign(x509.Name(subject), self._ca_cert.subject, key.public_key(), extensions)
        return _KeyPair(self._write_cert(f"{stem}.crt", cert), self._write_key(f"{stem}.key", key))

    def service_account_keys(self) -> tuple[Path, Path]:
        """The key pair that signs ServiceAccount tokens (private, public)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = self._write_key("sa.key", key)
        public = self.folder / "sa.pub"
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
        return private, public


# ----------------------------------------------------------------------------- the cluster


class RealCluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback, in ``workdir``.

    ``binaries`` defaults to the cached build (:func:`kube_binaries.find`); ``controllers``
    is kube-controller-manager's ``--controllers`` list; the ``extra_*_flags`` are appended to
    the components' command lines (a later flag wins).
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 binaries: kube_binaries.KubeBinaries | None = None,
                 controllers: str = "*", extra_apiserver_flags: Sequence[str] = (),
                 extra_controller_manager_flags: Sequence[str] = (), audit_users: Sequence[str] = ()):
        found = binaries or kube_binaries.find()
        if found is None:
            raise ControlPlaneError(
                "the Kubernetes binaries are not built: run scripts/kube-binaries "
                f"(they go to {kube_binaries.cache_root()})")
        self.binaries = found
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="genforge-kube-")).resolve()
        self.controllers = controllers
        self.extra_apiserver_flags = list(extra_apiserver_flags)
        self.extra_controller_manager_flags = list(extra_controller_manager_flags)
        self.audit_users = list(audit_users)
        self.components: list[_Component] = []
        self.port: int | None = None
        self.admin_kubeconfig_path = self.workdir / "admin.kubeconfig"
        self.pki: _Pki | None = None
        self._admin: _KeyPair | None = None
        self._ssl: ssl.SSLContext | None = None

    # --- addresses and credentials -----------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise ControlPlaneError("the control plane is not started")
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        assert self.pki is not None
        return self.pki.ca.cert

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def audit_log_path(self) -> Path:
        return self.logs_dir / "audit.log"

    def audit_mark(self) -> int:
        """A position in the audit log; :meth:`audit_events` from it sees only later requests."""
        try:
            return self.audit_log_path.stat().st_size
        except OSError:
            return 0

    def audit_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Audit events of the users in ``audit_users``, oldest first (status writes with bodies)."""
        try:
            with open(self.audit_log_path, "rb") as f:
                f.seek(since)
                data = f.read()
        except OSError:
            return []
        events = []
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def admin_client_cert(self) -> tuple[Path, Path]:
        assert self._admin is not None
        return self._admin.cert, self._admin.key

    def kubeconfig(self, user: Mapping[str, Any], *, name: str = CLUSTER_NAME) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)}}],
            "users": [{"name": name, "user": dict(user)}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], user: Mapping[str, Any] | None = None) -> Path:
        """A kubeconfig for ``user`` (default: the cluster admin, group system:masters)."""
        if user is None:
            cert, key = self.admin_client_cert()
            user = {"client-certificate": str(cert), "client-key": str(key)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(user), sort_keys=False))
        path.chmod(0o600)
        return path

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the cluster's CA and presents the admin certificate."""
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.ca_path))
            context.load_cert_chain(*self.admin_client_cert())
            self._ssl = context
        return self._ssl

    def api_client(self):
        """A `kubernetes.client.ApiClient` as the cluster admin."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_path)
        configuration.cert_file, configuration.key_file = (str(p) for p in self.admin_client_cert())
        return kubernetes.client.ApiClient(configuration)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                timeout: float = 30) -> tuple[int, Any]:
        """Plain HTTPS as the admin: (status, parsed JSON body)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            payload, status = e.read(), e.code
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def kubectl(self, *args: str, kubeconfig: str | os.PathLike[str] | None = None, check: bool = True,
                input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.admin_kubeconfig_path)}
        proc = subprocess.run([str(self.binaries.kubectl), *args], env=env, input=input, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def service_account_token(self, namespace: str, name: str, seconds: int = 24 * 3600) -> str:
        """A bound token for a ServiceAccount (TokenRequest), as a pod's projected token would be."""
        status, body = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                     "spec": {"expirationSeconds": seconds}})
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name} failed: HTTP {status}: {body}")
        return body["status"]["token"]

    def service_account_kubeconfig(self, namespace: str, name: str, path: str | os.PathLike[str]) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (no admin rights)."""
        return self.write_kubeconfig(path, {"token": self.service_account_token(namespace, name)})

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> RealCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self._kill_all)
        try:
            self._prepare_pki()
            etcd_client, etcd_peer = _free_port(), _free_port()
            self.port = _free_port()
            self._start_etcd(etcd_client, etcd_peer)
            self._wait_etcd(etcd_client, timeout)
            self._start_apiserver(etcd_client)
            self.write_kubeconfig(self.admin_kubeconfig_path)
            self._wait_ready(timeout)
            self._start_controller_manager()
            self._wait_controllers(timeout)
        except BaseException as e:
            logs = self.describe_failure()
            self.stop()
            if isinstance(e, ControlPlaneError | TimeoutError):
                raise ControlPlaneError(f"{e}\n{logs}") from e
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        for component in reversed(self.components):
            process = component.process
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for component in reversed(self.components):
            process = component.process
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        self.components.clear()
        atexit.unregister(self._kill_all)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def alive(self) -> dict[str, bool]:
        return {c.name: c.process is not None and c.process.poll() is None for c in self.components}

    def describe_failure(self) -> str:
        parts = []
        for c in self.components:
            code = None if c.process is None else c.process.poll()
            state = "running" if code is None else f"exited {code}"
            parts.append(f"  {c.name} ({state}), last lines of {c.log_path}:\n{c.tail()}")
        return "\n".join(parts)

    def _kill_all(self) -> None:
        for c in self.components:
            if c.process is not None and c.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.process.kill()

    # --- components --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Component:
        component = _Component(name, argv, self.logs_dir / f"{name}.log")
        log = open(component.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            component.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        self.components.append(component)
        return component

    def _prepare_pki(self) -> None:
        pki = _Pki(self.workdir / "pki")
        self.pki = pki
        self._serving = pki.issue("apiserver", "kube-apiserver", server=True,
                                  dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                       "kubernetes.default.svc.cluster.local"],
                                  ips=["127.0.0.1", str(ipaddress.ip_network(SERVICE_CIDR)[1])])
        self._admin = pki.issue("admin", "genforge-admin", organizations=["system:masters"])
        self._kcm = pki.issue("controller-manager", "system:kube-controller-manager")
        self._sa_private, self._sa_public = pki.service_account_keys()

    def _start_etcd(self, client_port: int, peer_port: int) -> None:
        self._spawn("etcd", [
            str(self.binaries.etcd),
            "--name", "genforge",
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"genforge=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # a throwaway cluster: durability across power loss is not the point
            "--quota-backend-bytes", str(2 * 1024**3),
            "--log-level", "warn",
        ])

    def _wait_etcd(self, client_port: int, timeout: float) -> None:
        url = f"http://127.0.0.1:{client_port}/health"
        self._poll("etcd", lambda: _http_ok(url), timeout)

    def _start_apiserver(self, etcd_port: int) -> None:
        assert self.pki is not None
        self._spawn("kube-apiserver", [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self._serving.cert}", f"--tls-private-key-file={self._serving.key}",
            f"--client-ca-file={self.pki.ca.cert}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self._sa_public}",
            f"--service-account-signing-key-file={self._sa_private}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=none",  # no kubelet-backed endpoints for the kubernetes Service
            f"--cert-dir={self.workdir / 'pki'}",
            *self._audit_flags(),
            *self.extra_apiserver_flags,
        ])

    def _audit_flags(self) -> list[str]:
        if not self.audit_users:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [
                # Status writes with their bodies: tests compare what was sent with what was stored
                # (a real API server prunes fields the CRD does not declare).
                {"level": "RequestResponse", "users": self.audit_users, "verbs": ["patch", "update"],
                 "resources": [{"group": "genforge.dev", "resources": ["*/status"]}]},
                {"level": "Metadata", "users": self.audit_users},
                {"level": "None"},
            ]}))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log_path}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            try:
                status, _ = self.request("GET", "/readyz", timeout=5)
            except OSError:
                return False
            return status == 200

        self._poll("kube-apiserver", ready, timeout)

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        kubeconfig = self.write_kubeconfig(self.workdir / "controller-manager.kubeconfig",
                                           {"client-certificate": str(self._kcm.cert),
                                            "client-key": str(self._kcm.key)})
        self._spawn("kube-controller-manager", [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--controllers={self.controllers}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self._sa_private}",
            f"--root-ca-file={self.pki.ca.cert}",
            f"--cluster-signing-cert-file={self.pki.ca.cert}",
            f"--cluster-signing-key-file={self.pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", "--secure-port=0",
            "--concurrent-job-syncs=5",
            *self.extra_controller_manager_flags,
        ])

    def _wait_controllers(self, timeout: float) -> None:
        """The service-account controller has made `default` in `default`: the controllers run."""
        def ready() -> bool:
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default", timeout=5)
            return status == 200

        self._poll("kube-controller-manager", ready, timeout)

    def _poll(self, what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for c in self.components:
                if c.process is not None and c.process.poll() is not None:
                    raise ControlPlaneError(f"{c.name} exited with code {c.process.returncode} while starting")
            if check():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{what} was not ready within {timeout:.0f} s")
            time.sleep(0.1)

    # --- helpers for callers -----------------------------------------------------------------

    def wait_namespace_ready(self, namespace: str, timeout: float = 60.0) -> None:
        """Pods can be created in ``namespace`` once its `default` ServiceAccount exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
            if status == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"namespace {namespace} got no default ServiceAccount within {timeout} s")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False
