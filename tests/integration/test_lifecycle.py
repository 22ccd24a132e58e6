"""The operator core through the real kopf operator: Datasets, TrainingRuns, FineTunes.

Job and pod status is driven by the test (playing the kubelet), so each lifecycle path is
exact and fast; the local executor's end-to-end runs live in tests/local/.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from harness import wait_for
from kubernetes.client import ApiException

GROUP, VERSION = "genforge.dev", "v1alpha1"
API = f"{GROUP}/{VERSION}"
MANAGED = "app.kubernetes.io/managed-by=genforge"

pytestmark = pytest.mark.integration


def ts(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def create(custom_api, namespace, kind, plural, name, spec, labels=None):
    body = {"apiVersion": API, "kind": kind, "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
    if namespace is None:
        return custom_api.create_cluster_custom_object(GROUP, VERSION, plural, body)
    return custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def get(custom_api, namespace, plural, name):
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def phase_of(custom_api, namespace, plural, name):
    return (get(custom_api, namespace, plural, name).get("status") or {}).get("phase")


def make_model(custom_api, namespace, name="shapes"):
    create(custom_api, namespace, "GenModel", "genmodels", name,
           {"purpose": "test", "architecture": "unet2d-ddpm", "resolution": 32,
            "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1},
            "promotion": {"metric": "fid", "lowerIsBetter": True}})


def make_dataset(custom_api, namespace, name="shapes"):
    create(custom_api, namespace, "Dataset", "datasets", name,
           {"source": {"uri": "synthetic://shapes?count=32&size=32"}, "preparation": {"resolution": 32}})


def mark_dataset_ready(custom_api, batch_api, core_api, namespace, name="shapes"):
    """Finish the Dataset's preparation Job the way the kubelet would, and wait for Ready."""
    job = wait_for(lambda: job_of(batch_api, namespace, "Dataset"), message="Dataset Job")
    manifest = {"outcome": "Succeeded", "items": {"total": 32, "kept": 30, "dropped": {"duplicate": 2}},
                "bytes": 4096, "contentHash": "sha256:feed", "uri": f"file:///data/datasets/{namespace}/{name}"}
    add_pod(core_api, namespace, job, running_since=-5, finished=-1, exit_code=0, message=manifest)
    finish_job(batch_api, namespace, job.metadata.name)
    return wait_for(lambda: (s := get(custom_api, namespace, "datasets", name)["status"])["phase"] == "Ready"
                    and s, message="Dataset Ready")


def run_spec(pool, **overrides):
    spec = {"modelRef": {"name": "shapes"}, "datasetRef": {"name": "shapes"},
            "training": {"steps": 20, "batchSize": 4}, "hardware": {"pool": pool},
            "budget": {"maxCost": "1000", "maxDuration": "1h"}, "checkpoint": {"everySteps": 10, "keep": 2}}
    spec.update(overrides)
    return spec


def jobs_of(batch_api, namespace):
    return batch_api.list_namespaced_job(namespace, label_selector=MANAGED).items


def job_of(batch_api, namespace, kind):
    return next((j for j in jobs_of(batch_api, namespace) if j.metadata.labels["genforge.dev/kind"] == kind), None)


def add_pod(core_api, namespace, job, *, running_since: float, finished: float | None = None,
            exit_code: int | None = None, message: dict | None = None, index: int = 0):
    """Play the kubelet: a pod of `job` that started (and maybe finished) at the given offsets."""
    labels = dict(job.spec.template.metadata.labels)
    name = f"{job.metadata.name}-{index}-x{abs(hash((running_since, finished))) % 10000}"
    core_api.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "spec": {"containers": [{"name": "trainer", "image": "trainer"}]}})
    if finished is None:
        state, pod_phase = {"running": {"startedAt": ts(running_since)}}, "Running"
    else:
        state = {"terminated": {"startedAt": ts(running_since), "finishedAt": ts(finished), "exitCode": exit_code,
                                "message": json.dumps(message or {})}}
        pod_phase = "Succeeded" if exit_code == 0 else "Failed"
    core_api.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": pod_phase, "podIP": "127.0.0.1", "startTime": ts(running_since),
        "containerStatuses": [{"name": "trainer", "ready": finished is None, "restartCount": 0,
                               "image": "trainer", "imageID": "", "state": state}]}})
    return name


def finish_job(batch_api, namespace, job_name, condition="Complete", reason=None):
    batch_api.patch_namespaced_job_status(job_name, namespace, {"status": {
        "active": 0, "conditions": [{"type": condition, "status": "True", **({"reason": reason} if reason else {}),
                                     "lastTransitionTime": ts()}]}})


