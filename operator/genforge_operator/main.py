"""The kopf operator: settings, indexes and thin handlers.

Every handler ends in `Reconciler.reconcile(kind, namespace, name)`: fetch the object,
build the observation from kopf's in-memory indexes (pools, models, datasets, budgets,
runs, Jobs, pods — no per-reconcile list calls, so a thousand runs stay cheap), call the
pure decisions in `reconcile.py`, apply the outcome. Level-based: any trigger, any
number of times, converges to the same state.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime

import kopf

from . import kube, metrics, money
from .api import GROUP, VERSION, SpecError, parse_resource
from .builders import build_trainer_service_account
from .config import OperatorConfig
from .kube import Kube, merge_patch
from .money.periods import retire
from .naming import LABEL_MANAGED_BY, LABEL_UID, MANAGER, owner_selector
from .observe import pod_run, rank_zero
from .plan import Catalog
from .reconcile import FINAL_PHASES, Observed, Outcome, final_status, reconcile_dataset, reconcile_run
from .registry import RegistryBusy, add_version

log = logging.getLogger("genforge")
CONFIG = OperatorConfig.from_env()
metrics.register_store_handlers()  # gauges are derived from the latest status of every resource
MANAGED = {LABEL_MANAGED_BY: MANAGER}
RUN_PLURALS = {"TrainingRun": "trainingruns", "FineTune": "finetunes"}
OWNED_PLURALS = {"Dataset": "datasets", **RUN_PLURALS}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    # kopf's bookkeeping (handler progress, last-handled spec) goes to annotations under
    # our own prefix, not to `status`: the CRDs' status schemas stay strict (no
    # preserve-unknown-fields), so anything kopf wrote to status would be pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # A silent watch stream must never stall the operator.
    settings.watching.server_timeout = int(os.environ.get("GENFORGE_WATCH_SERVER_TIMEOUT", "300"))
    # The client-side limit cuts a stream the server leaves open but silent (a dead peer).
    settings.watching.client_timeout = int(os.environ.get("GENFORGE_WATCH_CLIENT_TIMEOUT",
                                                          settings.watching.server_timeout + 30))
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = int(os.environ.get("GENFORGE_WORKERS", "8"))
    settings.posting.level = logging.INFO
    global _RECONCILER
    _RECONCILER = None  # a (re)start talks to the API server it is configured for now
    metrics.STORE.clear()  # kopf's initial listing refills it
    try:
        metrics.start_metrics_server()
    except OSError as exc:  # a taken port must not take the operator down with it
        log.error("cannot serve metrics on port %s: %s", metrics.metrics_port(), exc)
    if os.environ.get("GENFORGE_PEERING"):
        settings.peering.name = os.environ["GENFORGE_PEERING"]
        settings.peering.mandatory = True
        # How long a replica's keep-alive lasts: a standby takes over this long after the
        # active replica stopped renewing it (killed without a goodbye). kopf's default: 60 s.
        settings.peering.lifetime = int(os.environ.get("GENFORGE_PEERING_LIFETIME", settings.peering.lifetime))
    else:
        settings.peering.standalone = True


@kopf.on.login()
def login(**kwargs):
    server = os.environ.get("GENFORGE_API_SERVER")
    if server:  # `genforge local` and the test harness: an emulated API server
        return kopf.ConnectionInfo(server=server, insecure=True, scheme="Bearer", token="genforge-local")
    if kube.service_account_dir() != kube.SERVICE_ACCOUNT_DIR:
        return _login_via_mapped_service_account()
    return kopf.login_via_client(**kwargs)


def _login_via_mapped_service_account() -> kopf.ConnectionInfo:
    """kopf's login_via_client, reading the pod's ServiceAccount where a local kubelet put it."""
    from kubernetes import client as k8s_client

    kube.load_cluster_config()
    config = k8s_client.Configuration.get_default_copy()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization") or ""
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
                               scheme=scheme or None, token=token or None,
                               certificate_path=config.cert_file, private_key_path=config.key_file)


# ---------------------------------------------------------------------- indexes
def _parsed(body):
    try:
        return parse_resource(dict(body))
    except SpecError as exc:
        log.warning("ignoring %s %s: %s", body.get("kind"), body.get("metadata", {}).get("name"), exc)
        return None


@kopf.index(GROUP, VERSION, "acceleratorpools")
def pool_index(body, name, **_):
    parsed = _parsed(body)
    return {name: parsed} if parsed else None


@kopf.index(GROUP, VERSION, "genmodels")
def model_index(body, namespace, **_):
    parsed = _parsed(body)
    return {namespace: parsed} if parsed else None


@kopf.index(GROUP, VERSION, "datasets")
def dataset_index(body, namespace, **_):
    parsed = _parsed(body)
    return {namespace: parsed} if parsed else None


@kopf.index(GROUP, VERSION, "budgets")
def budget_index(body, namespace, **_):
    parsed = _parsed(body)
    return {namespace: parsed} if parsed else None


@kopf.index(GROUP, VERSION, "trainingruns")
def trainingrun_index(body, namespace, **_):
    parsed = _parsed(body)
    return {namespace: parsed} if parsed else None


@kopf.index(GROUP, VERSION, "finetunes")
def finetune_index(body, namespace, **_):
    parsed = _parsed(body)
    return {namespace: parsed} if parsed else None


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def job_index(body, labels, **_):
    uid = labels.get(LABEL_UID)
    return {uid: dict(body)} if uid else None


@kopf.index("", "v1", "pods", labels=MANAGED)
def pod_index(body, labels, **_):
    uid = labels.get(LABEL_UID)
    return {uid: dict(body)} if uid else None


def _values(index, key) -> list:
    return list(index.get(key, ())) if index is not None else []


# ---------------------------------------------------------------------- reconciler
class Reconciler:
    def __init__(self, kube: Kube, config: OperatorConfig):
        self.kube = kube
        self.config = config
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._timers: dict[str, tuple[float, threading.Timer]] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks[key]

    def catalog(self, namespace: str, idx: dict) -> Catalog:
        runs = _values(idx["trainingrun_index"], namespace) + _values(idx["finetune_index"], namespace)
        return Catalog(
            pools={p.name: p for values in idx["pool_index"].values() for p in values},
            models={m.name: m for m in _values(idx["model_index"], namespace)},
            datasets={d.name: d for d in _values(idx["dataset_index"], namespace)},
            budgets=_values(idx["budget_index"], namespace),
            runs=runs,
        )

    def reconcile(self, kind: str, namespace: str, name: str, idx: dict, logger=log) -> float | None:
        with metrics.track_reconcile(kind, handler=f"reconcile-{kind}"):
            return self._reconcile(kind, namespace, name, idx)

    def _reconcile(self, kind: str, namespace: str, name: str, idx: dict) -> float | None:
        body = self.kube.get(kind, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        uid = body["metadata"]["uid"]
        with self._lock(uid):
            body = self.kube.get(kind, namespace, name) or body
            try:
                resource = parse_resource(body)
            except SpecError as exc:
                # The schema should have caught it: say so on the object, never crash.
                self.kube.patch_status(kind, namespace, name, {"phase": "Failed", "conditions": [{
                    "type": "Ready", "status": "False", "reason": "InvalidSpec", "message": str(exc),
                    "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}]})
                kopf.warn(body, reason="InvalidSpec", message=str(exc))
                return None
            job = next(iter(_values(idx["job_index"], uid)), None)
            pods = _values(idx["pod_index"], uid)
            job_name = (body.get("status") or {}).get("job")
            if job is None and job_name:  # the index may not have caught up with our own create
                job = self.kube.get_job(namespace, job_name)
            catalog = self.catalog(namespace, idx)
            progress = None
            if kind in RUN_PLURALS and job is not None and (body.get("status") or {}).get("phase") == "Running":
                zero = rank_zero([pod_run(p) for p in pods])
                if zero is not None and zero.phase == "Running":
                    progress = self.kube.fetch_progress(zero.ip, self.config.metrics_port,
                                                        self.config.progress_timeout)
            workload = None
            if kind in RUN_PLURALS and job is not None and (resource.spec.queue_name or None) \
                    and (job.get("spec") or {}).get("suspend"):
                workload = self.kube.kueue_workload(namespace, job)  # why Kueue holds it
            observed = Observed(resource=resource, body_status=dict(body.get("status") or {}),
                                catalog=catalog, job=job, pods=pods, progress=progress,
                                now=datetime.now(UTC), workload=workload)
            decide = reconcile_dataset if kind == "Dataset" else reconcile_run
            outcome = decide(observed, self.config)
            self.apply(kind, body, outcome)
            if outcome.requeue_after is not None and outcome.requeue_after < self.config.enforcement_interval:
                self.look_again(uid, outcome.requeue_after, kind, namespace, name, idx)
            return outcome.requeue_after

    def look_again(self, uid: str, delay: float, kind: str, namespace: str, name: str, idx: dict) -> None:
        """A one-shot re-check sooner than the timers' interval: when a limit is due.

        This is what bounds overspend by the moment a limit is reached rather than by the
        enforcement interval. One pending re-check per object; an earlier one replaces it.
        """
        due = time.monotonic() + max(0.05, delay)
        with self._guard:
            pending = self._timers.get(uid)
            if pending is not None and pending[0] <= due:
                return
            if pending is not None:
                pending[1].cancel()
            context = contextvars.copy_context()  # kopf's posting settings live in context variables

            def fire():
                with self._guard:
                    if self._timers.get(uid, (None, None))[1] is timer:
                        del self._timers[uid]
                try:
                    context.run(self.reconcile, kind, namespace, name, idx)
                except Exception:  # the next timer tick or event retries
                    log.exception("re-check of %s %s/%s failed", kind, namespace, name)

            timer = threading.Timer(max(0.05, delay), fire)
            timer.daemon = True
            self._timers[uid] = (due, timer)
            timer.start()

    def apply(self, kind: str, body: dict, outcome: Outcome) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if any(obj["kind"] == "Job" for obj in outcome.create):
            self.kube.create(build_trainer_service_account(namespace, self.config))
        for obj in outcome.create:
            self.kube.create(obj)
        job_name = outcome.status.get("job")
        if outcome.job_patch and job_name:
            self.kube.patch_job(namespace, job_name, outcome.job_patch)
        if outcome.delete_job and job_name:
            self.kube.delete_job(namespace, job_name)
        if outcome.new_version is not None:
            try:
                version = add_version(self.kube, namespace, body, outcome.new_version, on_note=_promotion_event)
            except RegistryBusy as exc:  # not Succeeded without its version: the next pass retries
                raise kopf.TemporaryError(str(exc), delay=1) from exc
            if version:
                outcome.status["version"] = version
        if outcome.measure is not None and outcome.status.get("pool"):
            self.record_measurement(outcome.status["pool"], outcome.measure)
        patch = merge_patch(dict(body.get("status") or {}), outcome.status)
        self.kube.patch_status(kind, namespace, name, patch)
        _count_transition(kind, dict(body.get("status") or {}), outcome.status)
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


    def record_measurement(self, pool_name: str, measure, attempts: int = 5) -> None:
        """Fold a run's throughput into the pool's status, under an optimistic lock."""
        for _ in range(attempts):
            body = self.kube.get("AcceleratorPool", None, pool_name)
            if body is None:
                return
            measured = measure(parse_resource(body))
            if self.kube.replace_status_guarded("AcceleratorPool", None, pool_name,
                                                body["metadata"]["resourceVersion"], {"measured": measured}):
                return


ENFORCEMENT_REASONS = ("MaxCostReached", "MaxDurationReached", "BudgetExhausted", "DeadlineExceeded")


def _promotion_event(model: dict, condition: dict) -> None:
    """A Warning Event on the GenModel when a new version was not compared for promotion."""
    kopf.event(model, type="Warning", reason=condition["reason"], message=condition["message"][:1024])


def _count_transition(kind: str, before: dict, after: dict) -> None:
    """The counters: runs finished, enforcement actions, admissions refused (on transitions only)."""
    old, new = before.get("phase"), after.get("phase")
    if old == new or kind == "Dataset":
        return
    ready = next((c for c in after.get("conditions") or [] if c.get("type") == "Ready"), {})
    if new in ("Succeeded", "Failed"):
        metrics.record_run_finished(kind, new)
    if new in ("BudgetExceeded", "Suspended") and ready.get("reason") in ENFORCEMENT_REASONS:
        metrics.record_enforcement("Stop" if new == "BudgetExceeded" else "Suspend")
    admitted = next((c for c in after.get("conditions") or [] if c.get("type") == "Admitted"), {})
    if new in ("Waiting", "Failed") and admitted.get("status") == "False":
        metrics.record_admission_refused(admitted.get("reason", ""))


_RECONCILER: Reconciler | None = None


def reconciler() -> Reconciler:
    global _RECONCILER
    if _RECONCILER is None:
        _RECONCILER = Reconciler(Kube.from_env(), CONFIG)
    return _RECONCILER


def _indexes(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k.endswith("_index")}


# ---------------------------------------------------------------------- handlers
def _register_owned(kind: str, plural: str) -> None:
    @kopf.on.resume(GROUP, VERSION, plural, id=f"{plural}-resume")
    @kopf.on.create(GROUP, VERSION, plural, id=f"{plural}-create")
    @kopf.on.update(GROUP, VERSION, plural, id=f"{plural}-update")
    def _changed(namespace, name, logger, **kwargs):
        reconciler().reconcile(kind, namespace, name, _indexes(kwargs), logger)

    def _active(status, **_):
        return (status or {}).get("phase") not in FINAL_PHASES

    @kopf.timer(GROUP, VERSION, plural, interval=CONFIG.enforcement_interval, initial_delay=1.0,
                when=_active, id=f"{plural}-tick")
    def _tick(namespace, name, logger, **kwargs):
        reconciler().reconcile(kind, namespace, name, _indexes(kwargs), logger)


for _kind, _plural in OWNED_PLURALS.items():
    _register_owned(_kind, _plural)


def _retire_from_budgets(namespace: str, body: dict, idx: dict, attempts: int = 5) -> None:
    """A deleted run's spending stays on the Budgets that covered it (no way around a Budget)."""
    run = _parsed(body)
    if run is None:
        return
    kube = reconciler().kube
    # Its pods, read now (not from the index, which may lag): the time they really ran.
    pods = kube.list_pods(namespace, owner_selector(run.uid))
    observed = Observed(resource=run, body_status=dict(body.get("status") or {}),
                        catalog=reconciler().catalog(namespace, idx),
                        job=next(iter(_values(idx["job_index"], run.uid)), None), pods=pods, now=datetime.now(UTC))
    run = _parsed({**body, "status": final_status(observed)})
    if run is None:
        return
    for budget_resource in _values(idx["budget_index"], namespace):
        for _ in range(attempts):
            current = kube.get("Budget", namespace, budget_resource.name)
            if current is None:
                break
            retired = retire(parse_resource(current), run, datetime.now(UTC))
            if retired is None or kube.replace_status_guarded(
                    "Budget", namespace, budget_resource.name, current["metadata"]["resourceVersion"],
                    {"retired": retired}):
                break


