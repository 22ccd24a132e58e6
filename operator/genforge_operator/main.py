"""The kopf entry point: settings, login, indexes and handlers — nothing else.

Every handler ends in `Reconciler.reconcile(kind, namespace, name, idx)` (`reconciler.py`),
which observes, calls the pure decision in `reconcile.py` and applies it. The indexes
hold every genforge object and the Jobs and pods the operator made, parsed once per
change, so a reconcile makes no list calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import kopf

from . import kube, metrics
from .api import FINALIZER, GROUP, VERSION
from .config import OperatorConfig
from .kube import Kube
from .money import calibration_run
from .naming import LABEL_CALIBRATION_FOR, LABEL_MANAGED_BY, LABEL_UID, MANAGER
from .observe import job_view, pod_view
from .reconciler import (
    UID_INDEXES,
    Reconciler,
    fine_tunes,
    held_by_money,
    owner_of,
    parsed,
    retire_from_budgets,
    unfinished_runs,
    update_budget,
    waits_for_dataset,
)
from .vocabulary import FINAL_PHASES, DatasetPhase

log = logging.getLogger("genforge")
CONFIG = OperatorConfig.from_env()
metrics.register_store_handlers()  # gauges are derived from the latest status of every resource
MANAGED = {LABEL_MANAGED_BY: MANAGER}
RUN_PLURALS = {"TrainingRun": "trainingruns", "FineTune": "finetunes"}
OWNED_PLURALS = {"Dataset": "datasets", **RUN_PLURALS}
_RECONCILER: Reconciler | None = None


class DiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled configuration in annotations under our prefix — except for the
    runs, which the operator follows by their essence itself (`_register_run`,
    `Reconciler.essence_changed`): kopf would
    patch that annotation on every new run, a write per run on top of its finalizer (a
    thousand runs created at once: a thousand writes and watch events fewer)."""

    def fetch(self, *, body):
        if body.get("kind") in RUN_PLURALS:
            return None
        return super().fetch(body=body)

    def store(self, *, body, patch, essence):
        if body.get("kind") in RUN_PLURALS:
            return
        super().store(body=body, patch=patch, essence=essence)


DIFFBASE = DiffBase(prefix=GROUP)


def essence_digest(body) -> bytes:
    """What kopf calls an object's essence (spec, labels, annotations but its own; no status,
    no finalizers), as a short digest: a change to it is a change the run must act on."""
    essence = DIFFBASE.build(body=body)
    return hashlib.blake2b(json.dumps(essence, sort_keys=True, default=str).encode(), digest_size=16).digest()


def reconciler() -> Reconciler:
    global _RECONCILER
    if _RECONCILER is None:
        _RECONCILER = Reconciler(Kube.from_config(CONFIG), CONFIG)
    return _RECONCILER


def _forget_reconciler() -> None:
    """Drop the reconciler and its pending re-checks (they hold the indexes of a kopf run
    that has ended; an operator restarted in the same process starts clean)."""
    global _RECONCILER
    if _RECONCILER is not None:
        _RECONCILER.close()
    _RECONCILER = None


@kopf.on.cleanup()
def cleanup(**_):
    _forget_reconciler()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    global CONFIG, _RECONCILER
    CONFIG = OperatorConfig.from_env()  # `genforge operator` may have set peering since import
    _forget_reconciler()  # a (re)start talks to the API server it is configured for now
    # kopf's bookkeeping (handler progress, last-handled spec) goes to annotations under
    # our own prefix, not to `status`: the CRDs' status schemas stay strict (no
    # preserve-unknown-fields), so anything kopf wrote to status would be pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DIFFBASE
    settings.persistence.finalizer = FINALIZER
    settings.watching.server_timeout = CONFIG.watch_server_timeout
    settings.watching.client_timeout = CONFIG.watch_client_timeout
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = CONFIG.workers
    settings.posting.level = logging.INFO
    metrics.STORE.clear()  # kopf's initial listing refills it
    try:
        metrics.start_metrics_server()
    except OSError as exc:  # a taken port must not take the operator down with it
        log.error("cannot serve metrics on port %s: %s", CONFIG.operator_metrics_port, exc)
    if CONFIG.peering:
        settings.peering.name = CONFIG.peering
        settings.peering.mandatory = True
        if CONFIG.peering_lifetime is not None:
            settings.peering.lifetime = CONFIG.peering_lifetime
    else:
        settings.peering.standalone = True


@kopf.on.login()
def login(**kwargs):
    config = OperatorConfig.from_env()
    if config.api_server:  # `genforge local` and the test harness: an emulated API server
        return kopf.ConnectionInfo(server=config.api_server, insecure=True, scheme="Bearer", token="genforge-local")
    if kube.service_account_dir(config) != kube.SERVICE_ACCOUNT_DIR:
        return _login_via_mapped_service_account(config)
    return kopf.login_via_client(**kwargs)


