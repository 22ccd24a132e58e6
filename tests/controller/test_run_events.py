"""Runs are followed from their watch events (main.py `_register_run`): a run is reconciled
when it is new to the operator process or its essence — spec, labels, annotations — changed;
never for a status write or kopf's finalizer, and kopf keeps no bookkeeping annotation on it
(one write fewer per new run)."""

from __future__ import annotations

import copy

import kopf

from genforge_operator.config import OperatorConfig
from genforge_operator.main import DIFFBASE, essence_digest
from genforge_operator.reconciler import Reconciler

LAST_HANDLED = "genforge.dev/last-handled-configuration"


def run_body() -> dict:
    return {"apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u-1", "generation": 1, "resourceVersion": "10",
                         "labels": {"team": "a"}, "annotations": {"note": "x"}},
            "spec": {"model": "m", "dataset": "d", "maxSteps": 10}}


def changed(body: dict, edit) -> dict:
    other = copy.deepcopy(body)
    edit(other)
    return other


def test_a_status_write_a_finalizer_or_a_new_resource_version_is_not_a_change():
    body = run_body()
    same = [
        changed(body, lambda b: b.update(status={"phase": "Running", "job": "j"})),
        changed(body, lambda b: b["metadata"].update(finalizers=["genforge.dev/finalizer"], resourceVersion="11")),
        changed(body, lambda b: b["metadata"]["annotations"].update({LAST_HANDLED: '{"spec": {}}'})),
    ]
    for other in same:
        assert essence_digest(kopf.Body(other)) == essence_digest(kopf.Body(body))


def test_spec_labels_and_annotations_are_changes():
    body = run_body()
    for edit in (lambda b: b["spec"].update(maxSteps=20),
                 lambda b: b["metadata"]["labels"].update(team="b"),
                 lambda b: b["metadata"]["annotations"].update(note="y")):
        assert essence_digest(kopf.Body(changed(body, edit))) != essence_digest(kopf.Body(body))


def test_the_reconciler_acts_on_a_run_once_per_essence():
    reconciler = Reconciler(kube=None, config=OperatorConfig())
    try:
        first, second = essence_digest(kopf.Body(run_body())), b"other"
        assert reconciler.essence_changed("u-1", first)  # new to this process: created or listed
        assert not reconciler.essence_changed("u-1", first)  # its own status write came back
        assert reconciler.essence_changed("u-1", second)  # a spec change
        assert reconciler.essence_changed("u-2", first)  # another run (by uid) is new
        reconciler.forget_essence("u-1")  # deleted, then a run of that uid would be new again
        assert reconciler.essence_changed("u-1", second)
    finally:
        reconciler.close()


def test_kopf_keeps_no_last_handled_configuration_on_runs_but_does_on_other_kinds():
    run = kopf.Body(changed(run_body(), lambda b: b["metadata"]["annotations"].update({LAST_HANDLED: '{"a": 1}'})))
    patch = kopf.Patch()
    DIFFBASE.store(body=run, patch=patch, essence={"spec": {"a": 1}})
    assert not patch  # no write for a run
    assert DIFFBASE.fetch(body=run) is None  # and kopf sees every run as new: no update handlers fire

    budget = kopf.Body({"apiVersion": "genforge.dev/v1alpha1", "kind": "Budget",
                        "metadata": {"name": "b", "namespace": "ns", "uid": "u-b"}, "spec": {"maxCost": "1"}})
    patch = kopf.Patch()
    DIFFBASE.store(body=budget, patch=patch, essence={"spec": {"maxCost": "1"}})
    stored = patch["metadata"]["annotations"][LAST_HANDLED]
    assert DIFFBASE.fetch(body=kopf.Body(changed(dict(budget), lambda b: b["metadata"].update(
        annotations={LAST_HANDLED: stored})))) == {"spec": {"maxCost": "1"}}
