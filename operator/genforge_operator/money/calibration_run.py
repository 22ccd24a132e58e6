"""A pool's calibration run on demand (`AcceleratorPool.spec.calibration`). Pure.

While a pool has no measurement and `spec.calibration.enabled` is true, the operator
creates one short TrainingRun of a small reference model on built-in synthetic data, with
its GenModel and Dataset, in the namespace the pool names. It is an ordinary run there:
admitted or held by that namespace's Budgets, billed by the one cost model, and at its end
`money.review` folds its timing into the pool's `status.calibration` like any run's — so
the next estimate on the pool is `measured`, and `pool: auto` compares measured pools.

One run per pool, with a deterministic name (`naming.calibration_name`): creating it
again is a no-op (HTTP 409), so restarts and concurrent reconciles never start a second
one; none is created once the pool is measured; a failed one stays until a user deletes
it (the `Calibrated` condition says so), so a broken pool is not retried in a loop. The
three objects name the pool as their owner: deleting the pool deletes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .. import conditions as cond
from ..api import API_VERSION, Resource, to_dict
from ..naming import LABEL_CALIBRATION_FOR, LABEL_MANAGED_BY, MANAGER, calibration_name, label_value
from ..vocabulary import ConditionStatus, ConditionType, Reason, RunPhase

#: The reference model: the demo's 16 px shapes model (docs/estimates.md) — small enough
#: for a few dozen steps on a CPU in seconds, and the same recipe as the demo's runs.
REFERENCE_MODEL = {
    "purpose": "genforge calibration: a small reference model that measures the pool",
    "architecture": "unet2d-ddpm",
    "resolution": 16,
    "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1, "predictionType": "v_prediction",
               "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing", "inferenceSteps": 25},
}
#: As many images as the examples' Dataset: a trainer starts a new epoch every
#: images ÷ batch steps, and on a small model that start is a visible part of a step (the
#: demo's calibration on 256 images measured 0.155 s a step, its 512-image run took 0.119).
REFERENCE_DATA = "synthetic://shapes?count=512&size=16"
BATCH_SIZE = 32
#: Images the evaluation samples: enough that its rate (sampling and FID features) is measured.
EVALUATION_SAMPLES = 64
#: A calibration run is stopped if it runs this long (a broken pool must not bill for hours).
MAX_DURATION = "30m"


@dataclass
class CalibrationDecision:
    """What to create (in order: GenModel, Dataset, TrainingRun) and the pool's status fields."""

    create: list[dict] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def is_measured(pool: Resource) -> bool:
    calibration = pool.status.calibration if pool.status else None
    return calibration is not None and calibration.training_flops_per_second is not None


def wanted(pool: Resource) -> bool:
    """Whether the pool asks for a calibration run now (enabled, a namespace, not measured)."""
    request = pool.spec.calibration
    return bool(request and request.enabled and request.namespace) and not is_measured(pool)


def needs_look(pool: Resource) -> bool:
    """Whether a change of the pool may change its calibration step: it asks for calibration,
    or has a run under way whose end the `Calibrated` condition does not show yet."""
    request = pool.spec.calibration
    if not (request and request.enabled) and pool.status.calibration_run is None:
        return False
    calibrated = next((c for c in pool.status.conditions if c.type == ConditionType.CALIBRATED), None)
    return not (is_measured(pool) and calibrated is not None and calibrated.reason == Reason.MEASURED)


def pool_of(run_annotations: dict[str, str]) -> str | None:
    """The pool a calibration run measures (its annotation holds the full name)."""
    return run_annotations.get(LABEL_CALIBRATION_FOR)


def _meta(pool: Resource, namespace: str) -> dict:
    meta = {"name": calibration_name(pool.name), "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_CALIBRATION_FOR: label_value(pool.name)},
            "annotations": {f"{LABEL_CALIBRATION_FOR}": pool.name}}
    if pool.uid:
        # the (cluster-scoped) pool owns them: deleting it lets the garbage collector delete
        # them. Not `blockOwnerDeletion`: that would need update on the pool's finalizers.
        meta["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": pool.kind, "name": pool.name,
                                    "uid": pool.uid}]
    return meta