def test_dataset_prepared_end_to_end(operator, namespace, custom_api, batch_api, core_api):
    make_dataset(custom_api, namespace)
    job = wait_for(lambda: jobs_of(batch_api, namespace)[0], message="the preparation Job")
    assert job.metadata.owner_references[0].kind == "Dataset"
    (spec_volume,) = [v for v in job.spec.template.spec.volumes if v.name == "run-spec"]
    # The run document rides in the pod's annotation; the trainer reads it as a file (downward API).
    (item,) = spec_volume.downward_api.items
    assert (item.path, item.field_ref.field_path) == ("run.json", "metadata.annotations['genforge.dev/run-spec']")
    assert json.loads(job.spec.template.metadata.annotations["genforge.dev/run-spec"])["command"] == "prepare"
    # The operator creates the Job, then writes the status: a watcher can see the Job first
    # (named FLAKY by .ci/reruns.py in CI when this read the phase at once).
    wait_for(lambda: phase_of(custom_api, namespace, "datasets", "shapes") == "Running", message="phase Running")

    status = mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    assert status["items"]["kept"] == 30 and status["items"]["dropped"]["duplicate"] == 2
    assert status["droppedTotal"] == 2 and status["contentHash"] == "sha256:feed"


def test_run_waits_for_dataset_then_starts(operator, namespace, custom_api, batch_api, core_api, pool):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    create(custom_api, namespace, "TrainingRun", "trainingruns", "r1", run_spec(pool))
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", "r1") == "Waiting", message="Waiting")
    status = get(custom_api, namespace, "trainingruns", "r1")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DatasetNotReady"
    wait_for(lambda: [j.metadata.labels["genforge.dev/kind"] for j in jobs_of(batch_api, namespace)] == ["Dataset"],
             message="only the Dataset has a Job")

    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", "r1") == "Running", timeout=10,
             message="the run starts once its Dataset is Ready")
    kinds = sorted(j.metadata.labels["genforge.dev/kind"] for j in jobs_of(batch_api, namespace))
    assert kinds == ["Dataset", "TrainingRun"]


