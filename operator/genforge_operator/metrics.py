"""Every Prometheus metric the operator exports, declared in this one module.

Conventions (Prometheus naming, as in kueue): prefix `genforge_`, base units in the name
(`_seconds`, `_dollars`, `_ratio`), `_total` on counters, bounded labels only — namespace,
kind, name, pool, accelerator_type, phase, outcome, action, reason, handler, plus a pool's
measured architecture/resolution and a Budget's warn threshold. Never uids, steps or
timestamps.

Two sources:

* **Gauges derived from status at scrape time.** `ResourceStore` keeps the latest parsed
  copy of every genforge resource (fed by kopf `on.event` handlers, see
  `register_store_handlers`); `StatusCollector` turns the store into metric families on
  every scrape. Nothing is accumulated in memory, so after an operator restart the gauges
  show the same values as before, and a deleted resource disappears with its series. A
  run's cost, accelerator-seconds and running seconds are recomputed from
  `status.segments` with the one cost model (`money.accrual.accrue`) at scrape time, so they are
  live between status updates.
* **Counters and a histogram of operator activity** (runs finished, enforcement actions,
  refused admissions, reconcile latency and errors), recorded by the reconciler through
  the `record_*`/`observe_*` functions below. These reset on restart, as counters do.

Cost rates are in dollars per hour (the unit in the name): the price catalogue quotes
per accelerator-hour, and a panel then needs no `* 3600`.

`start_metrics_server()` serves `REGISTRY` on `/metrics` (port `$GENFORGE_METRICS_PORT`,
default 8080) from a daemon thread; `collect_text()` renders it for tests.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .api import GROUP, KINDS, VERSION, Resource, SpecError, parse_resource
from .config import OperatorConfig
from .formats import parse_timestamp
from .money.accrual import SECONDS_PER_HOUR, accrue, rate_per_second
from .vocabulary import DatasetPhase, Reason, RunPhase

log = logging.getLogger("genforge.metrics")

PREFIX = "genforge_"
DEFAULT_PORT = OperatorConfig.operator_metrics_port

RUN_KINDS = ("TrainingRun", "FineTune")
RUN_PHASES = tuple(RunPhase)
DATASET_PHASES = tuple(DatasetPhase)

# Every label name any genforge metric may carry (a test holds the module to it).
ALLOWED_LABELS = frozenset({
    "namespace", "kind", "name", "pool", "accelerator_type", "phase", "outcome", "action", "reason",
    "handler", "architecture", "resolution", "threshold", "metric", "bound", "part", "basis",
})

RUN_LABELS = ("namespace", "kind", "name")
RUN_POOL_LABELS = (*RUN_LABELS, "pool")  # cost families: one series per pool the run has used
POOL_LABELS = ("pool", "accelerator_type")
BUDGET_LABELS = ("namespace", "name")


# ------------------------------------------------------------------ declarations
@dataclass(frozen=True)
class GaugeDef:
    """A gauge the status collector derives from resources at scrape time."""

    name: str
    help: str
    labels: tuple[str, ...]

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))


def _gauge(name: str, help: str, labels: tuple[str, ...]) -> GaugeDef:
    return GaugeDef(PREFIX + name, help, labels)


# Per run (TrainingRun and FineTune).
RUN_RUNNING_SECONDS = _gauge(
    "run_running_seconds", "Wall-clock seconds the run has held accelerators (live, from status.segments).",
    RUN_LABELS)
RUN_ACCELERATOR_SECONDS = _gauge(
    "run_accelerator_seconds", "Accelerator-seconds the run has used on each pool (live, from status.segments).",
    RUN_POOL_LABELS)
RUN_COST = _gauge(
    "run_cost_dollars", "Cost the run has accrued on each pool (live, from status.segments).", RUN_POOL_LABELS)
RUN_COST_RATE = _gauge(
    "run_cost_rate_dollars_per_hour", "What the run costs per hour on each pool right now (0 when it holds nothing).",
    RUN_POOL_LABELS)
RUN_ESTIMATED_COST = _gauge(
    "run_estimated_cost_dollars", "The run's cost estimated before launch (status.cost.estimated).", RUN_LABELS)
RUN_ESTIMATED_SECONDS = _gauge(
    "run_estimated_duration_seconds", "The run's duration estimated before launch (status.cost.estimatedSeconds).",
    RUN_LABELS)
RUN_ESTIMATED_BOUND = _gauge(
    "run_estimated_duration_bound_seconds",
    "The low and high ends of the run's estimated duration (status.estimate.minSeconds, maxSeconds).",
    (*RUN_LABELS, "bound"))
RUN_ESTIMATED_PART = _gauge(
    "run_estimated_part_seconds",
    "Each part of the run's duration estimate (status.estimate.parts): startup, training, evaluation, checkpoints, "
    "with its basis (prior or measured on the pool).", (*RUN_LABELS, "part", "basis"))
RUN_ESTIMATE_ERROR = _gauge(
    "run_estimate_error_ratio",
    "(actual − estimated) / estimated running seconds of a finished run (status.cost.estimateError), on its pool.",
    RUN_POOL_LABELS)
RUN_COST_LIMIT = _gauge(
    "run_cost_limit_dollars", "The run's money limit (spec.budget.maxCost); absent when unlimited.", RUN_LABELS)
RUN_DURATION_LIMIT = _gauge(
    "run_duration_limit_seconds", "The run's time limit (spec.budget.maxDuration); absent when unlimited.",
    RUN_LABELS)
RUN_PROGRESS = _gauge(
    "run_progress_ratio", "Steps done over total steps, 0 to 1 (status.progress).", RUN_LABELS)
RUN_ETA = _gauge(
    "run_eta_seconds", "Seconds until the last step, as the trainer estimates it (status.progress.etaSeconds).",
    RUN_LABELS)
RUN_EVALUATION = _gauge(
    "run_evaluation", "The run's evaluation metrics once it has succeeded (status.metrics): loss, fid, kid, "
    "and the sample statistics onDataBackground, backgroundMix, backgroundNoise, dataBackgroundNoise, "
    "labelColour, statisticsSamples.", (*RUN_LABELS, "metric"))
RUN_RESTARTS = _gauge(
    "run_restarts", "Trainer pods of the run that failed and were replaced (status.restarts).", RUN_LABELS)
RUN_PODS_NOT_READY = _gauge(
    "run_pods_not_ready_seconds",
    "Seconds the Running run's trainer pods have not been running, with the pod's reason (condition PodsReady).",
    (*RUN_LABELS, "reason"))
RUN_PODS_STUCK = _gauge(
    "run_pods_stuck",
    "1 when the Running run's trainer pods have not run for the operator's podStartTimeout (Ready reason "
    "PodStartTimeout), else 0.", RUN_LABELS)
RUN_PHASE = _gauge(
    "run_phase", "1 for the run's current phase, 0 for the others (a run without status counts as Pending).",
    (*RUN_LABELS, "phase"))

# Per AcceleratorPool.
POOL_PRICE = _gauge(
    "pool_accelerator_price_dollars_per_hour",
    "Price of one accelerator-hour on the pool (one node-hour on CPU pools).", POOL_LABELS)
POOL_IN_USE = _gauge(
    "pool_accelerators_in_use", "Accelerators (nodes on CPU pools) held by runs on the pool right now.",
    POOL_LABELS)
POOL_COST_RATE = _gauge(
    "pool_cost_rate_dollars_per_hour", "What the runs on the pool cost per hour right now.", POOL_LABELS)
POOL_THROUGHPUT = _gauge(
    "pool_throughput_samples_per_second",
    "Training throughput measured on the pool per architecture and resolution (status.measured).",
    (*POOL_LABELS, "architecture", "resolution"))
POOL_CALIBRATION = _gauge(
    "pool_calibration",
    "The pool's measured parts of the estimate (status.calibration), by part: startup_seconds, "
    "training_flops_per_second, evaluation_flops_per_second, checkpoint_seconds.", (*POOL_LABELS, "part"))
POOL_CALIBRATION_RUNS = _gauge(
    "pool_calibration_runs", "Runs behind each measured part of the pool's estimate, outliers excluded.",
    (*POOL_LABELS, "part"))

# Per Budget.
BUDGET_LIMIT = _gauge("budget_limit_dollars", "The Budget's money cap per period (spec.limit).", BUDGET_LABELS)
BUDGET_SPENT = _gauge(
    "budget_spent_dollars", "Spent in the current period by the runs the Budget covers (status.spent).",
    BUDGET_LABELS)
BUDGET_REMAINING = _gauge(
    "budget_remaining_dollars", "Left in the current period (status.remaining).", BUDGET_LABELS)
BUDGET_RUNS = _gauge("budget_runs", "Runs counted against the Budget in this period (status.runs).", BUDGET_LABELS)
BUDGET_WARN = _gauge(
    "budget_warn_threshold_ratio", "The Budget's warning thresholds (spec.warnAt) as fractions of its limit.",
    (*BUDGET_LABELS, "threshold"))

# Per Dataset and GenModel.
DATASET_PHASE = _gauge(
    "dataset_phase", "1 for the Dataset's current phase, 0 for the others.", ("namespace", "name", "phase"))
DATASET_KEPT = _gauge(
    "dataset_items_kept", "Items the last preparation kept (status.items.kept).", ("namespace", "name"))
DATASET_DROPPED = _gauge(
    "dataset_items_dropped", "Items the last preparation dropped, by reason (status.items.dropped).",
    ("namespace", "name", "reason"))
MODEL_VERSIONS = _gauge(
    "model_versions", "Versions registered on the GenModel (status.versions).", ("namespace", "name"))

STATUS_GAUGES: tuple[GaugeDef, ...] = (
    RUN_RUNNING_SECONDS, RUN_ACCELERATOR_SECONDS, RUN_COST, RUN_COST_RATE, RUN_ESTIMATED_COST,
    RUN_ESTIMATED_SECONDS, RUN_ESTIMATED_BOUND, RUN_ESTIMATED_PART, RUN_ESTIMATE_ERROR, RUN_COST_LIMIT, RUN_DURATION_LIMIT, RUN_PROGRESS, RUN_ETA, RUN_RESTARTS, RUN_EVALUATION, RUN_PODS_NOT_READY, RUN_PODS_STUCK, RUN_PHASE,
    POOL_PRICE, POOL_IN_USE, POOL_COST_RATE, POOL_THROUGHPUT, POOL_CALIBRATION, POOL_CALIBRATION_RUNS,
    BUDGET_LIMIT, BUDGET_SPENT, BUDGET_REMAINING, BUDGET_RUNS, BUDGET_WARN,
    DATASET_PHASE, DATASET_KEPT, DATASET_DROPPED, MODEL_VERSIONS,
)

# Operator activity: counters and the reconcile histogram, on the operator's own registry.
REGISTRY = CollectorRegistry(auto_describe=True)

RUNS_FINISHED = Counter(
    PREFIX + "runs_finished", "Runs that reached a final outcome, by kind and outcome.",
    ["kind", "outcome"], registry=REGISTRY)
ENFORCEMENT_ACTIONS = Counter(
    PREFIX + "budget_enforcement_actions", "Budget enforcement actions taken (Stop, Suspend, Alert, …).",
    ["action"], registry=REGISTRY)
ADMISSIONS_REFUSED = Counter(
    PREFIX + "admissions_refused", "Runs not started, by the condition reason that says why.",
    ["reason"], registry=REGISTRY)
RECONCILE_DURATION = Histogram(
    PREFIX + "reconcile_duration_seconds", "Time one reconcile pass took, by resource kind.",
    ["kind"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
RECONCILE_ERRORS = Counter(
    PREFIX + "reconcile_errors", "Handler invocations that raised, by kopf handler id.",
    ["handler"], registry=REGISTRY)

ACTIVITY_METRICS = (RUNS_FINISHED, ENFORCEMENT_ACTIONS, ADMISSIONS_REFUSED, RECONCILE_DURATION, RECONCILE_ERRORS)

# Known label values start at 0, so `increase()` sees the first event and alerts on "Failed
# increasing" work from the first failure after a restart.
for _kind_name in RUN_KINDS:
    for _outcome in ("Succeeded", "Failed"):
        RUNS_FINISHED.labels(kind=_kind_name, outcome=_outcome)
for _action in ("Stop", "Suspend", "Alert"):
    ENFORCEMENT_ACTIONS.labels(action=_action)


def exposed_names() -> frozenset[str]:
    """Every genforge sample name the operator can expose (what PromQL may reference)."""
    names = {g.name for g in STATUS_GAUGES}
    for metric in ACTIVITY_METRICS:
        for family in metric.describe():
            base = family.name
            if family.type == "counter":
                names |= {base + "_total", base + "_created"}
            elif family.type == "histogram":
                names |= {base + "_bucket", base + "_sum", base + "_count", base + "_created"}
            else:  # pragma: no cover - only counters and histograms are declared above
                names.add(base)
    return frozenset(names)


# ------------------------------------------------------------------ bounded label values
_LABEL_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
OTHER = "Other"


def bounded(value: Any) -> str:
    """A label value from a small vocabulary (a CamelCase reason, an action, a handler id).

    Anything that is not a short identifier — a message, a number, an empty value — becomes
    "Other", so a caller's mistake cannot turn a label into an unbounded one.
    """
    text = str(value) if value is not None else ""
    return text if _LABEL_VALUE.match(text) else OTHER


def _kind(value: str) -> str:
    return value if value in KINDS else OTHER


# ------------------------------------------------------------------ recording
def record_run_finished(kind: str, outcome: str) -> None:
    """A run reached a final outcome (`Succeeded`, `Failed`, …); call once per transition."""
    RUNS_FINISHED.labels(kind=_kind(kind), outcome=bounded(outcome)).inc()


def record_enforcement(action: str) -> None:
    """A budget enforcement action was taken (`Stop`, `Suspend`, `Alert`)."""
    ENFORCEMENT_ACTIONS.labels(action=bounded(action)).inc()


def record_admission_refused(reason: str) -> None:
    """A run was not started; `reason` is the condition reason (e.g. `BudgetExhausted`)."""
    ADMISSIONS_REFUSED.labels(reason=bounded(reason)).inc()


def observe_reconcile(kind: str, seconds: float) -> None:
    """One reconcile pass of a `kind` resource took `seconds`."""
    RECONCILE_DURATION.labels(kind=_kind(kind)).observe(max(0.0, float(seconds)))


def record_reconcile_error(handler: str) -> None:
    """A kopf handler (by its id, e.g. `trainingruns-tick`) raised."""
    RECONCILE_ERRORS.labels(handler=bounded(handler)).inc()


@contextmanager
def track_reconcile(kind: str, handler: str) -> Iterator[None]:
    """Time a handler body as one reconcile of `kind`, and count it as an error if it raises."""
    started = time.monotonic()
    try:
        yield
    except BaseException:
        record_reconcile_error(handler)
        raise
    finally:
        observe_reconcile(kind, time.monotonic() - started)


# ------------------------------------------------------------------ the store
StoreKey = tuple[str, str, str]  # (kind, namespace or "", name)


class ResourceStore:
    """The latest parsed copy of every genforge resource the operator has seen. Thread-safe.

    Fed from kopf's watch events (`upsert` on every event, `delete` on DELETED); read by
    `StatusCollector` on every scrape from the HTTP server's thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[StoreKey, Resource] = {}

    @staticmethod
    def key(kind: str, namespace: str | None, name: str) -> StoreKey:
        return (kind, namespace or "", name)

    def upsert(self, body: Mapping[str, Any]) -> Resource | None:
        """Store the object's latest state; returns the parsed resource (None if unparseable).

        An object whose spec does not parse (the schema should have caught it) is dropped
        from the store rather than shown with made-up values.
        """
        kind = body.get("kind")
        meta = body.get("metadata") or {}
        if kind not in KINDS or not meta.get("name"):
            return None
        key = self.key(kind, meta.get("namespace") if KINDS[kind].namespaced else None, meta["name"])
        try:
            resource = parse_resource(dict(body))
        except SpecError as exc:
            log.debug("metrics: not tracking %s %s: %s", kind, meta.get("name"), exc)
            with self._lock:
                self._items.pop(key, None)
            return None
        with self._lock:
            self._items[key] = resource
        return resource

    def delete(self, kind: str, namespace: str | None, name: str, uid: str | None = None) -> None:
        """Forget a resource; with `uid`, only if the stored copy is that object."""
        key = self.key(kind, namespace if kind in KINDS and KINDS[kind].namespaced else None, name)
        with self._lock:
            current = self._items.get(key)
            if current is not None and (uid is None or not current.uid or current.uid == uid):
                del self._items[key]

    def delete_body(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        self.delete(str(body.get("kind")), meta.get("namespace"), meta.get("name", ""), meta.get("uid"))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[Resource]:
        with self._lock:
            return list(self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ------------------------------------------------------------------ the collector
def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def progress_ratio(resource: Resource) -> float:
    """Steps done over total, clamped to 0..1 (from `percent` when total is unknown)."""
    status = resource.status
    progress = status.progress
    if progress is None:
        return 1.0 if status.phase == "Succeeded" else 0.0
    if progress.total_steps > 0:
        ratio = progress.step / progress.total_steps
    else:
        ratio = progress.percent / 100.0
    return min(1.0, max(0.0, ratio))


@dataclass(frozen=True)
class PoolUsage:
    """What a run has used on one pool, up to now."""

    pool: str
    cost: float
    accelerator_seconds: float
    rate_per_hour: float


def run_usage(resource: Resource, now: datetime) -> list[PoolUsage]:
    """Live cost, accelerator-seconds and burn rate of a run per pool, from its segments.

    A run that moved pools (a resume under `pool: auto`) has one entry per pool, so cost
    per pool adds up. Without segments there is one entry on `status.pool` with the
    status' own numbers (nothing accrued yet, or a status written before segments).
    """
    status = resource.status
    pools = sorted({s.pool for s in status.segments})
    if not pools:
        accrued = status.cost.accrued if status.cost else None
        return [PoolUsage(pool=status.pool or "", cost=_money(accrued) or 0.0,
                          accelerator_seconds=status.accelerator_seconds or 0.0, rate_per_hour=0.0)]
    out = []
    for pool in pools:
        accrual = accrue([s for s in status.segments if s.pool == pool], now)
        out.append(PoolUsage(pool=pool, cost=float(accrual.cost),
                             accelerator_seconds=float(accrual.accelerator_seconds),
                             rate_per_hour=float(accrual.rate_per_second * SECONDS_PER_HOUR)))
    return out


def _held_seconds(resource: Resource, now: datetime) -> float:
    """Wall-clock seconds the run has held accelerators (overlapping segments count once)."""
    status = resource.status
    if not status.segments:
        return status.running_seconds or 0.0
    return float(accrue(status.segments, now).running_seconds)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class StatusCollector(Collector):
    """Metric families derived from the store's resources, computed on every scrape."""

    def __init__(self, store: ResourceStore, clock: Callable[[], datetime] = _utc_now) -> None:
        self.store = store
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return [g.family() for g in STATUS_GAUGES]

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        families = {g.name: g.family() for g in STATUS_GAUGES}
        resources = sorted(self.store.snapshot(), key=lambda r: (r.kind, r.namespace or "", r.name))
        pools = {r.name: r for r in resources if r.kind == "AcceleratorPool"}
        in_use: dict[str, int] = {name: 0 for name in pools}
        rate: dict[str, Decimal] = {name: Decimal(0) for name in pools}
        for resource in resources:
            if resource.kind in RUN_KINDS:
                try:
                    self._run(families, resource, now)
                except (ValueError, ArithmeticError) as exc:  # one bad timestamp must not fail the scrape
                    log.warning("metrics: skipping %s %s: %s", resource.kind, resource.key, exc)
                    continue
                for segment in resource.status.segments:
                    if segment.end is None:
                        in_use[segment.pool] = in_use.get(segment.pool, 0) + segment.accelerators
                        rate[segment.pool] = rate.get(segment.pool, Decimal(0)) + rate_per_second(
                            segment.accelerators, segment.price_per_hour)
            elif resource.kind == "AcceleratorPool":
                self._pool(families, resource)
            elif resource.kind == "Budget":
                self._budget(families, resource)
            elif resource.kind == "Dataset":
                self._dataset(families, resource)
            elif resource.kind == "GenModel":
                families[MODEL_VERSIONS.name].add_metric(
                    [resource.namespace or "", resource.name], len(resource.status.versions))
        for pool_name in sorted(in_use):
            pool = pools.get(pool_name)
            labels = [pool_name, pool.spec.accelerator.type if pool else ""]
            families[POOL_IN_USE.name].add_metric(labels, in_use[pool_name])
            families[POOL_COST_RATE.name].add_metric(labels, float(rate[pool_name] * SECONDS_PER_HOUR))
        return [families[g.name] for g in STATUS_GAUGES]

    @staticmethod
    def _run(families: dict[str, GaugeMetricFamily], run: Resource, now: datetime) -> None:
        status, spec = run.status, run.spec
        labels = [run.namespace or "", run.kind, run.name]
        usages, elapsed = run_usage(run, now), _held_seconds(run, now)  # may raise: before any sample

        def put(gauge: GaugeDef, value: float | None) -> None:
            if value is not None:
                families[gauge.name].add_metric(labels, value)

        for usage in usages:
            by_pool = [*labels, usage.pool]
            families[RUN_COST.name].add_metric(by_pool, usage.cost)
            families[RUN_ACCELERATOR_SECONDS.name].add_metric(by_pool, usage.accelerator_seconds)
            families[RUN_COST_RATE.name].add_metric(by_pool, usage.rate_per_hour)
        put(RUN_RUNNING_SECONDS, elapsed)
        put(RUN_ESTIMATED_COST, _money(status.cost.estimated) if status.cost else None)
        put(RUN_ESTIMATED_SECONDS, status.cost.estimated_seconds if status.cost else None)
        if status.estimate is not None:
            families[RUN_ESTIMATED_BOUND.name].add_metric([*labels, "min"], status.estimate.min_seconds)
            families[RUN_ESTIMATED_BOUND.name].add_metric([*labels, "max"], status.estimate.max_seconds)
            for part in status.estimate.parts:
                families[RUN_ESTIMATED_PART.name].add_metric([*labels, part.part, part.basis], part.seconds)
        if status.cost is not None and status.cost.estimate_error is not None and status.pool:
            families[RUN_ESTIMATE_ERROR.name].add_metric([*labels, status.pool], status.cost.estimate_error)
        limit = status.cost.limit if status.cost and status.cost.limit is not None else spec.budget.max_cost
        put(RUN_COST_LIMIT, _money(limit))
        put(RUN_DURATION_LIMIT, spec.budget.max_duration_seconds)
        put(RUN_PROGRESS, progress_ratio(run))
        put(RUN_ETA, status.progress.eta_seconds if status.progress else None)
        put(RUN_RESTARTS, status.restarts)
        for metric, value in sorted((status.metrics or {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                families[RUN_EVALUATION.name].add_metric([*labels, metric], float(value))
        current = status.phase or "Pending"
        for phase in RUN_PHASES:
            families[RUN_PHASE.name].add_metric([*labels, phase], 1.0 if phase == current else 0.0)
        if current == "Running":
            conditions = {c.type: c for c in status.conditions}
            pods, ready = conditions.get("PodsReady"), conditions.get("Ready")
            if pods is not None and pods.status == "False" and pods.last_transition_time:
                since = parse_timestamp(pods.last_transition_time)
                families[RUN_PODS_NOT_READY.name].add_metric(
                    [*labels, pods.reason], max(0.0, (now - since).total_seconds()))
            put(RUN_PODS_STUCK, 1.0 if ready is not None and ready.reason == Reason.POD_START_TIMEOUT else 0.0)

    @staticmethod
    def _pool(families: dict[str, GaugeMetricFamily], pool: Resource) -> None:
        labels = [pool.name, pool.spec.accelerator.type]
        families[POOL_PRICE.name].add_metric(labels, float(pool.spec.price_per_hour))
        for measured in pool.status.measured:
            families[POOL_THROUGHPUT.name].add_metric(
                [*labels, measured.architecture, str(measured.resolution)], measured.samples_per_second)
        calibration = pool.status.calibration
        for field in dataclasses.fields(calibration) if calibration is not None else ():
            part = getattr(calibration, field.name)
            if part is not None:
                families[POOL_CALIBRATION.name].add_metric([*labels, field.name], part.value)
                families[POOL_CALIBRATION_RUNS.name].add_metric([*labels, field.name], part.used)

    @staticmethod
    def _budget(families: dict[str, GaugeMetricFamily], budget: Resource) -> None:
        labels = [budget.namespace or "", budget.name]
        status = budget.status
        families[BUDGET_LIMIT.name].add_metric(labels, float(budget.spec.limit))
        if status.spent is not None:
            families[BUDGET_SPENT.name].add_metric(labels, float(status.spent))
        if status.remaining is not None:
            families[BUDGET_REMAINING.name].add_metric(labels, float(status.remaining))
        families[BUDGET_RUNS.name].add_metric(labels, status.runs)
        for percent in sorted(set(budget.spec.warn_at)):
            families[BUDGET_WARN.name].add_metric([*labels, str(percent)], percent / 100.0)

    @staticmethod
    def _dataset(families: dict[str, GaugeMetricFamily], dataset: Resource) -> None:
        labels = [dataset.namespace or "", dataset.name]
        current = dataset.status.phase or "Pending"
        for phase in DATASET_PHASES:
            families[DATASET_PHASE.name].add_metric([*labels, phase], 1.0 if phase == current else 0.0)
        items = dataset.status.items
        if items is not None:
            families[DATASET_KEPT.name].add_metric(labels, items.kept)
            for reason, count in (("corrupt", items.dropped.corrupt), ("tooSmall", items.dropped.too_small),
                                  ("duplicate", items.dropped.duplicate), ("unlicensed", items.dropped.unlicensed),
                                  ("licenseNotAllowed", items.dropped.license_not_allowed),
                                  ("overLimit", items.dropped.over_limit)):
                families[DATASET_DROPPED.name].add_metric([*labels, reason], count)


STORE = ResourceStore()
REGISTRY.register(StatusCollector(STORE))
# The usual process_*/python_* families, on our registry rather than the library's global one.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)


def collect_text(registry: CollectorRegistry | None = None) -> str:
    """The Prometheus text exposition of `registry` (the operator's by default)."""
    return generate_latest(registry or REGISTRY).decode("utf-8")


# ------------------------------------------------------------------ kopf wiring
STORE_PLURALS = tuple(k.plural for k in KINDS.values())
_server_lock = threading.Lock()  # guards the server and the registrations below


async def on_event(event: Mapping[str, Any] | None, body: Mapping[str, Any], **_: Any) -> None:
    """kopf `on.event` handler for the six genforge kinds: keep `STORE` level with the API
    (async: a short parse in kopf's loop, no hop to a worker thread for every event)."""
    if (event or {}).get("type") == "DELETED":
        STORE.delete_body(body)
    else:
        STORE.upsert(body)


_registered: set[int] = set()


def register_store_handlers(registry: Any = None) -> None:
    """Register `on_event` for every genforge kind on `registry` (kopf's default one if None).

    Idempotent per registry, so the operator module and a test may both call it.
    """
    import kopf

    registry = registry if registry is not None else kopf.get_default_registry()
    with _server_lock:
        if id(registry) in _registered:
            return
        _registered.add(id(registry))
    for plural in STORE_PLURALS:
        kopf.on.event(GROUP, VERSION, plural, id=f"metrics-{plural}", registry=registry)(on_event)


# ------------------------------------------------------------------ the server
_server: Any = None


def metrics_port(env: Mapping[str, str] | None = None) -> int:
    return OperatorConfig.from_env(None if env is None else dict(env)).operator_metrics_port


def start_metrics_server(port: int | None = None, addr: str | None = None) -> int:
    """Serve `REGISTRY` on `http://addr:port/metrics` from a daemon thread; returns the port.

    `addr` defaults to `$GENFORGE_METRICS_HOST` (a local kubelet's pod address), else 0.0.0.0.

    Idempotent: a second call (kopf's startup handler after an in-process restart) keeps
    the running server. Port 0 picks a free port (tests).
    """
    from prometheus_client import start_http_server

    global _server
    with _server_lock:
        if _server is None:
            addr = addr or OperatorConfig.from_env().operator_metrics_host
            httpd, _thread = start_http_server(metrics_port() if port is None else port, addr, registry=REGISTRY)
            _server = httpd
            log.info("serving metrics on %s:%d/metrics", addr, httpd.server_port)
        return int(_server.server_port)


def stop_metrics_server() -> None:
    global _server
    with _server_lock:
        if _server is not None:
            _server.shutdown()
            _server.server_close()
            _server = None
