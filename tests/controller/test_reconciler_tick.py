"""After every reconcile of an unfinished object the operator schedules its next look (a
controller's "requeue after"): every `enforcement_interval`, stretched under load so that
these re-checks never ask more than `max_ticks_per_second` reconciles; sooner when a limit
comes due; never for a finished or deleted object."""

from __future__ import annotations

import copy

import kopf
import pytest

from genforge_operator.config import OperatorConfig
from genforge_operator.reconciler import Reconciler

NS = "team-a"
INDEXES = ("trainingrun_index", "finetune_index", "pool_index", "model_index", "dataset_index", "budget_index",
           "job_index", "pod_index")


class FakeKube:
    """The few calls a Dataset's first reconcile makes."""

    def __init__(self):
        self.objects: dict[str, dict] = {}

    def get(self, kind, namespace, name):
        body = self.objects.get(name)
        return copy.deepcopy(body) if body else None

    def get_job(self, namespace, name):
        return None

    def create(self, obj):
        pass

    def patch_status(self, kind, namespace, name, patch):
        if name in self.objects and patch:
            self.objects[name].setdefault("status", {}).update(patch)


def dataset(name: str) -> dict:
    return {"apiVersion": "genforge.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
            "spec": {"source": {"uri": "synthetic://shapes?count=8&size=32"}}, "status": {}}


MADE: list[Reconciler] = []


@pytest.fixture(autouse=True)
def no_events_and_no_threads_left(monkeypatch):
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    yield
    while MADE:  # their re-check queues must not call into later tests
        MADE.pop().close()


def reconciled(names, **config) -> tuple[Reconciler, FakeKube, dict]:
    kube = FakeKube()
    for name in names:
        kube.objects[name] = dataset(name)
    rec = Reconciler(kube, OperatorConfig(**config))
    MADE.append(rec)
    idx = {name: {} for name in INDEXES}
    for name in names:
        rec.reconcile("Dataset", NS, name, idx)
    return rec, kube, idx


def due_in(rec: Reconciler, name: str) -> float | None:
    return rec._rechecks.due_in(("Dataset", NS, name))


def test_an_unfinished_object_is_looked_at_again_after_the_enforcement_interval():
    rec, _, _ = reconciled(["d0"], enforcement_interval=30.0, max_ticks_per_second=1.0)
    assert rec.tick_period() == 30.0
    assert 29.0 < due_in(rec, "d0") <= 30.0


def test_many_unfinished_objects_stretch_the_period_to_the_rate_limit():
    names = [f"d{i}" for i in range(40)]
    rec, _, _ = reconciled(names, enforcement_interval=5.0, max_ticks_per_second=2.0)
    assert rec.tick_period() == 20.0  # 40 objects at 2 re-checks per second
    assert 19.0 < due_in(rec, names[-1]) <= 20.0  # scheduled when all 40 were counted
    assert 4.0 < due_in(rec, names[0]) <= 5.0  # scheduled when it was the only one


def test_finished_and_deleted_objects_leave_the_count_and_are_not_looked_at_again():
    names = [f"d{i}" for i in range(10)]
    rec, kube, idx = reconciled(names, enforcement_interval=1.0, max_ticks_per_second=1.0)
    assert rec.tick_period() == 10.0
    for name in names[:4]:
        kube.objects[name]["status"]["phase"] = "Ready"
        rec.reconcile("Dataset", NS, name, idx)
    del kube.objects["d9"]
    rec.reconcile("Dataset", NS, "d9", idx)
    assert rec.tick_period() == 5.0  # d4..d8 remain


def test_a_failing_reconcile_is_retried_later():
    rec, kube, idx = reconciled(["d0"], enforcement_interval=30.0, max_ticks_per_second=1.0)

    def broken(*args):
        raise RuntimeError("API server unreachable")

    kube.get = broken
    rec._rechecks.close()
    rec._rechecks = type(rec._rechecks)(workers=1)  # nothing pending
    with pytest.raises(RuntimeError):
        rec.reconcile("Dataset", NS, "d0", idx)
    assert due_in(rec, "d0") is not None


