"""Every phase, condition type and reason genforge writes: one place, as `StrEnum`s.

Members are `str`s (`RunPhase.RUNNING == "Running"`), so they go into status dicts, Events
and metric labels as they are. `tests/api/test_vocabulary.py` checks the phases against
the CRDs' enums, the Argo CD health script and the docs' tables.

Reasons that come from elsewhere — a Job's (`BackoffLimitExceeded`, `DeadlineExceeded`),
a pod's (`ImagePullBackOff`, `OOMKilled`), the trainer's last words — pass through as
plain strings; `KUBERNETES_STARTING_REASONS` names the pod reasons that mean "starting".
"""

from __future__ import annotations

from enum import StrEnum

import yaml


class RunPhase(StrEnum):
    """TrainingRun and FineTune: Pending → Waiting → Running → Succeeded | Failed |
    BudgetExceeded | Suspended. BudgetExceeded and Suspended are not final: raising the
    budget or `spec.suspend: false` resumes the run."""

    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    BUDGET_EXCEEDED = "BudgetExceeded"
    SUSPENDED = "Suspended"


class DatasetPhase(StrEnum):
    """Dataset: Pending → Running → Ready | Failed."""

    PENDING = "Pending"
    RUNNING = "Running"
    READY = "Ready"
    FAILED = "Failed"


#: Phases the operator never leaves (a run's spec change does not start it again).
FINAL_RUN_PHASES = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED})
FINAL_DATASET_PHASES = frozenset({DatasetPhase.READY, DatasetPhase.FAILED})
FINAL_PHASES = FINAL_RUN_PHASES | FINAL_DATASET_PHASES


class ConditionType(StrEnum):
    READY = "Ready"                       # every kind: the summary, its message says why
    ADMITTED = "Admitted"                 # runs: references, pool and budget allowed a Job
    PROGRESSING = "Progressing"
    WITHIN_BUDGET = "WithinBudget"        # runs: accrued cost and time within the limits
    REFERENCES_RESOLVED = "ReferencesResolved"
    PODS_READY = "PodsReady"              # runs: the trainer pods run
    QUEUED = "Queued"                     # runs under Kueue
    EXHAUSTED = "Exhausted"               # Budget
    PROMOTED = "Promoted"                 # GenModel: which version is promoted and why
    CALIBRATED = "Calibrated"             # AcceleratorPool: measured, or its calibration run's state


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Condition and Event reasons the operator sets."""

    # lifecycle
    JOB_CREATED = "JobCreated"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    PREPARED = "Prepared"
    JOB_FAILED = "JobFailed"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    SPEC_CHANGED = "SpecChanged"
    INVALID_SPEC = "InvalidSpec"
    POD_START_TIMEOUT = "PodStartTimeout"
    NO_PODS = "NoPods"
    AWAITING_KUEUE_ADMISSION = "AwaitingKueueAdmission"
    BASE_IS_ADAPTER = "BaseIsAdapter"
    # references
    DATASET_NOT_FOUND = "DatasetNotFound"
    DATASET_NOT_READY = "DatasetNotReady"
    DATASET_FAILED = "DatasetFailed"
    MODEL_NOT_FOUND = "ModelNotFound"
    BASE_VERSION_NOT_FOUND = "BaseVersionNotFound"
    ADAPTER_BASE_NOT_FOUND = "AdapterBaseNotFound"
    BASE_WEIGHTS_REQUIRED = "BaseWeightsRequired"
    OUTPUT_NOT_PERSISTENT = "OutputNotPersistent"
    # pool choice
    POOL_CHOSEN = "PoolChosen"
    POOL_NOT_FOUND = "PoolNotFound"
    NO_POOL_AVAILABLE = "NoPoolAvailable"
    NO_POOL_FITS = "NoPoolFits"
    DEADLINE_UNREACHABLE = "DeadlineUnreachable"
    # money and time
    WITHIN_BUDGET = "WithinBudget"
    ESTIMATE_EXCEEDS_MAX_COST = "EstimateExceedsMaxCost"
    ESTIMATE_EXCEEDS_BUDGET_LIMIT = "EstimateExceedsBudgetLimit"
    INSUFFICIENT_BUDGET = "InsufficientBudget"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    MAX_COST_REACHED = "MaxCostReached"
    MAX_DURATION_REACHED = "MaxDurationReached"
    BUDGET_RAISED = "BudgetRaised"
    BUDGET_WARNING = "BudgetWarning"
    PERIOD_ROLLED_OVER = "PeriodRolledOver"
    # pool calibration (AcceleratorPool spec.calibration)
    MEASURED = "Measured"
    CALIBRATION_RUN_CREATED = "CalibrationRunCreated"
    CALIBRATION_RUNNING = "CalibrationRunning"
    CALIBRATION_RUN_FAILED = "CalibrationRunFailed"
    CALIBRATION_NOT_MEASURED = "CalibrationNotMeasured"
    CALIBRATION_NAMESPACE_NOT_FOUND = "CalibrationNamespaceNotFound"
    # model versions
    PROMOTED = "Promoted"
    KEPT = "Kept"
    METRIC_MISSING = "MetricMissing"
    NOT_COMPARABLE = "NotComparable"


#: The reasons a run's Ready condition carries when a limit stopped or suspended it (the
#: Job's own `DeadlineExceeded` is the backstop `activeDeadlineSeconds`).
ENFORCEMENT_REASONS = frozenset({Reason.MAX_COST_REACHED, Reason.MAX_DURATION_REACHED, Reason.BUDGET_EXHAUSTED,
                                 "DeadlineExceeded"})

#: Pod waiting reasons (Kubernetes') that mean the pod is still starting, not stuck.
KUBERNETES_STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing", "Pending"})


def _represent(dumper: yaml.SafeDumper, value: StrEnum) -> yaml.Node:
    return dumper.represent_str(str(value))


# A status dict holding members dumps as plain strings (json does so by itself).
yaml.SafeDumper.add_multi_representer(StrEnum, _represent)