def _register_deletion(plural: str) -> None:
    @kopf.on.delete(GROUP, VERSION, plural, id=f"{plural}-delete")
    def _deleted(body, namespace, **kwargs):
        _retire_from_budgets(namespace, dict(body), _indexes(kwargs))


for _plural in RUN_PLURALS.values():
    _register_deletion(_plural)


def _owner_of(labels: dict, idx: dict) -> tuple[str, str, str] | None:
    uid = labels.get(LABEL_UID)
    for index_name, kind in (("trainingrun_index", "TrainingRun"), ("finetune_index", "FineTune"),
                             ("dataset_index", "Dataset")):
        for values in idx[index_name].values():
            for r in values:
                if r.uid == uid:
                    return kind, r.namespace, r.name
    return None


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
def child_changed(labels, logger, **kwargs):
    idx = _indexes(kwargs)
    owner = _owner_of(labels, idx)
    if owner:
        reconciler().reconcile(*owner, idx, logger)


def _dependents(namespace: str, idx: dict, predicate) -> list[tuple[str, str, str]]:
    out = []
    for index_name, kind in (("trainingrun_index", "TrainingRun"), ("finetune_index", "FineTune")):
        for r in _values(idx[index_name], namespace):
            if r.status.phase not in ("Succeeded", "Failed") and predicate(r):
                out.append((kind, r.namespace, r.name))
    return out