def _login_via_mapped_service_account(config: OperatorConfig) -> kopf.ConnectionInfo:
    """kopf's login_via_client, reading the pod's ServiceAccount where a local kubelet put it."""
    from kubernetes import client as k8s_client

    kube.load_cluster_config(config)
    client_config = k8s_client.Configuration.get_default_copy()
    header = (client_config.get_api_key_with_prefix("BearerToken")
              or client_config.get_api_key_with_prefix("authorization") or "")
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(server=client_config.host, ca_path=client_config.ssl_ca_cert,
                               insecure=not client_config.verify_ssl, scheme=scheme or None, token=token or None,
                               certificate_path=client_config.cert_file, private_key_path=client_config.key_file)


# ---------------------------------------------------------------------- indexes
# Index and event handlers are `async`: they only parse or schedule, and kopf runs async
# handlers in its event loop — a sync one costs a hop to its thread pool for every event,
# which at thousands of objects is most of the operator's time.
@kopf.index(GROUP, VERSION, "acceleratorpools")
async def pool_index(body, name, **_):
    resource = parsed(body)
    return {name: resource} if resource else None


@kopf.index(GROUP, VERSION, "genmodels")
async def model_index(body, namespace, **_):
    resource = parsed(body)
    return {namespace: resource} if resource else None


@kopf.index(GROUP, VERSION, "datasets")
async def dataset_index(body, namespace, **_):
    resource = parsed(body)
    return {namespace: resource} if resource else None


@kopf.index(GROUP, VERSION, "budgets")
async def budget_index(body, namespace, **_):
    resource = parsed(body)
    return {namespace: resource} if resource else None


@kopf.index(GROUP, VERSION, "trainingruns")
async def trainingrun_index(body, namespace, **_):
    resource = parsed(body)
    return {namespace: resource} if resource else None


@kopf.index(GROUP, VERSION, "finetunes")
async def finetune_index(body, namespace, **_):
    resource = parsed(body)
    return {namespace: resource} if resource else None


def _register_uid_index(plural: str) -> None:
    """uid -> (kind, namespace, name): a Job's or pod's owner, found without a scan."""
    @kopf.index(GROUP, VERSION, plural, id=UID_INDEXES[plural])
    async def _by_uid(body, uid, namespace, name, **_):
        return {uid: (body.get("kind"), namespace, name)}


for _plural in UID_INDEXES:
    _register_uid_index(_plural)


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def job_index(body, labels, **_):
    uid = labels.get(LABEL_UID)
    return {uid: job_view(body)} if uid else None


@kopf.index("", "v1", "pods", labels=MANAGED)
async def pod_index(body, labels, **_):
    uid = labels.get(LABEL_UID)
    return {uid: pod_view(body)} if uid else None


def _indexes(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k.endswith("_index")}


# ---------------------------------------------------------------------- handlers
def _register_dataset() -> None:
    @kopf.on.resume(GROUP, VERSION, "datasets", id="datasets-resume")
    @kopf.on.create(GROUP, VERSION, "datasets", id="datasets-create")
    @kopf.on.update(GROUP, VERSION, "datasets", id="datasets-update")
    def _changed(namespace, name, logger, **kwargs):
        reconciler().reconcile("Dataset", namespace, name, _indexes(kwargs), logger)


def _register_run(kind: str, plural: str) -> None:
    # A run is reconciled when it is new to this process (created, or listed at start-up) or
    # its essence changed — kopf's create/update/resume, decided here from the watch event
    # itself: kopf's own create handler waits for its finalizer patch to come back as an event
    # and then patches its bookkeeping annotations, two writes and a round trip before a new
    # run's Job; this way the run's first reconcile starts as its first event arrives. kopf
    # adds the finalizer that `_register_deletion`'s handler needs only after this handler
    # returns, so the reconciler puts it on itself before the run's first Job
    # (`Reconciler.apply`): a run deleted before kopf got to it still reaches that handler.
    @kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-event")
    async def _event(type, body, uid, namespace, name, **kwargs):
        if type == "DELETED":
            reconciler().forget_essence(uid)
            # Normally the deletion handler has put what the run spent on its Budgets before
            # its finalizer came off. A finalizer taken off by hand (`kubectl patch … finalizers:
            # null`, which a user who may patch runs can do) skips that handler: record it here,
            # onto the Budgets that lack it, from the run's last status and its pods.
            await asyncio.to_thread(retire_from_budgets, reconciler(), namespace, dict(body), _indexes(kwargs),
                                    missing_only=True)
            return
        if reconciler().essence_changed(uid, essence_digest(body)):
            reconciler().recheck_soon(0.0, kind, namespace, name, _indexes(kwargs))


