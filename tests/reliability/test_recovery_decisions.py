"""The pure decisions behind two restart bugs the kill tests found, pinned as table-free unit tests.

1. The operator died after creating a run's Job and before recording `status.job`/`pool`:
   the next reconcile takes both from the Job (its `genforge.dev/pool` annotation), so the
   pods' time is still billed — before the fix the run ended Succeeded with $0 accrued, and
   enforcement could not suspend a Job whose name status did not know.
2. A run deleted while the operator was down, after its pod had ended: its Budgets keep
   the time the pod really ran, not the time until the operator noticed the deletion.
3. A retried run whose Job is seen Complete before its second pod's final state (separate
   watch streams; after a restart, separate initial listings): the first attempt's words
   are no result — before the fix the run settled Succeeded on them and never billed the
   second pod (found by the soak: $3 recorded for 5 s of pods).
4. Many runs finishing at once (all reconciled again right after a restart) race for the
   GenModel's optimistic lock: a run that lost every attempt was recorded Succeeded
   without its registry version, for good (found by the soak). Now it is retried.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from controller.factories import make_run
from controller.test_reconcile_run import CONFIG, DEAR, job, observe, pod, ts

from genforge_operator.kube import StatusConflict
from genforge_operator.model_versions import add_version
from genforge_operator.reconcile import ANNOTATION_POOL, final_status, reconcile_run


def annotated_job(**kwargs) -> dict:
    body = job(**kwargs)
    body["metadata"]["annotations"] = {ANNOTATION_POOL: DEAR.name}
    return body


def test_status_lost_after_job_creation_is_recovered_from_the_job_and_billed():
    run = make_run(budget={"maxCost": "1000"})
    out = reconcile_run(observe(run, status={}, job_obj=annotated_job(), pods=[pod(start=0)], at=12), CONFIG)
    assert out.status["job"] == "gf-tr-run-1" and out.status["pool"] == DEAR.name
    assert out.status["cost"]["accrued"] == "12" and out.status["acceleratorSeconds"] == 12


def test_recovered_run_over_its_limit_is_suspended():
    run = make_run(budget={"maxCost": "5"})
    out = reconcile_run(observe(run, status={}, job_obj=annotated_job(), pods=[pod(start=0)], at=30), CONFIG)
    assert out.status["phase"] == "BudgetExceeded"
    assert out.job_patch == {"spec": {"suspend": True}}  # applied to status.job, now known


def test_a_new_job_carries_its_pool():
    run = make_run(budget={"maxCost": "1000"})
    out = reconcile_run(observe(run), CONFIG)
    created = next(o for o in out.create if o["kind"] == "Job")
    assert created["metadata"]["annotations"][ANNOTATION_POOL] == DEAR.name


def test_deleted_run_is_settled_at_its_pods_end_not_at_the_deletion():
    run = make_run()
    stale = {"pool": DEAR.name, "job": "gf-tr-run-1",
             "segments": [{"start": ts(0), "pool": DEAR.name, "accelerators": 1, "pricePerHour": "3600"}]}
    ended = pod(start=0, end=7, exit_code=143)
    status = final_status(observe(run, status=stale, job_obj=annotated_job(), pods=[ended], at=300))
    assert status["segments"][0]["end"] == ts(7)
    assert Decimal(status["cost"]["accrued"]) == 7  # not 300: the pod stopped at 7 s


def test_deleted_run_with_a_pod_still_running_is_settled_now():
    run = make_run()
    status = final_status(observe(run, status={"pool": DEAR.name}, job_obj=annotated_job(), pods=[pod(start=0)],
                                  at=40))
    assert Decimal(status["cost"]["accrued"]) == 40


def test_a_retried_runs_completion_waits_for_its_succeeded_pod():
    run = make_run(budget={"maxCost": "1000"})
    status = {"pool": DEAR.name, "job": "gf-tr-run-1", "phase": "Running"}
    complete = annotated_job(conditions=[("Complete", "Completed")], active=0)
    complete["status"]["completionTime"] = ts(8)  # just now: the pod's final state may still be on its way
    failed_first = pod(start=0, end=3, exit_code=1, message={"outcome": "Failed", "reason": "Error"}, name="p0")
    early = reconcile_run(observe(run, status=status, job_obj=complete, pods=[failed_first], at=10), CONFIG)
    assert early.status["phase"] == "Running" and early.requeue_after
    succeeded = pod(start=5, end=7, exit_code=0, message={"outcome": "Succeeded", "step": 100}, name="p1")
    done = reconcile_run(observe(run, status=early.status, job_obj=complete, pods=[failed_first, succeeded], at=11),
                         CONFIG)
    assert done.status["phase"] == "Succeeded" and Decimal(done.status["cost"]["accrued"]) == 5


class ContendedKube:
    """A GenModel that another writer changes between every read and write."""

    def __init__(self):
        self.writes = 0

    def get(self, kind, namespace, name):
        return {"metadata": {"resourceVersion": str(self.writes)},
                "spec": {"purpose": "p", "architecture": "unet2d-ddpm", "resolution": 32}, "status": {}}

    def replace_status_guarded(self, *args):
        self.writes += 1
        return False


def test_a_version_that_loses_every_optimistic_lock_is_retried_not_dropped():
    run_body = {"spec": {"modelRef": {"name": "shapes"}}}
    with pytest.raises(StatusConflict):
        add_version(ContendedKube(), "team-a", run_body, {"source": {"kind": "TrainingRun", "name": "r"},
                                                          "uri": "file:///m", "metrics": {}})


def test_a_budget_deleted_between_read_and_write_is_nothing_to_retire_onto():
    """Namespace teardown deletes a Budget while a run's deletion handler retires the run onto it:
    the guarded patch's 404 is the object gone (found by the real-Kubernetes Kueue test, where
    kopf logged 'failed temporarily: patch status of Budget …: HTTP 404' and retried)."""
    import kubernetes

    from genforge_operator.kube import Kube

    kube = Kube(kubernetes.client.ApiClient(kubernetes.client.Configuration()))
    reads = []

    def get(group, version, namespace, plural, name):
        reads.append(name)
        if len(reads) > 1:
            raise kubernetes.client.ApiException(status=404, reason="Not Found")
        return {"metadata": {"resourceVersion": "7"}, "spec": {}, "status": {}}

    def patch(*args, **kwargs):
        raise kubernetes.client.ApiException(status=404, reason="Not Found")

    kube.custom.get_namespaced_custom_object = get
    kube.custom.patch_namespaced_custom_object_status = patch
    assert kube.update_status("Budget", "team-a", "team", lambda body: {"retired": {"a": "1"}}) is None
    assert reads == ["team", "team"]  # read, write refused as gone, read again: gone


def test_a_status_patch_refused_for_another_reason_is_still_retried_by_kopf():
    import kopf
    import kubernetes

    from genforge_operator.kube import Kube

    kube = Kube(kubernetes.client.ApiClient(kubernetes.client.Configuration()))
    kube.custom.get_namespaced_custom_object = lambda *a: {"metadata": {"resourceVersion": "7"}, "status": {}}

    def patch(*args, **kwargs):
        raise kubernetes.client.ApiException(status=500, reason="Internal Server Error")

    kube.custom.patch_namespaced_custom_object_status = patch
    with pytest.raises(kopf.TemporaryError):
        kube.update_status("Budget", "team-a", "team", lambda body: {"retired": {"a": "1"}})


def test_the_finalizer_is_added_under_the_runs_resource_version_and_kopf_winning_the_race_is_fine():
    """`Kube.ensure_finalizer`: one patch guarded by the resourceVersion; on 409 (kopf added the
    same finalizer meanwhile) it reads the run again and finds the finalizer there, no second
    write; a run being deleted gets none (nothing new starts for it)."""
    import kubernetes

    from genforge_operator.kube import Kube

    kube = Kube(kubernetes.client.ApiClient(kubernetes.client.Configuration()))
    run = {"metadata": {"name": "r", "namespace": "team-a", "resourceVersion": "7", "finalizers": ["other/x"]}}
    patches = []

    def patch(group, version, namespace, plural, name, body, **kwargs):
        patches.append(body)
        raise kubernetes.client.ApiException(status=409, reason="Conflict")

    after_kopf = {"metadata": {**run["metadata"], "resourceVersion": "8", "finalizers": ["other/x", "genforge.dev/finalizer"]}}
    kube.custom.patch_namespaced_custom_object = patch
    kube.custom.get_namespaced_custom_object = lambda *a: after_kopf
    assert kube.ensure_finalizer("TrainingRun", run, "genforge.dev/finalizer") is after_kopf
    assert patches == [{"metadata": {"finalizers": ["other/x", "genforge.dev/finalizer"], "resourceVersion": "7"}}]

    deleting = {"metadata": {**run["metadata"], "deletionTimestamp": "2026-12-08T00:00:00Z"}}
    assert kube.ensure_finalizer("TrainingRun", deleting, "genforge.dev/finalizer") is None
    assert len(patches) == 1
