"""TrainingRuns under a real Kueue on the real control plane.

Kueue's controller manager (built from `sigs.k8s.io/kueue` by scripts/kube-binaries) runs
against the real kube-apiserver with Kueue's own CRDs (local/kueue.py says what differs on
loopback: no admission webhooks). The real operator runs as the chart's ServiceAccount; the
local kubelet runs the pods Kueue lets the Job controller create. Quota is CPU: every trainer
pod of these runs requests one CPU (the "accelerator" of a CPU pool), so a ClusterQueue with
`cpu: 1` holds exactly one single-node run.

Timings (admission latency) are printed (`-s`), not asserted.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from genforge_local.kueue import LocalKueue

from .test_lifecycle import (
    apply,
    condition,
    diagnose,
    get,
    jobs,
    manifest,
    model_and_dataset,
    training_run,
    wait,
    wait_phase,
)

pytestmark = [pytest.mark.kube, pytest.mark.torch, pytest.mark.slow, pytest.mark.install, pytest.mark.timeout(900)]

KUEUE = "kueue.x-k8s.io/v1beta2"


@pytest.fixture(scope="module")
def pools(kube):
    """A CPU pool of this module's own (cluster-scoped)."""
    pool = manifest("AcceleratorPool", "kueue-cpu", {"accelerator": {"type": "cpu"}, "pricePerHour": "0.05",
                                                      "relativeThroughput": 0.02})
    apply(kube, "default", pool)
    yield {"cpu": "kueue-cpu"}
    kube.real.kubectl("delete", "acceleratorpool", "kueue-cpu", "--wait=false", check=False)


