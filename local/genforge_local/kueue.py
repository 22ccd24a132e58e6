"""Kueue's controller manager against the real local control plane (tests, `genforge local --kube`).

The binary and Kueue's own manifests come from the `sigs.k8s.io/kueue` Go module at the
pinned version (:data:`.kube_binaries.KUEUE`, built by ``scripts/kube-binaries``). What is
the same as a cluster install (config/default):

* Kueue's CRDs from ``config/components/crd/bases`` with its conversion-webhook patch for
  the CRDs that serve two versions (v1beta1 and the stored v1beta2), exactly as its
  kustomization applies them; the namespace ``kueue-system``;
* its internal certificate management (cert-controller writes the webhook serving cert to
  the Secret ``kueue-webhook-server-cert`` and the CA into those CRDs; this module copies
  the Secret into the manager's cert dir, as a kubelet's secret volume would), the
  batch/Job integration, the scheduler, preemption, the Workload and queue controllers.

What differs on loopback, and what that changes:

* **No admission webhooks are registered** (no Mutating/ValidatingWebhookConfiguration):
  the API server reaches webhooks through a Service, and without kube-proxy (and with
  loopback Endpoints forbidden) it cannot reach Kueue's webhook server. So Kueue does not
  default Jobs — genforge creates queued Jobs suspended with the queue-name label itself,
  which is what the webhook would enforce — and does not validate Kueue objects beyond
  their CRD schemas; conversion to the old v1beta1 API is unavailable (use v1beta2).
* The manager runs as a process with the admin kubeconfig (not the kueue-controller-manager
  ServiceAccount), without leader election, metrics served off, and the on-demand
  visibility API (an aggregated API server) disabled.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import kube_binaries
from .real_cluster import _free_port

NAMESPACE = "kueue-system"
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
#: CRDs that Kueue's kustomization patches with its conversion webhook (webhook_in_*.yaml).
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")


def require_binary() -> Path:
    found = kube_binaries.find_tool(kube_binaries.KUEUE)
    if found is None:
        raise FileNotFoundError("the Kueue controller manager is not built: run scripts/kube-binaries")
    return found


def crds() -> list[dict[str, Any]]:
    """Kueue's CRDs as its config/default applies them (conversion webhook on the converted ones)."""
    out = []
    for path in sorted((kube_binaries.kueue_config_dir() / "components/crd/bases").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"service": {"namespace": NAMESPACE, "name": WEBHOOK_SERVICE, "path": "/convert"}},
                "conversionReviewVersions": ["v1"]}}
        out.append(crd)
    return out


class LocalKueue:
    """Kueue's controller manager as a local process against `real` (a started RealCluster)."""

    def __init__(self, real: Any, workdir: str | os.PathLike[str]):
        self.real = real
        self.workdir = Path(workdir)
        self.process: subprocess.Popen | None = None
        self.health_port = 0
        self.log_path = self.workdir / "kueue.log"

    def install(self) -> None:
        text = "".join("---\n" + yaml.safe_dump(c) for c in crds())
        self.real.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)
        names = [f"crd/{c['metadata']['name']}" for c in crds()]
        self.real.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        if self.real.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
            self.real.kubectl("create", "namespace", NAMESPACE)
        # The (empty) Secret the cert rotator fills, as Kueue's install ships it.
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE}}
        self.real.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(secret))

    def config(self) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": _free_port(), "certDir": str(self.workdir / "certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True, "webhookServiceName": WEBHOOK_SERVICE,
                                       "webhookSecretName": WEBHOOK_SECRET},
            "controller": {"groupKindConcurrency": {"Job.batch": 5, "Workload.kueue.x-k8s.io": 5,
                                                    "LocalQueue.kueue.x-k8s.io": 1,
                                                    "ClusterQueue.kueue.x-k8s.io": 1,
                                                    "ResourceFlavor.kueue.x-k8s.io": 1}},
            "clientConnection": {"qps": 50, "burst": 100},
            "integrations": {"frameworks": ["batch/job"]},
        }

    def start(self, timeout: float = 120.0) -> LocalKueue:
        binary = require_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.install()
        self.health_port = _free_port()
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config()))
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process writes it until stop()
        self.process = subprocess.Popen(
            [str(binary), f"--config={config_path}", "--feature-gates=VisibilityOnDemand=false",
             "--zap-log-level=2"],
            env={**os.environ, "KUBECONFIG": str(self.real.admin_kubeconfig_path)},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        mounted = False
        while not self._ready():
            if not mounted:
                mounted = self._mount_webhook_secret()
            if self.process.poll() is not None:
                raise RuntimeError(f"Kueue exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Kueue not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.5)
        return self

    def _mount_webhook_secret(self) -> bool:
        """What the kubelet's secret volume does in a cluster: the cert rotator writes the
        serving certificate to the Secret, and waits for it to appear in its cert dir."""
        out = self.real.kubectl("get", "secret", WEBHOOK_SECRET, "-n", NAMESPACE, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        data = (json.loads(out.stdout).get("data") or {})
        if not data.get("tls.crt") or not data.get("tls.key"):
            return False
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (certs / key).write_bytes(base64.b64decode(value))
        return True

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.workdir / "certs", ignore_errors=True)
