"""The real kubectl against `LocalControlPlane`: the everyday verbs a user types.

The operator is left out (these test the API surface kubectl sees, not reconciliation);
status is written through the API where a test needs columns filled in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from harness import wait_for

from genforge_local.control_plane import LocalControlPlane
from genforge_operator.bundled import examples_dir

pytestmark = pytest.mark.kubectl

GROUP, VERSION = "genforge.dev", "v1alpha1"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with LocalControlPlane(tmp_path_factory.mktemp("local"), operator=False) as running:
        yield running


@pytest.fixture
def kubectl(plane, tmp_path):
    """`kubectl(*args)` in a fresh namespace of its own; returns stdout (raises with stderr on failure)."""
    namespace = f"k-{int(time.monotonic() * 1000) % 10**8}"

    def run(*args: str, check: bool = True, input: str | None = None, ns: bool = True) -> str:
        cmd = ["kubectl", *(["-n", namespace] if ns else []), *args]
        result = subprocess.run(cmd, env=plane.kubectl_env(), capture_output=True, text=True, timeout=60,
                                input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout if check else result.stdout + result.stderr

    run.namespace = namespace
    run("create", "namespace", namespace, ns=False)
    yield run
    run("delete", "namespace", namespace, "--wait=false", check=False, ns=False)


@pytest.fixture
def custom(plane):
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = plane.url
    with kubernetes.client.ApiClient(configuration) as client:
        yield kubernetes.client.CustomObjectsApi(client)


def header_and_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].split(), [line.split() for line in lines[1:]]


def test_apply_examples_validates_and_is_idempotent(kubectl):
    first = kubectl("apply", "-f", str(examples_dir()))
    assert "trainingrun.genforge.dev/shapes-v1 created" in first
    assert "dataset.genforge.dev/shapes created" in first
    again = kubectl("apply", "-f", str(examples_dir()))
    assert "trainingrun.genforge.dev/shapes-v1 unchanged" in again


def test_get_shows_printer_columns_and_wide_ones(kubectl, custom):
    kubectl("apply", "-f", str(examples_dir() / "trainingrun.yaml"))
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, kubectl.namespace, "trainingruns", "shapes-v1", {
        "status": {"phase": "Running", "pool": "cpu",
                   "progress": {"step": 42, "totalSteps": 150, "percent": 28.0, "loss": 0.125},
                   "cost": {"accrued": "0.01", "limit": "1"}}})

    header, rows = header_and_rows(kubectl("get", "trainingruns"))
    assert header == ["NAME", "PHASE", "POOL", "PROGRESS", "COST", "BUDGET", "AGE"]
    assert rows[0][:6] == ["shapes-v1", "Running", "cpu", "28", "0.01", "1"]

    header, rows = header_and_rows(kubectl("get", "tr", "-o", "wide"))  # short name
    assert header == ["NAME", "PHASE", "POOL", "PROGRESS", "COST", "BUDGET", "STEP", "LOSS", "ETA", "AGE"]
    assert rows[0][6:8] == ["42", "0.125"] and len(rows[0]) == 9  # ETA unset: a blank cell, as on a cluster


def test_get_genforge_lists_every_kind(kubectl):
    kubectl("apply", "-f", str(examples_dir()))
    out = kubectl("get", "genforge")
    for name in ("trainingrun.genforge.dev/shapes-v1", "finetune.genforge.dev/shapes-lora",
                 "dataset.genforge.dev/shapes", "genmodel.genforge.dev/shapes", "budget.genforge.dev/team",
                 "acceleratorpool.genforge.dev/cpu"):
        assert name in out


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_get_as_yaml_and_json(kubectl, fmt):
    kubectl("apply", "-f", str(examples_dir() / "dataset.yaml"))
    out = kubectl("get", "dataset", "shapes", "-o", fmt)
    obj = yaml.safe_load(out) if fmt == "yaml" else json.loads(out)
    assert obj["kind"] == "Dataset" and obj["metadata"]["namespace"] == kubectl.namespace
    assert obj["spec"]["source"]["uri"].startswith("synthetic://")


def test_describe_shows_conditions_and_events(kubectl, custom, plane):
    import kubernetes

    kubectl("apply", "-f", str(examples_dir() / "trainingrun.yaml"))
    run = custom.get_namespaced_custom_object(GROUP, VERSION, kubectl.namespace, "trainingruns", "shapes-v1")
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, kubectl.namespace, "trainingruns", "shapes-v1", {
        "status": {"phase": "Waiting", "conditions": [{
            "type": "Admitted", "status": "False", "reason": "DatasetNotReady",
            "message": "Dataset shapes is not Ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    configuration = kubernetes.client.Configuration()
    configuration.host = plane.url
    with kubernetes.client.ApiClient(configuration) as client:
        kubernetes.client.CoreV1Api(client).create_namespaced_event(kubectl.namespace, {
            "metadata": {"name": "shapes-v1.1"}, "type": "Normal", "reason": "Waiting",
            "message": "waiting for Dataset shapes",
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "name": "shapes-v1",
                               "namespace": kubectl.namespace, "uid": run["metadata"]["uid"]},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1})

    out = kubectl("describe", "trainingrun", "shapes-v1")
    assert "DatasetNotReady" in out and "Dataset shapes is not Ready" in out
    assert "waiting for Dataset shapes" in out  # the Events section


def test_patch_delete_and_label_selectors(kubectl):
    kubectl("apply", "-f", str(examples_dir() / "pools.yaml"), "-f", str(examples_dir() / "model.yaml"))
    kubectl("label", "genmodel", "shapes", "team=vision")
    kubectl("patch", "genmodel", "shapes", "--type=merge", "-p", '{"spec": {"purpose": "patched"}}')
    model = json.loads(kubectl("get", "genmodel", "shapes", "-o", "json"))
    assert model["spec"]["purpose"] == "patched" and model["metadata"]["generation"] == 2

    assert "shapes" in kubectl("get", "genmodels", "-l", "team=vision")
    assert "No resources found" in kubectl("get", "genmodels", "-l", "team=audio", check=False)

    assert 'genmodel.genforge.dev "shapes" deleted' in kubectl("delete", "genmodel", "shapes")
    assert "NotFound" in kubectl("get", "genmodel", "shapes", check=False)


def test_create_namespace_configmap_and_secret(kubectl):
    kubectl("create", "configmap", "settings", "--from-literal=a=1")
    kubectl("create", "secret", "generic", "creds", "--from-literal=token=s3cret")
    assert json.loads(kubectl("get", "configmap", "settings", "-o", "json"))["data"] == {"a": "1"}
    secret = json.loads(kubectl("get", "secret", "creds", "-o", "json"))
    assert secret["type"] == "Opaque" and secret["data"] == {"token": "czNjcmV0"}
    header, rows = header_and_rows(kubectl("get", "ns", ns=False))
    assert header == ["NAME", "STATUS", "AGE"] and [kubectl.namespace, "Active"] in [r[:2] for r in rows]


def test_explain_reads_the_crd_schema(kubectl):
    out = kubectl("explain", "trainingrun.spec.budget")
    assert "maxCost" in out and "onExceeded" in out


def test_jobs_and_pods_run_by_the_executor_print_like_a_cluster(kubectl):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
           "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {
               "restartPolicy": "Never",
               "containers": [{"name": "main", "image": "local",
                               "command": [sys.executable, "-c", "import time; time.sleep(1); print('hi')"]}]}}}}
    kubectl("apply", "-f", "-", input=json.dumps(job))
    wait_for(lambda: "Complete" in kubectl("get", "jobs"), timeout=30, interval=0.2)
    header, rows = header_and_rows(kubectl("get", "jobs"))
    assert header == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"] and rows[0][:3] == ["hello", "Complete", "1/1"]
    header, rows = header_and_rows(kubectl("get", "pods", "-l", "app=hello", "-o", "wide"))
    assert header[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] and "IP" in header and "NODE" in header
    assert rows[0][1:3] == ["0/1", "Completed"] and rows[0][5].startswith("127.")
    events = kubectl("get", "events")
    assert "SuccessfulCreate" in events and "Completed" in events
    assert kubectl("logs", rows[0][0]) == "hi\n"
    assert kubectl("logs", "job/hello", "--tail=1") == "hi\n"


def test_logs_follow_until_the_pod_ends(kubectl):
    script = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.5)"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "counter"},
           "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
               {"name": "main", "image": "local", "command": [sys.executable, "-c", script]}]}}}}
    kubectl("apply", "-f", "-", input=json.dumps(job))
    wait_for(lambda: "Running" in kubectl("get", "pods"), timeout=30, interval=0.1)
    assert kubectl("logs", "-f", "job/counter") == "0\n1\n2\n"


def test_watch_prints_rows_as_they_change(kubectl, plane):
    watch = subprocess.Popen(["kubectl", "-n", kubectl.namespace, "get", "genmodels", "-w"],
                             env=plane.kubectl_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let the watch start
        kubectl("apply", "-f", str(examples_dir() / "model.yaml"))
        kubectl("label", "genmodel", "shapes", "seen=yes")
        time.sleep(1.5)
    finally:
        watch.terminate()
        out, err = watch.communicate(timeout=10)
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines[0][:2] == ["NAME", "ARCHITECTURE"], (out, err)
    assert [line[0] for line in lines[1:]] == ["shapes", "shapes"], (out, err)