def _register_tick(kind: str, plural: str) -> None:
    # Each reconcile of an unfinished object schedules its next re-check (Reconciler.tick_period),
    # as a controller's "requeue after" would; kopf's timer is only the safety net for an
    # object with none pending that nobody looked at for a while (Reconciler.overlooked: one
    # whose reconcile never completed, e.g. under API faults).
    def _active(status, **_):
        return (status or {}).get("phase") not in FINAL_PHASES

    @kopf.timer(GROUP, VERSION, plural, interval=CONFIG.enforcement_interval, initial_delay=1.0,
                when=_active, id=f"{plural}-tick")
    async def _tick(namespace, name, meta, **kwargs):
        # Async and only a request: a thousand runs make 200 of these a second, and none may
        # take one of kopf's handler threads or look at an object the operator is looking
        # after anyway (a new run whose first reconcile waits for a free worker included).
        if reconciler().overlooked(kind, namespace, name, meta.get("creationTimestamp")):
            reconciler().recheck_soon(0.0, kind, namespace, name, _indexes(kwargs))


_register_dataset()
for _kind, _plural in RUN_PLURALS.items():
    _register_run(_kind, _plural)
for _kind, _plural in OWNED_PLURALS.items():
    _register_tick(_kind, _plural)


def _register_deletion(plural: str) -> None:
    @kopf.on.delete(GROUP, VERSION, plural, id=f"{plural}-delete")
    def _deleted(body, namespace, **kwargs):
        retire_from_budgets(reconciler(), namespace, dict(body), _indexes(kwargs))


for _plural in RUN_PLURALS.values():
    _register_deletion(_plural)


#: A pod's status often changes several times within a second or two (scheduled,
#: started, ready); the run is reconciled once they settle (longer at load:
#: Reconciler.settle_seconds).
CHILD_SETTLE_SECONDS = 1.0


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def child_changed(labels, logger, **kwargs):
    """A Job or pod of a run changed: re-check the run a second later (a burst of changes, one reconcile)."""
    idx = _indexes(kwargs)
    owner = owner_of(labels, idx)
    if owner:
        reconciler().recheck_soon(reconciler().settle_seconds(CHILD_SETTLE_SECONDS), *owner, idx)


@kopf.on.field(GROUP, VERSION, "datasets", field="status.phase")
def dataset_phase_changed(namespace, name, new, logger, **kwargs):
    """Runs waiting for this Dataset start as soon as it is Ready — no polling."""
    if new != DatasetPhase.READY:
        return
    idx = _indexes(kwargs)
    for owner in unfinished_runs(namespace, idx, waits_for_dataset(name)):
        reconciler().reconcile(*owner, idx, logger)


@kopf.on.event(GROUP, VERSION, "acceleratorpools")
def pool_changed(body, name, type, **_):
    """A pool that asks for a calibration run (spec.calibration) gets one, and its status says
    where it stands. Event handlers keep no state on the pool (no annotations to patch)."""
    if type == "DELETED":
        return
    pool = parsed(body)
    if pool is not None and calibration_run.needs_look(pool):
        reconciler().reconcile_pool(name)


@kopf.on.event(GROUP, VERSION, "trainingruns", labels={LABEL_CALIBRATION_FOR: kopf.PRESENT})
def calibration_run_changed(annotations, type, **_):
    """A calibration run moved: its pool's Calibrated condition follows (and, once it is gone,
    a pool still unmeasured creates another)."""
    pool = calibration_run.pool_of(dict(annotations or {}))
    if pool:
        reconciler().reconcile_pool(pool)


@kopf.on.field(GROUP, VERSION, "genmodels", field="status.latest")
def model_version_added(namespace, name, logger, **kwargs):
    idx = _indexes(kwargs)
    for owner in unfinished_runs(namespace, idx, fine_tunes(name)):
        reconciler().reconcile(*owner, idx, logger)


@kopf.on.create(GROUP, VERSION, "budgets", id="budgets-create")
@kopf.on.update(GROUP, VERSION, "budgets", id="budgets-update", field="spec")
def budget_changed(namespace, logger, **kwargs):
    """A raised or new Budget: re-admit the runs it covers."""
    idx = _indexes(kwargs)
    for owner in unfinished_runs(namespace, idx, held_by_money):
        reconciler().reconcile(*owner, idx, logger)


@kopf.timer(GROUP, VERSION, "budgets", interval=10.0, initial_delay=1.0, id="budgets-tick")
def budget_tick(body, namespace, **kwargs):
    """A Budget's status: spent in the current period, remaining, warnings."""
    update_budget(reconciler(), dict(body), namespace, _indexes(kwargs))
