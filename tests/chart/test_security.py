"""Pod Security "restricted" for every pod the chart or the operator creates; probes and requests."""

from __future__ import annotations

import pytest

from chart.rendering import ROOT, VALUE_SETS, ci_values, of_kind, render

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for obj in objects:
        if obj["kind"] not in POD_TEMPLATE_KINDS:
            continue
        spec = obj["spec"]
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        out.append((f"{obj['kind']} {obj['metadata']['name']}", spec["template"]["spec"] if "template" in spec else spec))
    return out


def restricted_violations(pod: dict) -> list[str]:
    """What the Pod Security Standard "restricted" (v1.32) forbids or requires, for one pod spec."""
    problems = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field}")
    for volume in pod.get("volumes") or []:
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
        kinds = set(volume) - {"name"}
        if not kinds <= allowed:
            problems.append(f"volume {volume['name']}: {sorted(kinds - allowed)}")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod seccompProfile must be RuntimeDefault")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    containers = (pod.get("initContainers") or []) + pod["containers"]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop must be [ALL]")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            problems.append(f"{name}: hostPort")
        # Beyond "restricted": genforge's own rule.
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
    return problems


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_chart_pod_is_restricted(value_set):
    specs = pod_specs(render(ci_values(value_set)))
    assert specs
    for where, pod in specs:
        assert restricted_violations(pod) == [], where


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_pods_have_probes_requests_and_limits(value_set):
    for where, pod in pod_specs(render(ci_values(value_set))):
        for c in pod["containers"]:
            assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(c), where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "writable /tmp with a read-only root"


def test_trainer_pods_the_operator_creates_are_restricted():
    """The operator's own builders: the trainer Job on every example pool, one and two nodes."""
    from genforge_operator.builders import build_job
    from genforge_operator.config import OperatorConfig
    from genforge_operator.manifests import load_resources
    from genforge_operator.runspec import Placement

    examples = ROOT / "examples"
    resources = load_resources([str(examples / "pools.yaml"), str(examples / "trainingrun.yaml")])
    run = next(r for r in resources if r.kind == "TrainingRun")
    pools = [r for r in resources if r.kind == "AcceleratorPool"]
    assert len(pools) == 3
    for pool in pools:
        for nodes in (1, 2):
            placement = Placement(pool=pool, nodes=nodes, accelerators_per_node=pool.spec.accelerator.per_node)
            job = build_job(run, "train", placement, OperatorConfig.from_env({}))
            assert restricted_violations(job["spec"]["template"]["spec"]) == [], f"{pool.name}, {nodes} node(s)"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_only_the_accounts_that_call_the_api_mount_a_token(value_set):
    """The operator's and the optional review component's; never the trainers'."""
    objects = render(ci_values(value_set))
    for account in of_kind(objects, "ServiceAccount"):
        expected = account["metadata"]["labels"]["app.kubernetes.io/component"] in ("operator", "review")
        assert account["automountServiceAccountToken"] is expected, account["metadata"]


@pytest.mark.parametrize("pod, problem", [
    ({"containers": [{"name": "c", "securityContext": {}}]}, "pod seccompProfile must be RuntimeDefault"),
    ({"hostNetwork": True, "containers": []}, "hostNetwork"),
    ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": []}, "volume h: ['hostPath']"),
], ids=["no-security-context", "host-network", "host-path"])
def test_the_checker_catches_what_restricted_forbids(pod, problem):
    assert problem in restricted_violations(pod)
