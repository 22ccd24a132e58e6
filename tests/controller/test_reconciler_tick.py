"""The periodic re-check (kopf's per-object timer) is spread out under load: with many
unfinished objects each is re-checked less often, so the timers never ask more than
`max_ticks_per_second` reconciles; an object reconciled for another reason just before is
left alone; finished objects leave the count."""

from __future__ import annotations

import copy

import kopf
import pytest

from genforge_operator import reconciler as reconciler_module
from genforge_operator.config import OperatorConfig
from genforge_operator.reconciler import Reconciler

NS = "team-a"
INDEXES = ("trainingrun_index", "finetune_index", "pool_index", "model_index", "dataset_index", "budget_index",
           "job_index", "pod_index")


class FakeKube:
    """The few calls a Dataset's first reconcile makes; counts the reads."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.gets = 0

    def get(self, kind, namespace, name):
        self.gets += 1
        body = self.objects.get(name)
        return copy.deepcopy(body) if body else None

    def get_job(self, namespace, name):
        return None

    def create(self, obj):
        pass

    def patch_status(self, kind, namespace, name, patch):
        if name in self.objects and patch:
            self.objects[name].setdefault("status", {}).update(patch)


def dataset(name: str, phase: str | None = None) -> dict:
    return {"apiVersion": "genforge.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
            "spec": {"source": {"uri": "synthetic://shapes?count=8&size=32"}},
            "status": {"phase": phase} if phase else {}}


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(reconciler_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    return now


def make(names, **config) -> tuple[Reconciler, FakeKube]:
    kube = FakeKube()
    for name in names:
        kube.objects[name] = dataset(name)
    return Reconciler(kube, OperatorConfig(**config)), kube


def test_one_object_is_rechecked_every_enforcement_interval(clock):
    rec, kube = make(["d0"], enforcement_interval=5.0, max_ticks_per_second=1.0)
    idx = {name: {} for name in INDEXES}
    rec.reconcile("Dataset", NS, "d0", idx)
    assert rec.tick_period() == 5.0

    clock[0] += 1.0  # an event-driven reconcile a second ago: the tick leaves it alone
    before = kube.gets
    rec.tick("Dataset", NS, "d0", idx)
    assert kube.gets == before

    clock[0] += 4.0  # the next tick, one interval later, reconciles
    rec.tick("Dataset", NS, "d0", idx)
    assert kube.gets == before + 1


def test_many_objects_spread_the_ticks_to_the_rate_limit(clock):
    names = [f"d{i}" for i in range(20)]
    rec, kube = make(names, enforcement_interval=5.0, max_ticks_per_second=2.0)
    idx = {name: {} for name in INDEXES}
    for name in names:
        rec.reconcile("Dataset", NS, name, idx)
    assert rec.tick_period() == 10.0  # 20 unfinished objects at 2 re-checks per second

    before = kube.gets
    clock[0] += 5.0  # kopf's timer fires every 5 s: skipped at the first wake-up ...
    for name in names:
        rec.tick("Dataset", NS, name, idx)
    assert kube.gets == before
    clock[0] += 5.0  # ... reconciled at the second
    for name in names:
        rec.tick("Dataset", NS, name, idx)
    assert kube.gets == before + len(names)


def test_finished_and_deleted_objects_leave_the_count(clock):
    names = [f"d{i}" for i in range(10)]
    rec, kube = make(names, enforcement_interval=1.0, max_ticks_per_second=1.0)
    idx = {name: {} for name in INDEXES}
    for name in names:
        rec.reconcile("Dataset", NS, name, idx)
    assert rec.tick_period() == 10.0

    for name in names[:4]:
        kube.objects[name]["status"]["phase"] = "Ready"
        rec.reconcile("Dataset", NS, name, idx)
    del kube.objects["d9"]
    rec.reconcile("Dataset", NS, "d9", idx)
    assert rec.tick_period() == 5.0  # d4..d8 remain
