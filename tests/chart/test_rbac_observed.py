"""The chart's RBAC against what the real operator actually asks of the API server.

The real kopf operator runs against the emulated API server through a whole lifecycle —
a Dataset prepared (and prepared again after a spec change), a two-node run that is
stopped at its budget, resumed, finished and registered, a FineTune of the new version,
a pool's calibration run, the run deleted — and the
emulator's request log says which (verb, resource) it used. Every one must be granted by
the chart's ClusterRole; every grant must be used or have a reason it cannot be seen here.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from harness import OperatorRunner, wait_for

from chart.rendering import one, render
from chart.test_rbac import triples

pytestmark = pytest.mark.integration
os.environ.setdefault("GENFORGE_METRICS_PORT", "0")  # the operator's /metrics on a free port

GROUP, VERSION = "genforge.dev", "v1alpha1"
TEST_AGENT = "genforge-rbac-test"
# Granted but not observable against the emulator, with the reason.
UNOBSERVABLE = {
    # Only enforced by the OwnerReferencesPermissionEnforcement admission plugin (OpenShift…).
    ("genforge.dev", "datasets/finalizers", "update"),
    ("genforge.dev", "finetunes/finalizers", "update"),
    ("genforge.dev", "trainingruns/finalizers", "update"),
    # Only with Kueue installed (a queued, suspended Job's Workload): the real-Kubernetes tier
    # with a real Kueue uses it (tests/real/test_kueue.py), as the chart's ServiceAccount.
    ("kueue.x-k8s.io", "workloads", "list"),
    # Only for a run document over 64 KiB, too large for the pod annotation that carries it
    # (builders.RUN_SPEC_ANNOTATION_MAX_BYTES; tests/controller/test_builders.py builds one).
    ("", "configmaps", "create"),
}


def ts(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def apis(cluster):
    """Clients whose requests the test can tell from the operator's (own User-Agent)."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.url
    client = kubernetes.client.ApiClient(configuration)
    client.user_agent = TEST_AGENT
    yield (kubernetes.client.CustomObjectsApi(client), kubernetes.client.BatchV1Api(client),
           kubernetes.client.CoreV1Api(client))
    client.close()


def _pod(core, namespace, job, index, *, started: float, finished: float | None = None, message=None):
    name = f"{job.metadata.name}-{index}-{uuid.uuid4().hex[:5]}"
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": dict(job.spec.template.metadata.labels),
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]}})
    _pod_state(core, namespace, name, started=started, finished=finished, message=message)
    return name


def _pod_state(core, namespace, name, *, started: float, finished: float | None = None, message=None):
    if finished is None:
        phase, state = "Running", {"running": {"startedAt": ts(started)}}
    else:
        phase, state = "Succeeded", {"terminated": {"startedAt": ts(started), "finishedAt": ts(finished),
                                                    "exitCode": 0, "message": json.dumps(message or {})}}
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": phase, "podIP": "127.0.0.1", "startTime": ts(started),
        "containerStatuses": [{"name": "trainer", "ready": finished is None, "restartCount": 0,
                               "image": "trainer", "imageID": "", "state": state}]}})


