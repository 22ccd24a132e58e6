"""`helm install` for real: the chart deploys a working operator on the real control plane.

A pinned `helm` (v4, built from its Go module by scripts/kube-binaries) installs
charts/genforge-crds and charts/genforge into the real control plane. The chart's operator
Deployment becomes a ReplicaSet and a pod through the real controllers; the local kubelet
runs that pod as a process of the installed `genforge` command (the image's ENTRYPOINT;
node.IMAGE_ENTRYPOINTS) with the pod's projected ServiceAccount token, so the operator
runs with exactly the chart's RBAC. Then examples/ (steps shortened) complete the
lifecycle; `helm upgrade` rolls the operator; two replicas fail over; `helm uninstall`
keeps CRDs and users' resources.

Timings (install → operator ready, failover) are printed (`-s`) and recorded in the
closing note of the issue; nothing here asserts a duration beyond generous timeouts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from genforge_local import kube_binaries
from genforge_operator.api import GROUP, KINDS, VERSION

from .test_lifecycle import condition, diagnose, get, wait, wait_phase

pytestmark = [pytest.mark.kube, pytest.mark.torch, pytest.mark.slow, pytest.mark.install]

ROOT = Path(__file__).resolve().parents[2]
RELEASE, NAMESPACE = "gf-helm", "gf-helm-system"
FULLNAME = f"{RELEASE}-genforge"
OPERATOR = f"{FULLNAME}-operator"  # the Deployment and its ServiceAccount
USERS = "gf-helm-users"
VALUES = {
    "trainer": {"extraEnv": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
    # Tiny numbers in this tier: the examples run with a few steps (see `examples()`).
    "operator": {"enforcementIntervalSeconds": 5, "peering": {"lifetimeSeconds": 10}},
}


def helm_binary() -> Path:
    found = kube_binaries.find_tool(kube_binaries.HELM)
    if found is None:
        message = "helm is not built: run scripts/kube-binaries"
        if os.environ.get("GENFORGE_REQUIRE_KUBE") == "1":
            pytest.fail(message + " (GENFORGE_REQUIRE_KUBE=1)", pytrace=False)
        pytest.skip(message)
    return found


class Helm:
    def __init__(self, plane, binary: Path, home: Path):
        self.plane, self.binary, self.home = plane, binary, home

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.plane.real.admin_kubeconfig_path),
               "HELM_CACHE_HOME": str(self.home / "cache"), "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data")}
        out = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        return out


def kubectl_json(plane, *args: str) -> Any:
    return json.loads(plane.real.kubectl(*args, "-o", "json").stdout)


def operator_pods(plane) -> list[dict]:
    pods = kubectl_json(plane, "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def running(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def wait_operator_pods(plane, count: int, timeout: float = 180, where=None) -> list[dict]:
    def ready():
        pods = [p for p in operator_pods(plane) if running(p) and (where is None or where(p))]
        return pods if len(pods) == count else None

    return wait(plane, NAMESPACE, ready, f"{count} running operator pod(s)", timeout)


def healthy(pod: dict) -> bool:
    """kopf's liveness endpoint answers: the operator has started (logged in, handlers up)."""
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "health")
    try:
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def pod_log(plane, pod: dict) -> str:
    path = plane.logs_dir / pod["metadata"]["namespace"] / f"{pod['metadata']['name']}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def examples(namespace: str) -> list[dict]:
    """examples/ as a user applies them, with the training shortened for this tier."""
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] == "TrainingRun":
                doc["spec"]["training"].update({"steps": 20, "lrWarmupSteps": 2})
                doc["spec"]["checkpoint"] = {"everySteps": 10, "keep": 1}
                doc["spec"]["evaluation"]["samples"] = 4
            if doc["kind"] == "FineTune":
                doc["spec"]["training"].update({"steps": 6, "lrWarmupSteps": 0})
                doc["spec"]["checkpoint"] = {"everySteps": 6, "keep": 1}
                doc["spec"]["evaluation"]["samples"] = 4
            if doc["kind"] == "Dataset":
                doc["spec"]["source"]["uri"] = doc["spec"]["source"]["uri"].replace("count=512", "count=64")
            if KINDS[doc["kind"]].namespaced:
                doc["metadata"]["namespace"] = namespace
            docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def helm(kube, tmp_path_factory):
    binary = helm_binary()
    h = Helm(kube, binary, tmp_path_factory.mktemp("helm"))
    yield h
    h("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s", check=False)
    h("uninstall", "gf-helm-crds", "-n", NAMESPACE, check=False)
    kube.real.kubectl("delete", "namespace", NAMESPACE, USERS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def installed(kube, helm, tmp_path_factory):
    """The genforge-crds chart (taking over the CRDs the plane applied) and the genforge chart."""
    values = tmp_path_factory.mktemp("values") / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    helm("install", "gf-helm-crds", str(ROOT / "charts/genforge-crds"), "-n", NAMESPACE, "--create-namespace",
         "--take-ownership", "--wait")
    started = time.monotonic()
    helm("install", RELEASE, str(ROOT / "charts/genforge"), "-n", NAMESPACE, "-f", str(values),
         "--wait", "--timeout", "180s")
    [pod] = wait_operator_pods(kube, 1)
    wait(kube, NAMESPACE, lambda: healthy(pod) or None, "the operator's /healthz (kopf's liveness endpoint)")
    figures = {"install_to_operator_ready_s": round(time.monotonic() - started, 1)}
    print(f"\nhelm install → operator pod running, /healthz answering: {figures['install_to_operator_ready_s']} s")
    return {"values": values, "figures": figures}


def test_install_runs_the_operator_as_the_charts_pod_with_the_charts_service_account(kube, installed):
    deployment = kubectl_json(kube, "get", "deployment", OPERATOR, "-n", NAMESPACE)
    assert deployment["status"].get("availableReplicas") == 1, deployment["status"]
    replicasets = kubectl_json(kube, "get", "replicasets", "-n", NAMESPACE,
                               "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(replicasets) == 1
    [pod] = operator_pods(kube)
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    assert "command" not in pod["spec"]["containers"][0]  # the image's entrypoint, stood in for locally
    assert any(v.get("projected") for v in pod["spec"]["volumes"])  # the bound ServiceAccount token
    # The chart's RBAC is all it has: it may not read Secrets cluster-wide.
    can = kube.real.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces",
                            f"--as=system:serviceaccount:{NAMESPACE}:{OPERATOR}", check=False)
    assert can.stdout.strip() == "no"


def test_examples_complete_the_lifecycle_under_the_installed_operator(kube, installed):
    kube.real.kubectl("create", "namespace", USERS, check=False)
    kube.real.wait_namespace_ready(USERS)
    docs = examples(USERS)
    text = "".join("---\n" + json.dumps(d) + "\n" for d in docs)
    kube.real.kubectl("apply", "--server-side", "-f", "-", input=text)
    try:
        wait_phase(kube, USERS, "Dataset", "shapes", ("Ready",), timeout=240)
        run = wait_phase(kube, USERS, "TrainingRun", "shapes-v1", ("Succeeded", "Failed"), timeout=420)
        assert run["status"]["phase"] == "Succeeded", run["status"]
        tune = wait_phase(kube, USERS, "FineTune", "shapes-lora", ("Succeeded", "Failed"), timeout=420)
        assert tune["status"]["phase"] == "Succeeded", tune["status"]
        model = get(kube, USERS, "GenModel", "shapes")
        assert [v["name"] for v in model["status"]["versions"]] == ["v1", "v2"]
        assert condition(model, "Promoted")["status"] in ("True", "False")
        budget = get(kube, USERS, "Budget", "team")
        assert float(budget["status"]["spent"]) > 0
    except AssertionError:
        raise AssertionError(diagnose(kube, USERS)) from None
    finally:
        for doc in docs:
            if not KINDS[doc["kind"]].namespaced:
                kube.real.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--wait=false",
                                  check=False)