def calibration_objects(pool: Resource) -> list[dict]:
    """The GenModel, Dataset and TrainingRun of `pool`'s calibration run."""
    request = pool.spec.calibration
    namespace, steps = request.namespace, request.steps
    name = calibration_name(pool.name)
    model = {"apiVersion": API_VERSION, "kind": "GenModel", "metadata": _meta(pool, namespace),
             "spec": REFERENCE_MODEL}
    dataset = {"apiVersion": API_VERSION, "kind": "Dataset", "metadata": _meta(pool, namespace), "spec": {
        "source": {"uri": REFERENCE_DATA},
        "preparation": {"resolution": 16, "crop": "center", "minResolution": 16, "dedupe": True},
        "license": {"allowed": ["cc0-1.0", "cc-by-4.0"], "requireLicense": True},
        "hardware": {"pool": pool.name}}}
    cpu = pool.spec.accelerator.is_cpu
    run = {"apiVersion": API_VERSION, "kind": "TrainingRun", "metadata": _meta(pool, namespace), "spec": {
        "modelRef": {"name": name}, "datasetRef": {"name": name},
        "training": {"steps": steps, "batchSize": BATCH_SIZE, "learningRate": 1.0e-3,
                     "mixedPrecision": "no" if cpu else "bf16", "ema": True, "snrGamma": 20.0, "seed": 0},
        "hardware": {"pool": pool.name, "nodes": 1, "acceleratorsPerNode": 1},
        "budget": {"maxDuration": MAX_DURATION, "onExceeded": "Stop"},
        "checkpoint": {"everySteps": steps, "keep": 1},
        "evaluation": {"samples": EVALUATION_SAMPLES, "metrics": ["loss", "fid"]}}}
    return [model, dataset, run]


def _condition(pool: Resource, status: str, reason: str, message: str, now: datetime) -> list[dict]:
    current = [to_dict(c) for c in (pool.status.conditions if pool.status else [])]
    return cond.set_condition(current, ConditionType.CALIBRATED, status, reason, message, now, pool.generation)


def _run_message(run: Resource) -> str:
    ready = next((c for c in run.status.conditions if c.type == ConditionType.READY), None)
    return f"{ready.reason}: {ready.message}" if ready and ready.message else (run.status.phase or "Pending")


def decide(pool: Resource, run: Resource | None, now: datetime, *, namespace_exists: bool = True) -> CalibrationDecision:
    """The pool's calibration step: create the run, or say where it stands.

    `run` is the pool's calibration TrainingRun as it is now (None: there is none);
    `namespace_exists` whether the namespace the pool names exists. A pool that does not ask
    for calibration and has none under way gets no decision (its status is left alone).
    """
    out = CalibrationDecision()
    request = pool.spec.calibration
    enabled = bool(request and request.enabled and request.namespace)
    if not enabled and run is None:
        return out
    if run is not None:
        out.status["calibrationRun"] = {"namespace": run.namespace, "name": run.name,
                                        **({"phase": run.status.phase} if run.status.phase else {})}
    if is_measured(pool):
        part = pool.status.calibration.training_flops_per_second
        out.status["conditions"] = _condition(
            pool, ConditionStatus.TRUE, Reason.MEASURED,
            f"measured by {part.runs} run{'s' * (part.runs != 1)} (last {part.updated}); estimates on this pool "
            "use the measured parts", now)
        return out
    if not enabled:  # a run under way while calibration was switched off: report it, create nothing
        return out
    name, namespace = calibration_name(pool.name), request.namespace
    if run is None:
        if not namespace_exists:
            message = (f"namespace {namespace!r} (spec.calibration.namespace) does not exist: create it, or name "
                       "another; the calibration run is billed to its Budgets")
            out.status["conditions"] = _condition(pool, ConditionStatus.FALSE, Reason.CALIBRATION_NAMESPACE_NOT_FOUND,
                                                  message, now)
            return out
        out.create = calibration_objects(pool)
        message = (f"created TrainingRun {namespace}/{name}: {request.steps} steps of the reference model on "
                   f"{REFERENCE_DATA}, billed and budgeted in namespace {namespace}")
        out.status["calibrationRun"] = {"namespace": namespace, "name": name}
        out.status["conditions"] = _condition(pool, ConditionStatus.FALSE, Reason.CALIBRATION_RUN_CREATED, message, now)
        out.events.append(("Normal", Reason.CALIBRATION_RUN_CREATED, message))
        return out
    phase = run.status.phase
    if phase in (RunPhase.FAILED, RunPhase.BUDGET_EXCEEDED):
        message = (f"calibration run TrainingRun {run.namespace}/{run.name} ended {phase} ({_run_message(run)}); "
                   "delete it to try again")
        reason = Reason.CALIBRATION_RUN_FAILED
    elif phase == RunPhase.SUCCEEDED:
        message = (f"calibration run TrainingRun {run.namespace}/{run.name} succeeded but the pool has no measurement "
                   "(the trainer reported no timing); delete it to try again")
        reason = Reason.CALIBRATION_NOT_MEASURED
    else:
        message = f"calibration run TrainingRun {run.namespace}/{run.name} is {phase or 'Pending'}: {_run_message(run)}"
        reason = Reason.CALIBRATION_RUNNING
    before = next((c for c in (pool.status.conditions if pool.status else []) if c.type == ConditionType.CALIBRATED),
                  None)
    out.status["conditions"] = _condition(pool, ConditionStatus.FALSE, reason, message, now)
    if reason != Reason.CALIBRATION_RUNNING and (before is None or before.reason != reason):
        out.events.append(("Warning", reason, message))
    return out
