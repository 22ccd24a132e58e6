"""Dataset lifecycle decisions: Pending → Running → Ready | Failed, with counts from the trainer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from genforge_operator.builders import run_document
from genforge_operator.config import OperatorConfig
from genforge_operator.plan import Catalog
from genforge_operator.reconcile import ANNOTATION_GENERATION, Observed, reconcile_dataset

from .factories import make_dataset, make_pool

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONFIG = OperatorConfig()
MANIFEST = {"outcome": "Succeeded", "items": {"total": 10, "kept": 6, "dropped": {
    "corrupt": 1, "tooSmall": 1, "duplicate": 2, "unlicensed": 0, "licenseNotAllowed": 0, "overLimit": 0}},
    "bytes": 12345, "contentHash": "sha256:abc", "uri": "file:///data/datasets/team-a/shapes",
    "redactions": {"email": 2}}


def job(conditions=(), generation=1, suspend=False):
    return {"metadata": {"name": "gf-ds-shapes", "annotations": {ANNOTATION_GENERATION: str(generation)}},
            "spec": {"suspend": suspend},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": m,
                                       "lastTransitionTime": "2026-11-27T11:59:00Z"} for t, r, m in conditions]}}


def pod(exit_code=None, message=None):
    state = ({"terminated": {"exitCode": exit_code, "startedAt": "2026-11-27T11:59:00Z",
                             "finishedAt": "2026-11-27T11:59:30Z", "message": message}}
             if exit_code is not None else {"running": {"startedAt": "2026-11-27T11:59:00Z"}})
    return {"metadata": {"name": "gf-ds-shapes-x"},
            "status": {"phase": "Succeeded" if exit_code == 0 else ("Failed" if exit_code else "Running"),
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def observe(dataset, job_obj=None, pods=(), status=None):
    return Observed(resource=dataset, body_status=status or {}, catalog=Catalog(pools={"cpu": make_pool()}),
                    job=job_obj, pods=list(pods), now=NOW)


def test_new_dataset_creates_its_job_which_carries_the_run_document():
    out = reconcile_dataset(observe(make_dataset(phase=None)), CONFIG)
    assert [o["kind"] for o in out.create] == ["Job"]  # the document rides in the pod's annotation
    assert run_document(out.create)["command"] == "prepare"
    assert out.status["phase"] == "Running" and out.status["job"] == "gf-ds-shapes"
    assert out.status["observedGeneration"] == 1
    assert out.events and out.events[0].reason == "JobCreated"


def test_succeeded_job_copies_manifest_into_status():
    out = reconcile_dataset(observe(make_dataset(phase=None), job([("Complete", "", "")]),
                                    [pod(0, json.dumps(MANIFEST))], {"phase": "Running", "job": "gf-ds-shapes"}),
                            CONFIG)
    assert out.status["phase"] == "Ready"
    assert out.status["items"]["kept"] == 6 and out.status["items"]["dropped"]["duplicate"] == 2
    assert out.status["droppedTotal"] == 4
    assert out.status["contentHash"] == "sha256:abc" and out.status["bytes"] == 12345
    assert out.status["redactions"] == {"email": 2}
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "kept 6 of 10" in ready["message"]


@pytest.mark.parametrize("message,expect_reason", [
    (json.dumps({"outcome": "Failed", "reason": "DataError", "message": "no images in source"}), "DataError"),
    (None, "BackoffLimitExceeded"),
], ids=["trainer-says-why", "job-reason"])
def test_failed_job_gives_reason(message, expect_reason):
    out = reconcile_dataset(observe(make_dataset(phase=None),
                                    job([("Failed", "BackoffLimitExceeded", "Job has reached the backoff limit")]),
                                    [pod(3, message)], {"phase": "Running", "job": "gf-ds-shapes"}), CONFIG)
    assert out.status["phase"] == "Failed"
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == expect_reason
    assert out.events[-1].type == "Warning"


def test_spec_change_prepares_again():
    ds = make_dataset(phase=None)
    ds.generation = 2
    out = reconcile_dataset(observe(ds, job([("Complete", "", "")], generation=1), [pod(0, "{}")],
                                    {"phase": "Ready", "job": "gf-ds-shapes"}), CONFIG)
    assert out.delete_job and out.status["phase"] == "Pending"


def test_ready_dataset_is_left_alone_and_events_not_repeated():
    status = {"phase": "Ready", "job": "gf-ds-shapes",
              "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared", "message": "x",
                              "lastTransitionTime": "2026-11-27T11:00:00Z"}]}
    out = reconcile_dataset(observe(make_dataset(phase=None), job([("Complete", "", "")]), [pod(0, "{}")], status),
                            CONFIG)
    assert out.status["phase"] == "Ready" and not out.create and not out.events
    assert out.status["conditions"][0]["lastTransitionTime"] == "2026-11-27T11:00:00Z"


def test_unknown_pool_keeps_dataset_pending_with_reason():
    out = reconcile_dataset(observe(make_dataset(phase=None, hardware={"pool": "nope"})), CONFIG)
    assert out.status["phase"] == "Pending" and not out.create
    assert out.status["conditions"][0]["reason"] == "PoolNotFound"


def test_a_changed_spec_gets_a_replacement_job_with_the_new_run_document():
    """Issue 15 item 2: one ConfigMap name for every generation kept the first document (a create
    of an existing ConfigMap is a 409): the replacement Job prepared with the old settings. The
    document now rides in the Job's pod template, so a new Job always carries the new spec."""
    first = reconcile_dataset(Observed(resource=make_dataset(phase=None), body_status={}, catalog=Catalog(),
                                       job=None, pods=[], now=NOW), CONFIG)
    changed = make_dataset(phase=None, preparation={"resolution": 64})
    second = reconcile_dataset(Observed(resource=changed, body_status={}, catalog=Catalog(), job=None, pods=[],
                                        now=NOW), CONFIG)

    def document_and_mount(out):
        (job,) = [o for o in out.create if o["kind"] == "Job"]
        (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "run-spec"]
        return run_document(out.create), volume

    first_doc, first_mount = document_and_mount(first)
    second_doc, second_mount = document_and_mount(second)
    assert first_mount == second_mount  # the pod's own annotation, whatever the document
    assert first_doc["prepare"]["preparation"]["resolution"] == 32
    assert second_doc["prepare"]["preparation"]["resolution"] == 64  # the new Job reads the new spec
    again = reconcile_dataset(Observed(resource=make_dataset(phase=None), body_status={}, catalog=Catalog(),
                                       job=None, pods=[], now=NOW), CONFIG)
    assert document_and_mount(again) == (first_doc, first_mount)  # the same spec: the same Job