def test_the_timer_safety_net_skips_objects_looked_after_and_takes_the_overlooked(monkeypatch):
    """kopf's per-object timer re-checks only an object with no re-check pending that nobody
    looked at for `safety_net_seconds` (a new one: since it was created) — never one whose
    create handler is merely waiting for a thread, never one with a re-check pending."""
    from genforge_operator import reconciler as module

    rec, kube, idx = reconciled(["d0"], enforcement_interval=5.0, max_ticks_per_second=1.0)
    assert rec.safety_net_seconds() == module.SAFETY_NET_SECONDS  # one object: 2 × 5 s < 15 s
    assert not rec.overlooked("Dataset", NS, "d0")  # its re-check is pending
    rec._rechecks.close()
    rec._rechecks = type(rec._rechecks)(workers=1)  # the re-check lost
    assert not rec.overlooked("Dataset", NS, "d0")  # but it was looked at just now
    now = module.time.time()
    monkeypatch.setattr(module.time, "time", lambda: now + module.SAFETY_NET_SECONDS + 1)
    assert rec.overlooked("Dataset", NS, "d0")

    # never reconciled: counted from its creation
    created = module.formats.timestamp(module.datetime.fromtimestamp(now, module.UTC))
    assert rec.overlooked("Dataset", NS, "new", created)  # 16 s after it was created
    monkeypatch.setattr(module.time, "time", lambda: now + 3)
    assert not rec.overlooked("Dataset", NS, "new", created)  # its create handler may still come
    assert rec.overlooked("Dataset", NS, "new", None)  # no creation time: look


def test_the_safety_net_waits_longer_when_many_objects_are_unfinished():
    names = [f"d{i}" for i in range(40)]
    rec, _, _ = reconciled(names, enforcement_interval=5.0, max_ticks_per_second=2.0)
    assert rec.safety_net_seconds() == 40.0  # twice the 20 s period of 40 objects at 2 a second


class JobKube(FakeKube):
    """A run's reconcile reads its Job back only when neither the Job index nor this
    process's own create answer has it."""

    def __init__(self):
        super().__init__()
        self.job_reads = 0

    def get_job(self, namespace, name):
        self.job_reads += 1
        return None


def test_a_job_this_process_just_created_is_not_read_back(monkeypatch):
    """The reconcile after the one that created a run's Job uses the create's answer while
    the Job index has not caught up (at load its watch lags seconds behind); it reads the Job
    back only once that answer is too old to stand for it."""
    from genforge_operator import reconciler as module
    from genforge_operator.reconcile import Outcome

    kube = JobKube()
    answer = {"kind": "Job", "metadata": {"name": "d0-job", "namespace": NS, "uid": "job-uid"}, "spec": {}}
    kube.create = lambda obj: answer if obj["kind"] == "Job" else None
    kube.objects["d0"] = dataset("d0")
    seen: list = []

    def decide(observed, config):
        seen.append(observed.job)
        if observed.body_status.get("job"):
            return Outcome(status={"job": "d0-job"})
        return Outcome(status={"job": "d0-job"}, create=[{"kind": "Job", "metadata": {"name": "d0-job", "namespace": NS}}])

    monkeypatch.setattr(module, "reconcile_dataset", decide)
    rec = Reconciler(kube, OperatorConfig())
    MADE.append(rec)
    idx = {name: {} for name in INDEXES}
    rec.reconcile("Dataset", NS, "d0", idx)  # creates the Job
    rec.reconcile("Dataset", NS, "d0", idx)  # the index has no Job yet
    assert seen == [None, answer] and kube.job_reads == 0
    later = module.time.monotonic() + module.CREATED_JOB_MEMO_SECONDS + 1
    monkeypatch.setattr(module.time, "monotonic", lambda: later)
    rec.reconcile("Dataset", NS, "d0", idx)  # too old to stand for the Job now: read it
    assert kube.job_reads == 1 and seen[-1] is None
    assert (NS, "d0-job") not in rec._created_jobs


def test_job_and_pod_events_settle_longer_at_load():
    from genforge_operator import reconciler as module

    rec, _, _ = reconciled(["d0"], enforcement_interval=5.0, max_ticks_per_second=20.0)
    assert rec.settle_seconds(1.0) == 1.0  # one object: the quiet second
    names = [f"d{i}" for i in range(300)]
    busy, _, _ = reconciled(names, enforcement_interval=5.0, max_ticks_per_second=20.0)
    assert busy.settle_seconds(1.0) == 1.5  # 300 objects: 15 s period / 10
    many = [f"d{i}" for i in range(2000)]
    crowded, _, _ = reconciled(many, enforcement_interval=5.0, max_ticks_per_second=20.0)
    assert crowded.settle_seconds(1.0) == module.MAX_SETTLE_SECONDS