@pytest.fixture(scope="module")
def kueue(kube, tmp_path_factory):
    try:
        local = LocalKueue(kube.real, tmp_path_factory.mktemp("kueue")).start()
    except FileNotFoundError as exc:
        import os

        if os.environ.get("GENFORGE_REQUIRE_KUBE") == "1":
            pytest.fail(f"{exc} (GENFORGE_REQUIRE_KUBE=1)", pytrace=False)
        pytest.skip(str(exc))
    text = "".join("---\n" + json.dumps(o) + "\n" for o in [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": "gf-default"}},
        {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": "gf-low"}, "value": 10},
        {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": "gf-high"}, "value": 1000},
    ])
    kube.real.kubectl("apply", "--server-side", "-f", "-", input=text)
    yield local
    local.stop()


def queue(kube, namespace: str, cpu: int, *, preemption: bool = False) -> str:
    """A ClusterQueue with `cpu` CPUs (and ample memory) and a LocalQueue `team` in `namespace`."""
    name = f"cq-{namespace}"[:63]
    spec = {"namespaceSelector": {}, "resourceGroups": [{
        "coveredResources": ["cpu", "memory"],
        "flavors": [{"name": "gf-default", "resources": [
            {"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "64Gi"}]}]}]}
    if preemption:
        spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
    text = "".join("---\n" + json.dumps(o) + "\n" for o in [
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec},
        {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": "team", "namespace": namespace},
         "spec": {"clusterQueue": name}},
    ])
    kube.real.kubectl("apply", "--server-side", "-f", "-", input=text)
    return name


def queued_run(name: str, pool: str, *, steps: int, every: int = 0, nodes: int = 1, labels=None) -> dict:
    run = training_run(name, pool, steps=steps, every=every, evaluation=False)
    run["spec"]["queueName"] = "team"
    run["spec"]["hardware"]["nodes"] = nodes
    if labels:
        run["metadata"]["labels"] = labels
    return run


def job_of(kube, namespace: str, run: str) -> dict | None:
    return next((j for j in jobs(kube, namespace) if j["metadata"]["labels"].get("genforge.dev/name") == run), None)


def unsuspended(kube, namespace: str, run: str) -> bool:
    job = job_of(kube, namespace, run)
    return bool(job) and not job["spec"].get("suspend")


def pods_of(kube, namespace: str, run: str) -> list[dict]:
    out = json.loads(kube.real.kubectl("get", "pods", "-n", namespace, "-l", f"genforge.dev/name={run}",
                                       "-o", "json").stdout)
    return out["items"]


def test_a_second_run_waits_with_kueues_reason_and_starts_when_the_first_ends(
        kueue, kube_operator, kube_namespace, pools):
    plane, ns = kube_operator, kube_namespace
    queue(plane, ns, cpu=1)
    apply(plane, ns, *model_and_dataset(pools["cpu"]))
    wait_phase(plane, ns, "Dataset", "shapes", ("Ready",))
    created = time.monotonic()
    apply(plane, ns, queued_run("first", pools["cpu"], steps=40))
    wait(plane, ns, lambda: unsuspended(plane, ns, "first"), "Kueue admitting the first run's Job")
    first_admitted = time.monotonic() - created
    apply(plane, ns, queued_run("second", pools["cpu"], steps=10))

    def held():
        run = get(plane, ns, "TrainingRun", "second") or {}
        queued = condition(run, "Queued")
        return run if run.get("status", {}).get("phase") == "Waiting" and queued.get("reason", "").startswith(
            "KueuePending") else None

    run = wait(plane, ns, held, "the second run Waiting with Kueue's reason")
    assert "insufficient unused quota for cpu" in condition(run, "Queued")["message"], condition(run, "Queued")
    assert not pods_of(plane, ns, "second")  # Kueue holds the whole Job: no pod exists
    assert phase_of(plane, ns, "first") == "Running"

    wait_phase(plane, ns, "TrainingRun", "first", ("Succeeded",))
    first_done = time.monotonic()
    wait(plane, ns, lambda: unsuspended(plane, ns, "second"), "Kueue admitting the second run when the first ended")
    second_admitted = time.monotonic() - first_done
    done = wait_phase(plane, ns, "TrainingRun", "second", ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", diagnose(plane, ns)
    assert condition(done, "Queued")["status"] == "False"
    print(f"\nKueue admission: first run {first_admitted:.1f} s after apply; second run "
          f"{second_admitted:.1f} s after the first succeeded")


def phase_of(plane, ns, name) -> str | None:
    return ((get(plane, ns, "TrainingRun", name) or {}).get("status") or {}).get("phase")


def test_a_higher_priority_workload_preempts_a_run_which_checkpoints_waits_and_resumes(
        kueue, kube_operator, kube_namespace, pools):
    plane, ns = kube_operator, kube_namespace
    queue(plane, ns, cpu=1, preemption=True)
    apply(plane, ns, *model_and_dataset(pools["cpu"]))
    wait_phase(plane, ns, "Dataset", "shapes", ("Ready",))
    apply(plane, ns, queued_run("low", pools["cpu"], steps=400, every=10,
                                labels={"kueue.x-k8s.io/priority-class": "gf-low"}))

    def checkpointed():
        run = get(plane, ns, "TrainingRun", "low") or {}
        return run if (run.get("status") or {}).get("checkpoint") else None

    wait(plane, ns, checkpointed, "the low-priority run's first checkpoint")
    high = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": "urgent", "namespace": ns,
        "labels": {"kueue.x-k8s.io/queue-name": "team", "kueue.x-k8s.io/priority-class": "gf-high"}},
        "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox", "command": ["sleep", "8"],
                                                      "resources": {"requests": {"cpu": "1"}}}]}}}}
    preempted_at = time.monotonic()
    plane.real.kubectl("apply", "-f", "-", input=json.dumps(high))

    def evicted():
        run = get(plane, ns, "TrainingRun", "low") or {}
        queued = condition(run, "Queued")
        return run if run.get("status", {}).get("phase") == "Waiting" and queued.get("status") == "True" and (
            "Preempted" in queued.get("reason", "") + queued.get("message", "")) else None

    wait(plane, ns, evicted, "the low-priority run evicted by Kueue, Waiting with the reason", timeout=120)
    eviction_s = time.monotonic() - preempted_at
    # The pod gets SIGTERM and its grace period to checkpoint; billing stops when it has gone.
    stopped = wait(plane, ns, lambda: (r := get(plane, ns, "TrainingRun", "low")) and r["status"]["segments"] and all(
        s.get("end") for s in r["status"]["segments"]) and r["status"], "billing stopped while evicted", timeout=120)
    cost_while_waiting = Decimal(stopped["cost"]["accrued"])
    assert stopped["phase"] == "Waiting"
    logs = "".join(p.read_text(errors="replace") for p in (plane.logs_dir / ns).glob("gf-tr-low-*.log"))
    assert "checkpoint step" in logs  # written on SIGTERM (or periodically) before the pod went

    resumed = wait_phase(plane, ns, "TrainingRun", "low", ("Succeeded", "Failed"), timeout=600)
    assert resumed["status"]["phase"] == "Succeeded", diagnose(plane, ns)
    logs = "".join(p.read_text(errors="replace") for p in (plane.logs_dir / ns).glob("gf-tr-low-*.log"))
    assert "resumed from" in logs
    segments = resumed["status"]["segments"]
    assert len(segments) >= 2  # one stretch before the preemption, one after: the wait is not billed
    assert Decimal(resumed["status"]["cost"]["accrued"]) > cost_while_waiting
    gap = _seconds(segments[1]["start"]) - _seconds(segments[0]["end"])
    assert gap > 0
    print(f"\nKueue preemption: run evicted {eviction_s:.1f} s after the high-priority Job arrived; "
          f"unbilled gap {gap:.0f} s; {len(segments)} billed segments")


def _seconds(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_a_multi_node_run_is_admitted_as_one_gang(kueue, kube_operator, kube_namespace, pools):
    plane, ns = kube_operator, kube_namespace
    cq = queue(plane, ns, cpu=1)
    apply(plane, ns, *model_and_dataset(pools["cpu"]))
    wait_phase(plane, ns, "Dataset", "shapes", ("Ready",))
    apply(plane, ns, queued_run("pair", pools["cpu"], steps=6, nodes=2))

    def held():
        run = get(plane, ns, "TrainingRun", "pair") or {}
        return run if condition(run, "Queued").get("reason", "").startswith("KueuePending") else None

    run = wait(plane, ns, held, "the two-node run held: one CPU of quota for two pods")
    assert "insufficient" in condition(run, "Queued")["message"]
    time.sleep(3)
    assert not pods_of(plane, ns, "pair")  # not one pod of the gang while the whole does not fit
    plane.real.kubectl("patch", "clusterqueue", cq, "--type", "json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/resourceGroups/0/flavors/0/resources/0/nominalQuota", "value": 2}]))
    wait(plane, ns, lambda: len(pods_of(plane, ns, "pair")) == 2 or None, "both pods of the gang created")
    done = wait_phase(plane, ns, "TrainingRun", "pair", ("Succeeded", "Failed"), timeout=600)
    assert done["status"]["phase"] == "Succeeded", diagnose(plane, ns)