@kopf.on.field(GROUP, VERSION, "datasets", field="status.phase")
def dataset_phase_changed(namespace, name, new, logger, **kwargs):
    """Runs waiting for this Dataset start as soon as it is Ready — no polling."""
    if new != "Ready":
        return
    idx = _indexes(kwargs)
    for owner in _dependents(namespace, idx, lambda r: r.spec.dataset_ref.name == name):
        reconciler().reconcile(*owner, idx, logger)


@kopf.on.field(GROUP, VERSION, "genmodels", field="status.latest")
def model_version_added(namespace, name, logger, **kwargs):
    idx = _indexes(kwargs)
    for owner in _dependents(namespace, idx, lambda r: r.kind == "FineTune" and r.spec.base_model.name == name):
        reconciler().reconcile(*owner, idx, logger)


@kopf.on.create(GROUP, VERSION, "budgets", id="budgets-create")
@kopf.on.update(GROUP, VERSION, "budgets", id="budgets-update", field="spec")
def budget_changed(namespace, logger, **kwargs):
    """A raised or new Budget: re-admit the runs it covers."""
    idx = _indexes(kwargs)
    for owner in _dependents(namespace, idx, lambda r: r.status.phase in ("Waiting", "BudgetExceeded")):
        reconciler().reconcile(*owner, idx, logger)


@kopf.timer(GROUP, VERSION, "budgets", interval=10.0, initial_delay=1.0, id="budgets-tick")
def budget_tick(body, namespace, **kwargs):
    """A Budget's status: spent in the current period, remaining, warnings."""
    idx = _indexes(kwargs)
    catalog = reconciler().catalog(namespace, idx)
    status, events = money.budget_status(parse_resource(dict(body)), catalog, datetime.now(UTC))
    patch = merge_patch(dict(body.get("status") or {}), status)
    reconciler().kube.patch_status("Budget", namespace, body["metadata"]["name"], patch)
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
