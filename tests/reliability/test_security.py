"""Security, proven through the real operator process against the emulated API server.

One scenario (module-scoped: the operator starts once) in two namespaces: a team
namespace with a planted storage Secret, a Dataset that uses it, runs that succeed, are
stopped at their budget and are deleted; a second namespace whose run points at the
first namespace's Dataset and GenModel; a user who tries to write cost into status. Then:

* RBAC: every API call the operator made (from the request log) is granted by the chart's
  operator ClusterRole (tests/chart checks, the other way round, that every grant is used);
* trainer pods read only their own run document (their pod's annotation) and get only the Dataset's secretRef
  and the storage Secret, with no service-account token;
* the planted secret value appears in no status, Event, operator log line or metric;
* another namespace's Dataset or GenModel cannot be referenced;
* status cannot be forged through the main resource (the status subresource).
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid

import pytest
from harness import wait_for

from genforge_operator.config import OperatorConfig, Storage
from genforge_operator.naming import child_name

from .kit import (
    GROUP,
    VERSION,
    Clients,
    Kubelet,
    OperatorProcess,
    RequestRecorder,
    make_world,
    operator_calls,
    run_spec,
    ungranted,
)

pytestmark = [pytest.mark.integration]

PLANTED = f"planted-{uuid.uuid4().hex}"


def _finish(kubelet: Kubelet, job: dict, exit_code: int = 0, words: dict | None = None) -> None:
    pod = kubelet.start_pod(job, started=_ago(3))
    kubelet.finish_pod(pod, exit_code, words or {"outcome": "Succeeded", "step": 20, "metrics": {"fid": 5.0},
                                                 "artifact": f"file:///data/{job['metadata']['name']}"})
    kubelet.finish_job(job, "Complete" if exit_code == 0 else "Failed",
                       None if exit_code == 0 else "PodFailurePolicy")


@pytest.fixture(scope="module")
def scenario(cluster, tmp_path_factory, pool_name):
    clients = Clients.connect(cluster.url)
    team, other = f"team-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    for ns in (team, other):
        clients.core.create_namespace({"metadata": {"name": ns}})
    recorder = RequestRecorder(cluster)
    operator = OperatorProcess(cluster, tmp_path_factory.mktemp("security"),
                               env={"GENFORGE_STORAGE_SECRET": "genforge-storage"}).start()
    try:
        clients.core.create_namespaced_secret(team, {"metadata": {"name": "s3-creds"}, "data": {
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(PLANTED.encode()).decode()}})
        kubelet = Kubelet(clients, team)
        make_world(clients, kubelet, team)
        private = clients.create(team, "Dataset", "private", {
            "source": {"uri": "s3://bucket/raw", "secretRef": {"name": "s3-creds"}},
            "preparation": {"resolution": 32}})
        jobs = lambda ns: {j["metadata"]["labels"]["genforge.dev/owner-uid"]: j for j in clients.jobs(ns)}  # noqa: E731
        job = wait_for(lambda: jobs(team).get(private["metadata"]["uid"]), timeout=30)
        _finish(kubelet, job, 4, {"outcome": "Failed", "reason": "StorageError", "message": "access denied"})

        runs = {name: clients.create(team, "TrainingRun", name, run_spec(pool_name, budget=budget))["metadata"]["uid"]
                for name, budget in (("ok", {"maxCost": "1000"}), ("capped", {"maxCost": "36"}),
                                     ("doomed", {"maxCost": "1000"}))}
        clients.create(other, "TrainingRun", "thief", run_spec(pool_name))
        for name in ("ok", "doomed"):
            _finish(kubelet, wait_for(lambda n=name: jobs(team).get(runs[n]), timeout=30))
        capped_job = wait_for(lambda: jobs(team).get(runs["capped"]), timeout=30)
        capped_pod = kubelet.start_pod(capped_job, started=_ago(34))
        wait_for(lambda: jobs(team)[runs["capped"]]["spec"].get("suspend"), timeout=30, message="capped suspended")
        kubelet.finish_pod(capped_pod, 143, {"outcome": "Stopped", "reason": "Stopped"})
        wait_for(lambda: (clients.get(team, "trainingruns", "ok").get("status") or {}).get("phase") == "Succeeded",
                 timeout=30)
        clients.delete(team, "trainingruns", "doomed")
        wait_for(lambda: clients.get(team, "trainingruns", "doomed") is None, timeout=30, message="doomed deleted")
        wait_for(lambda: (clients.get(other, "trainingruns", "thief").get("status") or {}).get("phase"), timeout=30)

        # A user with edit rights on TrainingRuns writes cost into status through the main resource.
        before = clients.get(team, "trainingruns", "ok")["status"]
        clients.custom.patch_namespaced_custom_object(GROUP, VERSION, team, "trainingruns", "ok", {
            "status": {"cost": {"accrued": "0"}, "phase": "Failed"}})
        forged = clients.get(team, "trainingruns", "ok")["status"]

        port = operator.metrics_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        events = [clients.api.sanitize_for_serialization(e) for ns in (team, other)
                  for e in clients.core.list_namespaced_event(ns).items]
        objects = [o for ns in (team, other) for plural in ("trainingruns", "datasets", "genmodels", "budgets")
                   for o in clients.list(ns, plural)]
        yield {"team": team, "other": other, "clients": clients, "records": recorder.stop(), "metrics": metrics,
               "events": events, "objects": objects, "log": operator.log(), "before": before, "forged": forged,
               "jobs": clients.jobs(team)}
    finally:
        operator.kill()
        for ns in (team, other):
            cluster.call(lambda handler, n=ns: handler.purge_namespace(n))


@pytest.fixture(scope="module")
def pool_name(cluster):
    clients = Clients.connect(cluster.url)
    name = f"sec-{uuid.uuid4().hex[:6]}"
    clients.create(None, "AcceleratorPool", name, {"accelerator": {"type": "cpu"}, "pricePerHour": "3600",
                                                   "relativeThroughput": 1000.0})
    yield name
    clients.custom.delete_cluster_custom_object(GROUP, VERSION, "acceleratorpools", name)


def _ago(seconds: int) -> str:
    from .kit import ts

    return ts(-seconds)


def test_every_call_the_operator_made_is_granted_by_the_charts_role(scenario):
    """Least privilege is the chart's (tests/chart checks every grant is used); here: the calls
    of this scenario — a Dataset with a secretRef, a run stopped at its budget, a deletion,
    a cross-namespace reference — are all allowed, and none touches Secrets."""
    calls = operator_calls(scenario["records"])
    assert not ungranted(scenario["records"]), ungranted(scenario["records"])
    assert not [c for c in calls if c[1].startswith("secrets")]


def test_trainer_pods_get_only_their_own_run_document_and_the_storage_secret(scenario):
    for job in scenario["jobs"]:
        pod = job["spec"]["template"]["spec"]
        owner = job["metadata"]["labels"]
        kind, name = owner["genforge.dev/kind"], job["metadata"]["ownerReferences"][0]["name"]
        assert pod["automountServiceAccountToken"] is False
        assert job["metadata"]["name"] == child_name(kind, name)
        # Its run document comes from the pod's own annotation (downward API): no ConfigMap to read.
        assert not [v for v in pod["volumes"] if "configMap" in v]
        (run_spec,) = [v["downwardAPI"] for v in pod["volumes"] if "downwardAPI" in v]
        assert run_spec["items"] == [{"path": "run.json",
                                      "fieldRef": {"fieldPath": "metadata.annotations['genforge.dev/run-spec']"}}]
        assert not [v for v in pod["volumes"] if "secret" in v or "projected" in v]
        secrets = [e["secretRef"]["name"] for c in pod["containers"] for e in c.get("envFrom") or []]
        expected = ["s3-creds", "genforge-storage"] if name == "private" else ["genforge-storage"]
        assert secrets == expected, (name, secrets)
        assert not [e for c in pod["containers"] for e in c.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {})]


def test_a_dataset_without_secret_ref_gets_no_secret_but_storage():
    from controller.factories import make_dataset

    from genforge_operator.plan import Catalog, plan_dataset

    config = OperatorConfig(storage=Storage(uri="s3://genforge", pvc=None, secret_name="genforge-storage"))
    planned = plan_dataset(make_dataset(phase=None), Catalog(), config)
    container = planned.children.job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "genforge-storage"}}]


def test_no_secret_value_in_status_events_logs_or_metrics(scenario):
    places = {"status and specs": json.dumps(scenario["objects"]), "events": json.dumps(scenario["events"]),
              "operator log": scenario["log"], "metrics": scenario["metrics"], "jobs": json.dumps(scenario["jobs"])}
    encoded = base64.b64encode(PLANTED.encode()).decode()
    leaks = [where for where, text in places.items() if PLANTED in text or encoded in text]
    assert not leaks, leaks
    assert "genforge_" in scenario["metrics"] and scenario["events"], "the places searched are not empty"


def test_a_namespace_cannot_reference_another_namespaces_dataset_or_model(scenario):
    clients = scenario["clients"]
    thief = clients.get(scenario["other"], "trainingruns", "thief")["status"]
    ready = next(c for c in thief["conditions"] if c["type"] == "Ready")
    assert thief["phase"] in ("Waiting", "Failed") and ready["reason"] in ("DatasetNotFound", "ModelNotFound"), thief
    assert clients.jobs(scenario["other"]) == [], "no Job for a run pointing at another namespace"


def test_status_cannot_be_forged_through_the_main_resource(scenario):
    before, after = scenario["before"], scenario["forged"]
    assert after["cost"]["accrued"] == before["cost"]["accrued"] != "0"
    assert after["phase"] == "Succeeded"