def test_the_tighter_of_budget_and_quota_holds_a_run_and_status_says_which(
        kueue, kube_operator, kube_namespace, pools):
    plane, ns = kube_operator, kube_namespace
    queue(plane, ns, cpu=0)  # no quota at all
    apply(plane, ns, *model_and_dataset(pools["cpu"]))
    wait_phase(plane, ns, "Dataset", "shapes", ("Ready",))
    # Money is ample, quota is not: the Job exists, suspended; Kueue holds it.
    apply(plane, ns, queued_run("by-quota", pools["cpu"], steps=6))
    run = wait(plane, ns, lambda: (r := get(plane, ns, "TrainingRun", "by-quota")) and condition(r, "Queued").get(
        "reason", "").startswith("KueuePending") and r, "the quota holding the run")
    assert run["status"]["phase"] == "Waiting" and job_of(plane, ns, "by-quota") is not None
    assert condition(run, "WithinBudget")["status"] == "True"
    # Quota would be ample too, but the namespace Budget is spent: genforge holds it; no Job.
    apply(plane, ns, manifest("Budget", "broke", {"limit": "0.0000001", "period": "Monthly"}))
    apply(plane, ns, queued_run("by-budget", pools["cpu"], steps=6))

    def budget_held():
        r = get(plane, ns, "TrainingRun", "by-budget") or {}
        admitted = condition(r, "Admitted")
        return r if admitted.get("status") == "False" and "Budget" in admitted.get("reason", "") + admitted.get(
            "message", "") else None

    run = wait(plane, ns, budget_held, "the Budget holding the other run")
    # A Budget whose whole limit is below the run's estimate refuses it for good (Failed); one
    # spent for this period holds it (Waiting): either way genforge decides, before any Job.
    assert run["status"]["phase"] in ("Waiting", "Failed") and job_of(plane, ns, "by-budget") is None
    print(f"\nquota-held: Queued {condition(get(plane, ns, 'TrainingRun', 'by-quota'), 'Queued')['reason']}; "
          f"budget-held: {run['status']['phase']} / Admitted {condition(run, 'Admitted')['reason']}")
    assert not condition(run, "Queued")