def test_upgrade_with_changed_values_rolls_the_operator(kube, helm, installed):
    [before] = operator_pods(kube)
    started = time.monotonic()
    helm("upgrade", RELEASE, str(ROOT / "charts/genforge"), "-n", NAMESPACE, "-f", str(installed["values"]),
         "--set", "operator.enforcementIntervalSeconds=7", "--wait", "--timeout", "180s")

    def rolled(pod):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        return env.get("GENFORGE_ENFORCEMENT_INTERVAL") == "7"

    [after] = wait_operator_pods(kube, 1, where=rolled)
    assert after["metadata"]["name"] != before["metadata"]["name"]
    wait(kube, NAMESPACE, lambda: not any(p["metadata"]["name"] == before["metadata"]["name"]
                                          for p in operator_pods(kube)) or None, "the old operator pod gone")
    installed["figures"]["upgrade_rollout_s"] = round(time.monotonic() - started, 1)
    print(f"\nhelm upgrade → new operator pod running, old one gone: {installed['figures']['upgrade_rollout_s']} s")


def _probe(kube, name: str) -> float:
    """Create a Dataset whose output would be lost: a working operator refuses it (phase Failed)
    without any Job. Returns when that happened (time.monotonic())."""
    probe = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Dataset", "metadata": {"name": name, "namespace": USERS},
             "spec": {"source": {"uri": "synthetic://shapes?count=4&size=16"}, "output": {"uri": "file:///tmp/x"}}}
    kube.real.kubectl("apply", "-f", "-", input=json.dumps(probe))
    wait(kube, USERS, lambda: (get(kube, USERS, "Dataset", name) or {}).get("status", {}).get("phase") == "Failed"
         or None, f"Dataset {name} handled", timeout=120)
    return time.monotonic()