def _finish(batch, namespace, job_name):
    batch.patch_namespaced_job_status(job_name, namespace, {"status": {"active": 0, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": ts()}]}})


def _job(batch, namespace, kind):
    jobs = batch.list_namespaced_job(namespace, label_selector=f"genforge.dev/kind={kind}").items
    return jobs[0] if jobs else None


def _status(custom, namespace, plural, name):
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name).get("status") or {}


def _lifecycle(custom, batch, core, namespace, pool):
    def create(kind, plural, name, spec):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})

    create("Budget", "budgets", "team", {"limit": "100000", "period": "Total"})
    create("GenModel", "genmodels", "shapes", {
        "purpose": "rbac", "architecture": "unet2d-ddpm", "resolution": 32,
        "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1}})
    create("Dataset", "datasets", "shapes", {"source": {"uri": "synthetic://shapes?count=32&size=32"},
                                             "preparation": {"resolution": 32}})
    first = wait_for(lambda: _job(batch, namespace, "Dataset"), message="the preparation Job")

    # A changed Dataset is prepared again: the old Job is deleted, a new one created.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "shapes",
                                          {"spec": {"preparation": {"resolution": 32, "maxItems": 16}}})
    job = wait_for(lambda: (j := _job(batch, namespace, "Dataset")) and j.metadata.uid != first.metadata.uid and j,
                   timeout=15, message="the Dataset prepared again")
    _pod(core, namespace, job, 0, started=-5, finished=-1, message={
        "outcome": "Succeeded", "items": {"total": 16, "kept": 16}, "bytes": 1024,
        "contentHash": "sha256:feed", "uri": f"file:///data/datasets/{namespace}/shapes"})
    _finish(batch, namespace, job.metadata.name)
    wait_for(lambda: _status(custom, namespace, "datasets", "shapes").get("phase") == "Ready", message="Ready")

    # A two-node run (Indexed Job + headless Service), already past its budget when it starts.
    create("TrainingRun", "trainingruns", "run", {
        "modelRef": {"name": "shapes"}, "datasetRef": {"name": "shapes"},
        "training": {"steps": 20, "batchSize": 4}, "hardware": {"pool": pool, "nodes": 2},
        "budget": {"maxCost": "200", "maxDuration": "1h"}, "checkpoint": {"everySteps": 10, "keep": 2}})
    job = wait_for(lambda: _job(batch, namespace, "TrainingRun"), message="the run's Job")
    pods = [_pod(core, namespace, job, i, started=-150) for i in range(2)]  # $300 at $1/s/node
    wait_for(lambda: _status(custom, namespace, "trainingruns", "run").get("phase") == "BudgetExceeded",
             timeout=15, message="stopped at its budget")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "run",
                                          {"spec": {"budget": {"maxCost": "100000"}}})
    wait_for(lambda: batch.read_namespaced_job(job.metadata.name, namespace).spec.suspend is False,
             timeout=15, message="resumed")

    words = {"outcome": "Succeeded", "step": 20, "artifact": "file:///data/runs/run/model",
             "metrics": {"loss": 0.1}, "samplesPerSecond": 4.0,
             "timing": {"startStep": 0, "trainingSeconds": 100.0, "trainingSamples": 400, "checkpointSeconds": 2.0,
                        "writes": 2}}
    for name in pods:
        _pod_state(core, namespace, name, started=-150, finished=-1, message=words)
    _finish(batch, namespace, job.metadata.name)
    wait_for(lambda: _status(custom, namespace, "trainingruns", "run").get("phase") == "Succeeded",
             timeout=15, message="Succeeded")
    wait_for(lambda: _status(custom, namespace, "genmodels", "shapes").get("versions"), message="registered")
    wait_for(lambda: (custom.get_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool)
                      .get("status") or {}).get("measured"), message="throughput measured")
    wait_for(lambda: ((custom.get_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool)
                       .get("status") or {}).get("calibration") or {}).get("checkpointSeconds"),
             message="the pool calibrated")
    wait_for(lambda: _status(custom, namespace, "budgets", "team").get("spent") not in (None, "0", 0),
             timeout=15, message="Budget status")

    # A FineTune of the version just registered.
    create("FineTune", "finetunes", "tune", {
        "baseModel": {"name": "shapes"}, "datasetRef": {"name": "shapes"}, "method": "lora",
        "training": {"steps": 20, "batchSize": 4}, "hardware": {"pool": pool},
        "budget": {"maxCost": "1000", "maxDuration": "1h"}})
    wait_for(lambda: _job(batch, namespace, "FineTune"), message="the FineTune's Job")

    # A pool that asks for a calibration run: its GenModel, Dataset and TrainingRun are created.
    unmeasured = f"{pool}-new"
    custom.create_cluster_custom_object(GROUP, VERSION, "acceleratorpools", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AcceleratorPool", "metadata": {"name": unmeasured},
        "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "1",
                 "calibration": {"enabled": True, "namespace": namespace}}})
    try:
        wait_for(lambda: any(r["metadata"]["name"] == f"calibrate-{unmeasured}" for r in
                             custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"]),
                 timeout=15, message="the calibration run created")
        wait_for(lambda: any(c.get("type") == "Calibrated" for c in (custom.get_cluster_custom_object(
            GROUP, VERSION, "acceleratorpools", unmeasured).get("status") or {}).get("conditions") or []),
            timeout=15, message="the pool's Calibrated condition")
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "acceleratorpools", unmeasured)
    # The calibration objects are owned by their pool: the garbage collector deletes them with it
    # (the run through the operator's finalizer).
    for plural in ("trainingruns", "datasets", "genmodels"):
        wait_for(lambda plural=plural: f"calibrate-{unmeasured}" not in [
            o["metadata"]["name"] for o in custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural)["items"]], message=f"the calibration {plural} collected")

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "run")
    wait_for(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"],
             message="the run's finalizer removed")


def test_the_operator_uses_exactly_what_the_chart_grants(cluster, namespace, apis):
    custom, batch, core = apis
    pool = f"cpu-rbac-{uuid.uuid4().hex[:6]}"
    custom.create_cluster_custom_object(GROUP, VERSION, "acceleratorpools", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AcceleratorPool", "metadata": {"name": pool},
        "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "3600", "relativeThroughput": 1000.0}})
    mark = cluster.mark()
    runner = OperatorRunner(cluster).start()
    try:
        _lifecycle(custom, batch, core, namespace, pool)
    finally:
        runner.stop(reraise=False)
        custom.delete_cluster_custom_object(GROUP, VERSION, "acceleratorpools", pool)

    assert cluster.requests()[0].id <= mark, "the emulator's request log dropped some of the operator's requests"
    used = {(r.group, r.plural + (f"/{r.subresource}" if r.subresource else ""), r.verb)
            for r in cluster.requests(since=mark)
            if r.verb and r.plural and not r.user_agent.startswith(TEST_AGENT) and r.user_agent
            and (r.namespace in (None, namespace))}
    granted = triples(one(render({}), "ClusterRole", "genforge-operator")["rules"])
    assert used - granted == set(), "the operator made calls the chart does not allow"
    assert granted - used - UNOBSERVABLE == set(), "the chart grants what the operator never used"
