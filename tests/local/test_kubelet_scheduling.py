"""The local kubelet's scheduler part: which pods fit the node (a table), pure."""

from __future__ import annotations

import pytest

from genforge_local.kubelet import extended_requests, pod_fits

LABELS = {"kubernetes.io/hostname": "genforge-local", "pool": "gpu"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def pod(*, selector=None, tolerations=None, limits=None, requests=None) -> dict:
    resources = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    return {"spec": {"nodeSelector": selector or {}, "tolerations": tolerations or [],
                     "containers": [{"name": "trainer", "resources": resources}]}}


CASES = [
    ("plain-cpu-pod-fits", pod(requests={"cpu": "1", "memory": "2Gi"}), [], {}, None),
    ("selector-matches", pod(selector={"pool": "gpu"}), [], {}, None),
    ("selector-differs", pod(selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}), [], {},
     "didn't match Pod's node affinity/selector"),
    ("gpu-fits", pod(limits={"nvidia.com/gpu": "2"}), [], {"nvidia.com/gpu": 4}, None),
    ("gpu-exhausted", pod(limits={"nvidia.com/gpu": "2"}), [], {"nvidia.com/gpu": 1}, "Insufficient nvidia.com/gpu"),
    ("gpu-absent", pod(limits={"nvidia.com/gpu": "1"}), [], {}, "Insufficient nvidia.com/gpu"),
    ("taint-untolerated", pod(), [GPU_TAINT], {}, "untolerated taint"),
    ("taint-tolerated-exists", pod(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                                 "effect": "NoSchedule"}]), [GPU_TAINT], {}, None),
    ("taint-tolerated-equal", pod(tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}]),
     [GPU_TAINT], {}, None),
    ("taint-wrong-value", pod(tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "x"}]),
     [GPU_TAINT], {}, "untolerated taint"),
    ("prefer-no-schedule-ignored", pod(), [{**GPU_TAINT, "effect": "PreferNoSchedule"}], {}, None),
]


@pytest.mark.parametrize(("case", "body", "taints", "free", "why"), CASES, ids=[c[0] for c in CASES])
def test_pod_fits(case, body, taints, free, why):
    got = pod_fits(body, labels=LABELS, taints=taints, free=free)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


def test_extended_requests_count_domain_resources_only():
    body = pod(limits={"nvidia.com/gpu": "2", "memory": "4Gi"}, requests={"cpu": "1", "google.com/tpu": "4"})
    assert extended_requests(body) == {"nvidia.com/gpu": 2, "google.com/tpu": 4}