def test_two_replicas_fail_over_when_the_active_ones_process_stops_or_is_killed(kube, helm, installed):
    helm("upgrade", RELEASE, str(ROOT / "charts/genforge"), "-n", NAMESPACE, "-f", str(installed["values"]),
         "--set", "operator.replicas=2", "--wait", "--timeout", "180s")
    pods = wait_operator_pods(kube, 2)
    wait(kube, NAMESPACE, lambda: len(kubectl_json(kube, "get", "clusterkopfpeering", FULLNAME).get("status")
                                       or {}) >= 2 or None, "both replicas in the peering object")
    peering = kubectl_json(kube, "get", "clusterkopfpeering", FULLNAME)
    # The active replica is the one with the highest priority (the newest start).
    active_id = max(peering["status"].items(), key=lambda kv: kv[1].get("priority", 0))[0]
    active = next(p for p in pods if p["metadata"]["name"] in active_id)
    standby = next(p for p in pods if p is not active)
    pid = kube.executor.pod_pid(NAMESPACE, active["metadata"]["name"])
    assert pid is not None
    kube.real.kubectl("create", "namespace", USERS, check=False)
    names = lambda: [p["metadata"]["name"] for p in operator_pods(kube)]  # noqa: E731
    try:
        # 1. The active replica hangs (SIGSTOP: its pod stays Running, its keep-alives stop):
        #    the standby takes over once the keep-alive expires (peering lifetime 10 s here).
        os.killpg(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        took = round(_probe(kube, "failover-hung") - stopped, 1)
        handlers = [p for p in names() if "failover-hung" in pod_log(kube, {"metadata": {
            "name": p, "namespace": NAMESPACE}})]
        assert handlers == [standby["metadata"]["name"]], handlers
        installed["figures"]["standby_takeover_s"] = took
        # 2. The hung replica is killed: its ReplicaSet replaces it; the replica now active handles changes.
        os.killpg(pid, signal.SIGKILL)
        killed = time.monotonic()
        took_killed = round(_probe(kube, "failover-killed") - killed, 1)
        installed["figures"]["after_kill_s"] = took_killed
        handlers_killed = [p for p in names() if "failover-killed" in pod_log(kube, {"metadata": {
            "name": p, "namespace": NAMESPACE}})]
        assert handlers_killed and active["metadata"]["name"] not in handlers_killed
        print(f"\nactive replica hung → standby {handlers[0]} handled a change after {took} s; "
              f"killed → {handlers_killed[0]} handled the next after {took_killed} s (peering lifetime 10 s)")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        for name in ("failover-hung", "failover-killed"):
            kube.real.kubectl("delete", "dataset", name, "-n", USERS, "--wait=false", check=False)


def test_uninstall_keeps_crds_and_users_resources_and_removes_the_rest(kube, helm, installed):
    kube.real.kubectl("create", "namespace", USERS, check=False)
    kept = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GenModel",
            "metadata": {"name": "kept", "namespace": USERS}, "spec": {"architecture": "unet2d-ddpm"}}
    kube.real.kubectl("apply", "-f", "-", input=json.dumps(kept))
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    wait(kube, NAMESPACE, lambda: not operator_pods(kube) or None, "the operator pods gone")
    left = kubectl_json(kube, "get", "deployments,services,serviceaccounts,configmaps", "-n", NAMESPACE,
                        "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert left == [], [i["metadata"]["name"] for i in left]
    roles = kubectl_json(kube, "get", "clusterroles,clusterrolebindings", "-l",
                         f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert roles == [], [i["metadata"]["name"] for i in roles]
    crds = kubectl_json(kube, "get", "crd")["items"]
    assert {f"{k.plural}.{GROUP}" for k in KINDS.values()} <= {c["metadata"]["name"] for c in crds}
    assert get(kube, USERS, "GenModel", "kept") is not None
    print(f"\nhelm figures: {installed['figures']}")
