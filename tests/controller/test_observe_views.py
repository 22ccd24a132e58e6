"""The operator keeps a lean view of every Job and trainer pod in memory (thousands of them):
everything it decides from must read the same on the view as on the full object."""

from __future__ import annotations

import json

import pytest

from genforge_operator.observe import job_state, job_view, pod_not_running, pod_run, pod_view

MANAGED_FIELDS = [{"manager": m, "operation": "Update", "apiVersion": "v1", "time": "2026-12-07T10:00:00Z",
                   "fieldsType": "FieldsV1", "fieldsV1": {f"f:{k}": {} for k in "abcdefghijklmnop"}}
                  for m in ("kube-controller-manager", "genforge", "kubelet")]

JOB = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "gf-tr-run-1", "namespace": "team-a", "uid": "u-job", "resourceVersion": "42",
                 "labels": {"genforge.dev/uid": "u-run"}, "managedFields": MANAGED_FIELDS},
    "spec": {"suspend": False, "activeDeadlineSeconds": 3630, "backoffLimit": 3, "completions": 1,
             "template": {"metadata": {"labels": {"genforge.dev/uid": "u-run"}},
                          "spec": {"containers": [{"name": "trainer", "image": "genforge/trainer:0.1.0",
                                                   "command": ["genforge-trainer", "train"],
                                                   "env": [{"name": f"V{i}", "value": "x" * 40} for i in range(20)]}]}}},
    "status": {"active": 0, "startTime": "2026-12-07T10:00:00Z", "completionTime": "2026-12-07T10:05:00Z",
               "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-07T10:05:00Z"}]},
}


def pod(state: dict, phase: str, conditions=()) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gf-tr-run-1-abcde", "namespace": "team-a", "labels": {"genforge.dev/uid": "u-run"},
                     "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
                     "managedFields": MANAGED_FIELDS},
        "spec": {"nodeName": "n1", "containers": [{"name": "trainer", "image": "genforge/trainer:0.1.0",
                                                   "env": [{"name": f"V{i}", "value": "x" * 40} for i in range(20)]}]},
        "status": {"phase": phase, "podIP": "10.0.0.5", "startTime": "2026-12-07T10:00:05Z",
                   "conditions": list(conditions), "containerStatuses": [{"name": "trainer", "state": state}]},
    }


PODS = {
    "running": pod({"running": {"startedAt": "2026-12-07T10:00:06Z"}}, "Running"),
    "succeeded": pod({"terminated": {"startedAt": "2026-12-07T10:00:06Z", "finishedAt": "2026-12-07T10:04:59Z",
                                     "exitCode": 0, "message": json.dumps({"step": 10})}}, "Succeeded"),
    "image-pull": pod({"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}, "Pending"),
    "unschedulable": pod({}, "Pending", [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/3 nodes are available"}]),
}


def test_the_job_view_reads_as_the_job_and_drops_the_bulk():
    view = job_view(JOB)
    assert job_state(view) == job_state(JOB)
    assert "managedFields" not in view["metadata"] and "template" not in view["spec"]
    assert view["metadata"]["labels"] == JOB["metadata"]["labels"]
    assert len(json.dumps(view)) < len(json.dumps(JOB)) / 3


@pytest.mark.parametrize("name", sorted(PODS))
def test_the_pod_view_reads_as_the_pod(name):
    full = PODS[name]
    view = pod_view(full)
    assert pod_run(view) == pod_run(full)
    assert pod_not_running(view) == pod_not_running(full)
    assert "managedFields" not in view["metadata"]
    assert len(json.dumps(view)) < len(json.dumps(full)) / 2