def test_run_lifecycle_cost_registry_and_restart(operator, namespace, custom_api, batch_api, core_api, pool):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    create(custom_api, namespace, "TrainingRun", "trainingruns", "r2", run_spec(pool))
    job = wait_for(lambda: job_of(batch_api, namespace, "TrainingRun"), message="run Job")
    status = wait_for(lambda: (s := get(custom_api, namespace, "trainingruns", "r2")["status"])["pool"] and s)
    assert status["pool"] == pool and float(status["cost"]["estimated"]) > 0

    pod = add_pod(core_api, namespace, job, running_since=-10)
    started = core_api.read_namespaced_pod(pod, namespace).status.container_statuses[0].state.running.started_at
    accrued = wait_for(lambda: float(get(custom_api, namespace, "trainingruns", "r2")["status"]["cost"]["accrued"])
                       >= 10, message="cost accrues from the pod's start")
    assert accrued

    operator.restart()
    assert len([j for j in jobs_of(batch_api, namespace) if j.metadata.labels["genforge.dev/kind"] == "TrainingRun"]) == 1
    after = wait_for(lambda: float(get(custom_api, namespace, "trainingruns", "r2")["status"]["cost"]["accrued"])
                     >= 12 and get(custom_api, namespace, "trainingruns", "r2")["status"])
    assert len(after["segments"]) == 1, "a restart opens no second segment"

    words = {"outcome": "Succeeded", "step": 20, "artifact": "file:///data/runs/r2/model",
             "metrics": {"loss": 0.1, "fid": 50.0}, "samplesPerSecond": 4.0}
    core_api.patch_namespaced_pod_status(pod, namespace, {"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "ready": False, "restartCount": 0, "image": "trainer", "imageID": "",
         "state": {"terminated": {"startedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                  "finishedAt": ts(), "exitCode": 0, "message": json.dumps(words)}}}]}})
    elapsed = (datetime.now(UTC) - started).total_seconds()
    finish_job(batch_api, namespace, job.metadata.name)
    done = wait_for(lambda: (s := get(custom_api, namespace, "trainingruns", "r2")["status"])["phase"] == "Succeeded"
                    and s, message="Succeeded")
    assert done["metrics"] == {"loss": 0.1, "fid": 50.0}
    assert abs(float(done["cost"]["accrued"]) - elapsed) <= 1.5, "cost = pod running time × $1/s"
    model = wait_for(lambda: get(custom_api, namespace, "genmodels", "shapes")["status"]["versions"])
    assert model[0]["name"] == "v1" and model[0]["uri"] == "file:///data/runs/r2/model"
    assert done["version"] == "v1"
    promoted = get(custom_api, namespace, "genmodels", "shapes")["status"]["promoted"]
    assert promoted == "v1"


def test_over_budget_run_never_gets_a_job(operator, namespace, custom_api, batch_api, core_api, pool):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    create(custom_api, namespace, "TrainingRun", "trainingruns", "too-dear",
           run_spec(pool, training={"steps": 100000, "batchSize": 64}, budget={"maxCost": "2"}))
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", "too-dear") == "Failed")
    status = get(custom_api, namespace, "trainingruns", "too-dear")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "EstimateExceedsMaxCost" and "$2.00" in ready["message"]
    assert all(j.metadata.labels["genforge.dev/kind"] == "Dataset" for j in jobs_of(batch_api, namespace))


def test_running_run_stopped_at_its_budget_and_resumed(operator, namespace, custom_api, batch_api, core_api, pool):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    create(custom_api, namespace, "TrainingRun", "trainingruns", "capped", run_spec(pool, budget={"maxCost": "40"}))
    job = wait_for(lambda: job_of(batch_api, namespace, "TrainingRun"))
    add_pod(core_api, namespace, job, running_since=-35)  # $35 spent already; the limit is 5 s away
    stopped = wait_for(lambda: (s := get(custom_api, namespace, "trainingruns", "capped")["status"])["phase"]
                       == "BudgetExceeded" and s, timeout=15, message="BudgetExceeded")
    assert batch_api.read_namespaced_job(job.metadata.name, namespace).spec.suspend is True
    overspend = float(stopped["cost"]["accrued"]) - 40
    assert overspend <= 6, f"stopped within one enforcement interval (overspend ${overspend:.2f})"

    custom_api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "capped",
                                              {"spec": {"budget": {"maxCost": "1000"}}})
    wait_for(lambda: phase_of(custom_api, namespace, "trainingruns", "capped") == "Running", timeout=15)
    assert batch_api.read_namespaced_job(job.metadata.name, namespace).spec.suspend is False


def test_deleting_a_run_deletes_its_children(operator, namespace, custom_api, batch_api, core_api, pool):
    make_model(custom_api, namespace)
    make_dataset(custom_api, namespace)
    mark_dataset_ready(custom_api, batch_api, core_api, namespace)
    create(custom_api, namespace, "TrainingRun", "trainingruns", "gone", run_spec(pool))
    wait_for(lambda: any(j.metadata.labels["genforge.dev/kind"] == "TrainingRun" for j in jobs_of(batch_api, namespace)))
    custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "gone")

    def gone():
        try:
            get(custom_api, namespace, "trainingruns", "gone")
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone)
    wait_for(lambda: not any(j.metadata.labels["genforge.dev/kind"] == "TrainingRun"
                             for j in jobs_of(batch_api, namespace)), message="the Job is garbage-collected")


def test_progress_is_polled_from_the_rank_zero_trainer(operator, namespace, custom_api, batch_api, core_api, pool):
    """The trainer serves /progress on its pod IP; the operator shows it in status."""
    import http.server
    import threading

    progress = {"phase": "train", "step": 7, "totalSteps": 20, "loss": 0.25, "samplesPerSecond": 3.5,
                "etaSeconds": 4.0}

    class Trainer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = json.dumps(progress).encode()
            self.send_response(200 if self.path == "/progress" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ip = "127.0.0.77"  # a loopback address of its own, like a pod IP
    server = http.server.ThreadingHTTPServer((ip, 9090), Trainer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        make_model(custom_api, namespace)
        make_dataset(custom_api, namespace)
        mark_dataset_ready(custom_api, batch_api, core_api, namespace)
        create(custom_api, namespace, "TrainingRun", "trainingruns", "watched", run_spec(pool))
        job = wait_for(lambda: job_of(batch_api, namespace, "TrainingRun"))
        pod = add_pod(core_api, namespace, job, running_since=-1)
        core_api.patch_namespaced_pod_status(pod, namespace, {"status": {"podIP": ip}})
        shown = wait_for(lambda: get(custom_api, namespace, "trainingruns", "watched")["status"]["progress"],
                         timeout=15, message="progress in status")
        assert shown == {"step": 7, "totalSteps": 20, "percent": 35.0, "loss": 0.25, "samplesPerSecond": 3.5,
                         "etaSeconds": 4.0}
    finally:
        server.shutdown()
        server.server_close()
