"""The real control plane's own behaviour: a failed start explains itself; the local kubelet
schedules like kube-scheduler would (a pod that does not fit stays Pending, and says why)."""

from __future__ import annotations

import json
import time

import pytest

from genforge_local.real_cluster import ControlPlaneError, RealCluster

from .conftest import require_binaries

pytestmark = pytest.mark.kube


def test_a_failed_start_shows_each_components_log_and_leaves_nothing_running(tmp_path):
    require_binaries()
    cluster = RealCluster(tmp_path / "broken", extra_apiserver_flags=["--no-such-flag=1"])
    with pytest.raises(ControlPlaneError) as failure:
        cluster.start(timeout=60)
    message = str(failure.value)
    assert "kube-apiserver exited" in message and "unknown flag: --no-such-flag" in message, message
    assert "etcd (" in message  # every component's state and log tail is shown
    assert cluster.components == []


def _job(name: str, spec_extra: dict) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "local", "command": ["true"]}],
                **spec_extra}}}}


@pytest.mark.parametrize(("case", "extra", "why"), [
    ("gpu-the-node-lacks", {"containers": [{"name": "c", "image": "local", "command": ["true"],
                                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
     "Insufficient nvidia.com/gpu"),
    ("node-selector", {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
     "didn't match Pod's node affinity/selector"),
])
def test_a_pod_that_does_not_fit_stays_pending_with_the_reason(kube, kube_namespace, case, extra, why):
    kube.real.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(_job(case, extra)))
    deadline = time.monotonic() + 60
    while True:
        _, pods = kube.real.request("GET", f"/api/v1/namespaces/{kube_namespace}/pods?labelSelector=job-name%3D{case}")
        scheduled = [c for p in pods["items"] for c in (p.get("status") or {}).get("conditions") or []
                     if c["type"] == "PodScheduled"]
        if scheduled and scheduled[0]["status"] == "False":
            break
        assert time.monotonic() < deadline, pods
        time.sleep(0.2)
    assert scheduled[0]["reason"] == "Unschedulable" and why in scheduled[0]["message"], scheduled
    assert not pods["items"][0]["spec"].get("nodeName")
    events = kube.real.kubectl("get", "events", "-n", kube_namespace,
                               "--field-selector", "reason=FailedScheduling").stdout
    assert why in events, events


def test_a_fitting_bare_job_runs_to_completion_by_the_real_job_controller(kube, kube_namespace):
    kube.real.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(_job("ok", {})))
    kube.real.kubectl("wait", "-n", kube_namespace, "--for=condition=Complete", "job/ok", "--timeout=60s")
    _, pods = kube.real.request("GET", f"/api/v1/namespaces/{kube_namespace}/pods?labelSelector=job-name%3Dok")
    (pod,) = pods["items"]
    assert pod["status"]["phase"] == "Succeeded" and pod["spec"]["nodeName"] == kube.executor.node_name
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
