"""The I/O half of reconciling: read an object and its children, decide, apply.

`Reconciler.reconcile(kind, namespace, name, idx)` fetches the object, builds the
observation from kopf's in-memory indexes (`idx`: pools, models, datasets, budgets, runs,
Jobs, pods — no per-reconcile list calls, so a thousand runs stay cheap), calls the pure
decision in `reconcile.py` and applies the `Outcome` (children, status, Events, the
model registry, the pool's measurement). Level-based: any trigger, any number of times,
converges to the same state. `main.py` registers the kopf handlers that call it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import kopf

from . import conditions as cond
from . import formats, metrics, money
from .api import FINALIZER, Resource, SpecError, parse_resource
from .builders import build_trainer_service_account
from .config import OperatorConfig
from .delayed import DelayedCalls
from .kube import Kube, diff_patch
from .model_versions import add_version
from .money import calibration_run
from .naming import LABEL_UID, calibration_name, owner_selector
from .observe import pod_run, rank_zero
from .plan import Catalog
from .reconcile import Observed, Outcome, final_status, reconcile_dataset, reconcile_run
from .vocabulary import (
    ENFORCEMENT_REASONS,
    FINAL_PHASES,
    FINAL_RUN_PHASES,
    ConditionStatus,
    ConditionType,
    Reason,
    RunPhase,
)

log = logging.getLogger("genforge")
RUN_KINDS = ("TrainingRun", "FineTune")
#: kopf index name → the kind it holds (the indexes `main.py` registers).
SERVICE_ACCOUNT_RECHECK_SECONDS = 60.0
#: kopf's timer re-checks an unfinished object nobody looked at for this long (at least:
#: `Reconciler.safety_net_seconds` stretches it with the load).
SAFETY_NET_SECONDS = 15.0
#: The longest a run's Job and pod events are left to settle at load (`settle_seconds`).
MAX_SETTLE_SECONDS = 5.0
#: A Job's create answer stands for the Job for this long while the Job index catches up.
CREATED_JOB_MEMO_SECONDS = 30.0

#: The indexes of the kinds that own Jobs, by plural: uid -> (kind, namespace, name).
UID_INDEXES = {"trainingruns": "trainingrun_uid_index", "finetunes": "finetune_uid_index",
               "datasets": "dataset_uid_index"}


def parsed(body) -> Resource | None:
    """The typed resource, or None (logged) for one the schema should have refused."""
    try:
        return parse_resource(dict(body))
    except SpecError as exc:
        log.warning("ignoring %s %s: %s", body.get("kind"), body.get("metadata", {}).get("name"), exc)
        return None


def values(index, key) -> list:
    return list(index.get(key, ())) if index is not None else []


class Reconciler:
    def __init__(self, kube: Kube, config: OperatorConfig):
        self.kube = kube
        self.config = config
        self._locks: dict[tuple[str, str, str], list] = {}  # key -> [lock, threads using it]
        self._guard = threading.Lock()
        self._rechecks = DelayedCalls(config.workers)
        self._service_accounts: dict[str, float] = {}  # namespace -> when its trainer account was ensured
        #: The objects not yet finished, each with a re-check pending (`tick_period`).
        self._unfinished: set[tuple[str, str, str]] = set()
        #: When each unfinished object was last looked at (wall clock): `overlooked`.
        self._looked: dict[tuple[str, str, str], float] = {}
        #: Jobs this process created, until the Job index has them (namespace, name) ->
        #: (the API server's answer, when): the next reconcile need not read them back.
        self._created_jobs: dict[tuple[str, str], tuple[dict, float]] = {}
        #: The essence (spec, labels, annotations: `main.essence_digest`) of each run as this
        #: process last acted on it, by uid: a watch event is a change only when it differs.
        self._essences: dict[str, bytes] = {}

    @contextlib.contextmanager
    def _exclusive(self, key: tuple[str, str, str]) -> Iterator[None]:
        """One reconcile at a time per object; the lock is dropped when no thread uses it
        (thousands of runs come and go without leaving a lock each behind)."""
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]

    def catalog(self, namespace: str, idx: dict) -> Catalog:
        runs = values(idx["trainingrun_index"], namespace) + values(idx["finetune_index"], namespace)
        return Catalog(
            pools={p.name: p for values in idx["pool_index"].values() for p in values},
            models={m.name: m for m in values(idx["model_index"], namespace)},
            datasets={d.name: d for d in values(idx["dataset_index"], namespace)},
            budgets=values(idx["budget_index"], namespace),
            runs=runs,
        )

    def reconcile(self, kind: str, namespace: str, name: str, idx: dict, logger=log) -> float | None:
        with metrics.track_reconcile(kind, handler=f"reconcile-{kind}"):
            try:
                return self._reconcile(kind, namespace, name, idx)
            except Exception:
                # Whatever failed, look again (kopf's retry or an event may come sooner).
                self.recheck_soon(self.tick_period(), kind, namespace, name, idx)
                raise

    def overlooked(self, kind: str, namespace: str, name: str, created: str | None = None) -> bool:
        """True for an object with no re-check pending that nobody has looked at for
        `safety_net_seconds` (since it was created, when never): what kopf's timer re-checks.

        Neither a run whose re-check is pending nor a new one whose create handler is
        still waiting for a free thread: the safety net must not double the work at load.
        """
        key = (kind, namespace, name)
        if self._rechecks.due_in(key) is not None:
            return False
        last = self._looked.get(key)
        if last is None and created:
            try:
                last = formats.parse_timestamp(created).timestamp()
            except (ValueError, AttributeError):
                last = None
        return last is None or time.time() - last >= self.safety_net_seconds()

    def essence_changed(self, uid: str, digest: bytes) -> bool:
        """True when a run is new to this process or its essence differs from the last one
        seen (kopf's create, resume and update in one): a status write — the operator's own
        or anyone's — or a finalizer is not a change to act on (its Job and pod events are)."""
        if self._essences.get(uid) == digest:
            return False
        self._essences[uid] = digest
        return True

    def forget_essence(self, uid: str) -> None:
        self._essences.pop(uid, None)

    def settle_seconds(self, quiet: float) -> float:
        """How long to let a run's Job and pod events settle before one reconcile: `quiet`
        seconds, up to `MAX_SETTLE_SECONDS` as the re-check period stretches with the load
        (a thousand Jobs starting: fewer, later looks at each run, and the new runs that
        wait for their Job are not kept waiting by them)."""
        return min(MAX_SETTLE_SECONDS, max(quiet, self.tick_period() / 10))

    def safety_net_seconds(self) -> float:
        """How long an unfinished object may go unlooked-at before kopf's timer re-checks it."""
        return max(SAFETY_NET_SECONDS, 2 * self.tick_period())

    def close(self) -> None:
        """Stop the re-check queue (tests and a stopping operator)."""
        self._rechecks.close()

    def tick_period(self) -> float:
        """Seconds between two periodic re-checks of one unfinished object at the present load.

        Every unfinished object is looked at again after each reconcile — cost accrues,
        progress moves, pods may stop starting — every `enforcement_interval`, stretched so
        that these re-checks never ask more than `max_ticks_per_second` reconciles: with a
        thousand runs waiting for their pods a fixed 5 s would be 200 reconciles a second,
        and the events that move runs forward would queue behind them. Limits that come due
        sooner are re-checked at their moment (a shorter requeue), and the Job's
        activeDeadlineSeconds is the backstop.
        """
        return max(self.config.enforcement_interval, len(self._unfinished) / self.config.max_ticks_per_second)

    def _reconcile(self, kind: str, namespace: str, name: str, idx: dict) -> float | None:
        # Locked by name, then read once: what is decided is always the object as it is now
        # (a run deleted and created again under its name simply waits its turn).
        key = (kind, namespace, name)
        with self._exclusive(key):
            self._looked[key] = time.time()
            body = self.kube.get(kind, namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                self._forget(key)
                return None
            uid = body["metadata"]["uid"]
            try:
                resource = parse_resource(body)
            except SpecError as exc:
                # The schema should have caught it: say so on the object, never crash.
                self.kube.patch_status(kind, namespace, name, {"phase": RunPhase.FAILED, "conditions": [{
                    "type": ConditionType.READY, "status": ConditionStatus.FALSE, "reason": Reason.INVALID_SPEC,
                    "message": str(exc), "lastTransitionTime": formats.timestamp(datetime.now(UTC))}]})
                kopf.warn(body, reason=Reason.INVALID_SPEC, message=str(exc))
                return None
            job = next(iter(values(idx["job_index"], uid)), None)
            pods = values(idx["pod_index"], uid)
            job_name = (body.get("status") or {}).get("job")
            if job is None and job_name:  # the index may not have caught up with our own create
                job = self._just_created_job(namespace, job_name) or self.kube.get_job(namespace, job_name)
            elif job_name:
                self._created_jobs.pop((namespace, job_name), None)
            catalog = self.catalog(namespace, idx)
            progress = None
            if kind in RUN_KINDS and job is not None and (body.get("status") or {}).get("phase") == RunPhase.RUNNING:
                zero = rank_zero([pod_run(p) for p in pods])
                if zero is not None and zero.phase == "Running":  # the pod's phase
                    progress = self.kube.fetch_progress(zero.ip, self.config.metrics_port,
                                                        self.config.progress_timeout)
            workload = None
            if kind in RUN_KINDS and job is not None and (resource.spec.queue_name or None) \
                    and (job.get("spec") or {}).get("suspend"):
                workload = self.kube.kueue_workload(namespace, job)  # why Kueue holds it
            observed = Observed(resource=resource, body_status=dict(body.get("status") or {}),
                                catalog=catalog, job=job, pods=pods, progress=progress,
                                now=datetime.now(UTC), workload=workload)
            decide = reconcile_dataset if kind == "Dataset" else reconcile_run
            outcome = decide(observed, self.config)
            self.apply(kind, body, outcome)
            if (outcome.status.get("phase") or observed.body_status.get("phase")) in FINAL_PHASES:
                self._forget(key)
                return None
            self._unfinished.add(key)
            period = self.tick_period()
            requeue = outcome.requeue_after
            self.recheck_soon(requeue if requeue is not None and requeue < period else period,
                              kind, namespace, name, idx)
            return requeue

    def _forget(self, key: tuple[str, str, str]) -> None:
        self._unfinished.discard(key)
        self._looked.pop(key, None)

    def _remember_created_job(self, namespace: str, job: dict) -> None:
        now = time.monotonic()
        if len(self._created_jobs) >= 1000:  # runs deleted before their next reconcile
            for key in [k for k, (_, when) in self._created_jobs.items() if now - when > CREATED_JOB_MEMO_SECONDS]:
                del self._created_jobs[key]
        self._created_jobs[(namespace, job["metadata"]["name"])] = (job, now)

    def _just_created_job(self, namespace: str, name: str) -> dict | None:
        """The Job this process created a moment ago, as the API server answered the create,
        while the Job index has not caught up (it does within a second, unless the watch
        lags at load); None when none or too old to stand for the Job as it is now."""
        entry = self._created_jobs.get((namespace, name))
        if entry is None:
            return None
        job, when = entry
        if time.monotonic() - when > CREATED_JOB_MEMO_SECONDS:
            self._created_jobs.pop((namespace, name), None)
            return None
        return job

    def recheck_soon(self, delay: float, kind: str, namespace: str, name: str, idx: dict) -> None:
        """Reconcile the object again in `delay` seconds (one pending re-check per object; a
        sooner one replaces a later one).

        This is what bounds overspend by the moment a limit is reached rather than by the
        periodic re-check, and what turns a burst of Job and pod events into one reconcile.
        """
        self._rechecks.schedule((kind, namespace, name), delay, self._recheck, kind, namespace, name, idx)

    def _recheck(self, kind: str, namespace: str, name: str, idx: dict) -> None:
        try:
            self.reconcile(kind, namespace, name, idx)
        except kopf.TemporaryError as exc:  # e.g. StatusConflict: other writers won; try again
            log.warning("re-check of %s %s/%s: %s; again in %s s", kind, namespace, name, exc, exc.delay)
            self.recheck_soon(exc.delay or 1.0, kind, namespace, name, idx)

    def apply(self, kind: str, body: dict, outcome: Outcome) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        creates_job = any(obj["kind"] == "Job" for obj in outcome.create)
        if creates_job and kind in RUN_KINDS and self.kube.ensure_finalizer(kind, body, FINALIZER) is None:
            # Deleted meanwhile: nothing starts for it. (With the finalizer on before its Job, a
            # run deleted at any moment reaches the deletion handler that puts what it spent
            # on its Budgets; kopf adds its finalizer only after the run's first event handler.)
            return
        if creates_job and self._service_account_stale(namespace):
            self.kube.create(build_trainer_service_account(namespace, self.config))
            self._service_accounts[namespace] = time.monotonic()
        for obj in outcome.create:
            created = self.kube.create(obj)
            if created and obj["kind"] == "Job":
                self._remember_created_job(namespace, created)
        job_name = outcome.status.get("job")
        if outcome.job_patch and job_name:
            self.kube.patch_job(namespace, job_name, outcome.job_patch)
        if outcome.delete_job and job_name:
            self.kube.delete_job(namespace, job_name)
        if outcome.measure is not None and outcome.status.get("pool"):
            # before the version: a FineTune waiting for it is admitted on the calibrated pool
            self.record_measurement(outcome.status["pool"], outcome.measure)
        if outcome.new_version is not None:
            # StatusConflict (kopf retries): never Succeeded without its version.
            version = add_version(self.kube, namespace, body, outcome.new_version, on_note=_promotion_event)
            if version:
                outcome.status["version"] = version
        patch = diff_patch(dict(body.get("status") or {}), outcome.status)
        self.kube.patch_status(kind, namespace, name, patch)
        _count_transition(kind, dict(body.get("status") or {}), outcome.status)
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])

    def _service_account_stale(self, namespace: str) -> bool:
        """The trainer's ServiceAccount is (re)created with a namespace's Jobs, but not for each
        of a thousand Jobs a minute: at most every SERVICE_ACCOUNT_RECHECK_SECONDS (a deleted
        one is back within that)."""
        made = self._service_accounts.get(namespace)
        return made is None or time.monotonic() - made > SERVICE_ACCOUNT_RECHECK_SECONDS

    def reconcile_pool(self, name: str) -> None:
        """A pool's calibration run on demand (`spec.calibration`): create it while the pool is
        unmeasured, and say in the pool's status where it stands (`calibration_run.decide`)."""
        key = ("AcceleratorPool", "", name)
        with self._exclusive(key):
            body = self.kube.get("AcceleratorPool", None, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            pool = parsed(body)
            if pool is None:
                return
            request, ref = pool.spec.calibration, pool.status.calibration_run
            namespace = request.namespace if request and request.enabled and request.namespace else None
            where = (namespace, calibration_name(name)) if namespace else (ref.namespace, ref.name) if ref else None
            run_body = self.kube.get("TrainingRun", *where) if where else None
            run = parsed(run_body) if run_body else None
            now = datetime.now(UTC)
            decision = calibration_run.decide(pool, run, now)
            if decision.create and not all(self.kube.create_custom(obj) for obj in decision.create):
                decision = calibration_run.decide(pool, run, now, namespace_exists=False)
            current = dict(body.get("status") or {})
            patch = diff_patch(current, {**current, **decision.status})
            self.kube.patch_status("AcceleratorPool", None, name, patch)
            for type_, reason, message in decision.events:
                kopf.event(body, type=type_, reason=reason, message=message[:1024])

    def record_measurement(self, pool_name: str, measure) -> None:
        """Fold a run's measurements into the pool's status (measured throughput, calibration)."""
        self.kube.update_status("AcceleratorPool", None, pool_name, lambda body: measure(parse_resource(body)))


def _promotion_event(model: dict, condition: dict) -> None:
    """A Warning Event on the GenModel when a new version was not compared for promotion."""
    kopf.event(model, type="Warning", reason=condition["reason"], message=condition["message"][:1024])


def _count_transition(kind: str, before: dict, after: dict) -> None:
    """The counters: runs finished, enforcement actions, admissions refused (on transitions only)."""
    old, new = before.get("phase"), after.get("phase")
    if old == new or kind == "Dataset":
        return
    conditions = after.get("conditions") or []
    ready = cond.get_condition(conditions, ConditionType.READY) or {}
    if new in FINAL_RUN_PHASES:
        metrics.record_run_finished(kind, new)
    if new in (RunPhase.BUDGET_EXCEEDED, RunPhase.SUSPENDED) and ready.get("reason") in ENFORCEMENT_REASONS:
        metrics.record_enforcement("Stop" if new == RunPhase.BUDGET_EXCEEDED else "Suspend")
    admitted = cond.get_condition(conditions, ConditionType.ADMITTED) or {}
    if new in (RunPhase.WAITING, RunPhase.FAILED) and admitted.get("status") == ConditionStatus.FALSE:
        metrics.record_admission_refused(admitted.get("reason", ""))


# ---------------------------------------------------------------------- beyond one object
def owner_of(labels: dict, idx: dict) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the run or Dataset a Job or pod with `labels` belongs to."""
    uid = labels.get(LABEL_UID)
    for index_name in UID_INDEXES.values():
        for owner in values(idx.get(index_name), uid):
            return owner
    return None


def unfinished_runs(namespace: str, idx: dict, predicate) -> list[tuple[str, str, str]]:
    """The runs in `namespace` not yet Succeeded or Failed for which `predicate(run)` holds."""
    out = []
    for index_name, kind in (("trainingrun_index", "TrainingRun"), ("finetune_index", "FineTune")):
        for r in values(idx[index_name], namespace):
            if r.status.phase not in FINAL_RUN_PHASES and predicate(r):
                out.append((kind, r.namespace, r.name))
    return out


def waits_for_dataset(name: str):
    return lambda run: run.spec.dataset_ref.name == name


def fine_tunes(model_name: str):
    return lambda run: run.kind == "FineTune" and run.spec.base_model.name == model_name


def held_by_money(run: Resource) -> bool:
    return run.status.phase in (RunPhase.WAITING, RunPhase.BUDGET_EXCEEDED)


def retire_from_budgets(reconciler: Reconciler, namespace: str, body: dict, idx: dict, *,
                        missing_only: bool = False) -> None:
    """A deleted run's spending stays on the Budgets that covered it (no way around a Budget).

    `missing_only`: only onto Budgets that do not have the run yet (the fallback for a run
    gone without the deletion handler: its finalizer was taken off by hand), never replacing
    what the deletion handler recorded."""
    run = parsed(body)
    if run is None:
        return
    budgets = values(idx["budget_index"], namespace)
    if missing_only:  # most runs: already there (the index may lag; the fresh read below decides)
        budgets = [b for b in budgets if money.periods.covers(b, run)
                   and not any(r.uid == run.uid for r in (b.status.retired if b.status else []))]
        if not budgets:
            return
    kube = reconciler.kube
    # Its pods, read now (not from the index, which may lag): the time they really ran.
    pods = kube.list_pods(namespace, owner_selector(run.uid))
    observed = Observed(resource=run, body_status=dict(body.get("status") or {}),
                        catalog=reconciler.catalog(namespace, idx),
                        job=next(iter(values(idx["job_index"], run.uid)), None), pods=pods, now=datetime.now(UTC))
    run = parsed({**body, "status": final_status(observed)})
    if run is None:
        return
    for budget_resource in budgets:
        def change(current: dict, run: Resource = run) -> dict | None:
            if missing_only and any(r.get("uid") == run.uid for r in (current.get("status") or {}).get("retired") or []):
                return None
            retired = money.periods.retire(parse_resource(current), run, datetime.now(UTC))
            return None if retired is None else {"retired": retired}

        kube.update_status("Budget", namespace, budget_resource.name, change)


def update_budget(reconciler: Reconciler, body: dict, namespace: str, idx: dict) -> None:
    """A Budget's status: spent in the current period, remaining, warnings (as Events)."""
    catalog = reconciler.catalog(namespace, idx)
    status, events = money.budget_status(parse_resource(dict(body)), catalog, datetime.now(UTC))
    patch = diff_patch(dict(body.get("status") or {}), status)
    reconciler.kube.patch_status("Budget", namespace, body["metadata"]["name"], patch)
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
