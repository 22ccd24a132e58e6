"""Typed models of the genforge API (group genforge.dev, version v1alpha1).

Every resource's spec and status is parsed once, at the edge, into these dataclasses;
the rest of the operator never indexes raw dicts. Field names are the snake_case form of
the CRD's camelCase properties (`learning_rate` ↔ `learningRate`). `crds/*.yaml` is the
source of truth for the wire schema; `tests/api/test_models_drift.py` fails when these
models and the CRD schemas disagree on any property name, in either direction.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from .units import money_str, parse_duration, parse_money

GROUP = "genforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
#: The operator's finalizer (kopf's `settings.persistence.finalizer`): a run carries it
#: before it has a Job, so its deletion waits for the Budgets to record what it spent.
FINALIZER = f"{GROUP}/finalizer"


class SpecError(ValueError):
    """A resource that cannot be parsed (the schema should have caught it)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


Money = Decimal  # parsed by parse_money; rendered with money_str


# ---------------------------------------------------------------- shared blocks
@dataclass
class LocalRef:
    name: str


@dataclass
class SecretRef:
    name: str


@dataclass
class Condition:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


@dataclass
class LabelSelectorRequirement:
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = field(default_factory=list)


@dataclass
class LabelSelector:
    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = field(default_factory=list)


# ---------------------------------------------------------------- AcceleratorPool
@dataclass
class AcceleratorSpec:
    type: str = "cpu"
    resource_name: str | None = None
    per_node: int = 1

    @property
    def is_cpu(self) -> bool:
        return self.resource_name is None


@dataclass
class TpuSpec:
    topology: str


@dataclass
class Toleration:
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


@dataclass
class PoolCalibrationRequest:
    """`spec.calibration`: a short calibration run on demand while the pool is unmeasured."""

    enabled: bool = False
    namespace: str | None = None  # where the run is created and billed; required when enabled
    steps: int = 300  # ~20 s of steps on two CPU cores: averages the host's swings (docs/benchmarks.md)


@dataclass
class AcceleratorPoolSpec:
    price_per_hour: Money
    accelerator: AcceleratorSpec = field(default_factory=AcceleratorSpec)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    tpu: TpuSpec | None = None
    relative_throughput: float = 1.0
    spot: bool = False
    currency: str = "USD"
    cpus_per_node: int | None = None  # cpu pools: the node's vCPUs, the basis of the prior
    calibration: PoolCalibrationRequest | None = None


@dataclass
class MeasuredThroughput:
    architecture: str
    resolution: int
    samples_per_second: float
    runs: int = 1


@dataclass
class CalibrationSample:
    """One run's measurement of one part of the estimate."""

    value: float
    at: str
    run: str = ""
    uid: str = ""  # the run's uid: a run is folded in once (a retried reconcile does not count it twice)


@dataclass
class CalibrationPart:
    """A part of the estimate measured on a pool: the median of the recent runs' values
    after dropping outliers (`used` of `runs` kept), with the kept values' range."""

    value: float
    runs: int = 0
    used: int = 0
    low: float | None = None
    high: float | None = None
    updated: str | None = None
    recent: list[CalibrationSample] = field(default_factory=list)


@dataclass
class PoolCalibration:
    """The measured parts of the estimate (docs/estimates.md): seconds from pod start to the
    first step and to exit besides the other parts (`startupSeconds`), effective training and
    evaluation FLOP/s of one accelerator (`trainingFlopsPerSecond`, `evaluationFlopsPerSecond`),
    and seconds per checkpoint or model write (`checkpointSeconds`)."""

    startup_seconds: CalibrationPart | None = None
    training_flops_per_second: CalibrationPart | None = None
    evaluation_flops_per_second: CalibrationPart | None = None
    checkpoint_seconds: CalibrationPart | None = None


@dataclass
class CalibrationRunRef:
    """The calibration run a pool asked for, and its phase when the pool last looked."""

    namespace: str
    name: str
    phase: str | None = None


@dataclass
class AcceleratorPoolStatus:
    measured: list[MeasuredThroughput] = field(default_factory=list)
    calibration: PoolCalibration | None = None
    calibration_run: CalibrationRunRef | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = field(default_factory=list)


# ---------------------------------------------------------------- Budget
@dataclass
class BudgetSpec:
    limit: Money
    period: Literal["Daily", "Weekly", "Monthly", "Total"] = "Monthly"
    selector: LabelSelector | None = None
    warn_at: list[int] = field(default_factory=lambda: [50, 80])
    on_exhausted: Literal["Stop", "Suspend", "Alert"] = "Stop"


@dataclass
class RetiredRun:
    """A deleted run whose spending still counts against the Budget (deleting a run is no
    way around a Budget). Its segments are kept until they fall out of the period."""

    kind: str
    name: str
    uid: str
    segments: list[AccrualSegment] = field(default_factory=list)


@dataclass
class BudgetStatus:
    spent: Money | None = None
    remaining: Money | None = None
    period_start: str | None = None
    runs: int = 0
    warned: list[int] = field(default_factory=list)
    retired: list[RetiredRun] = field(default_factory=list)
    observed_generation: int | None = None
    conditions: list[Condition] = field(default_factory=list)


# ---------------------------------------------------------------- Dataset
@dataclass
class DatasetSource:
    uri: str
    secret_ref: SecretRef | None = None


@dataclass
class Preparation:
    resolution: int = 64
    crop: Literal["center", "random", "none"] = "center"
    min_resolution: int = 0
    dedupe: bool = True
    max_items: int | None = None


@dataclass
class Privacy:
    blur_faces: bool = False
    strip_metadata: bool = True
    redact_captions: bool = False


@dataclass
class LicensePolicy:
    allowed: list[str] = field(default_factory=list)
    require_license: bool = False


@dataclass
class OutputSpec:
    uri: str | None = None


@dataclass
class DatasetHardware:
    pool: str | None = None


@dataclass
class DatasetSpec:
    source: DatasetSource
    preparation: Preparation = field(default_factory=Preparation)
    privacy: Privacy = field(default_factory=Privacy)
    license: LicensePolicy = field(default_factory=LicensePolicy)
    output: OutputSpec = field(default_factory=OutputSpec)
    hardware: DatasetHardware = field(default_factory=DatasetHardware)


@dataclass
class DroppedCounts:
    corrupt: int = 0
    too_small: int = 0
    duplicate: int = 0
    unlicensed: int = 0
    license_not_allowed: int = 0
    over_limit: int = 0

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclass
class ItemCounts:
    total: int = 0
    kept: int = 0
    dropped: DroppedCounts = field(default_factory=DroppedCounts)


@dataclass
class DatasetStatus:
    phase: Literal["Pending", "Running", "Ready", "Failed"] | None = None
    items: ItemCounts | None = None
    dropped_total: int | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    bytes: int | None = None
    content_hash: str | None = None
    uri: str | None = None
    job: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = field(default_factory=list)


# ---------------------------------------------------------------- GenModel
@dataclass
class ModelConfig:
    """Architecture knobs of unet2d-ddpm (UNet2DModel + DDPMScheduler), as the trainer reads them."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention: list[bool] | None = None  # per level; default: only the lowest resolution
    norm_num_groups: int | None = None
    attention_head_dim: int = 8
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    inference_steps: int = 50
    ddim_eta: float = 0.0
    class_dropout: float = 0.0
    guidance_scale: float = 1.0
    rescale_betas_zero_snr: bool = False
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"


@dataclass
class BaseWeights:
    uri: str


@dataclass
class Promotion:
    metric: str = "fid"
    lower_is_better: bool = True


@dataclass
class GenModelSpec:
    architecture: Literal["unet2d-ddpm", "stable-diffusion"]
    resolution: int = 64
    purpose: str = ""
    config: ModelConfig = field(default_factory=ModelConfig)
    base: BaseWeights | None = None
    promotion: Promotion = field(default_factory=Promotion)


@dataclass
class SourceRef:
    kind: str
    name: str


@dataclass
class ModelVersion:
    name: str
    source: SourceRef
    uri: str
    created_at: str
    metrics: dict[str, float] = field(default_factory=dict)
    method: str | None = None
    base_version: str | None = None
    format: Literal["model", "lora-adapter"] | None = None
    evaluation: EvaluationRecord | None = None


@dataclass
class GenModelStatus:
    versions: list[ModelVersion] = field(default_factory=list)
    latest: str | None = None
    promoted: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = field(default_factory=list)


# ---------------------------------------------------------------- TrainingRun / FineTune
@dataclass
class TrainingSpec:
    steps: int
    batch_size: int = 16
    learning_rate: float = 1.0e-4
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation: int = 1
    seed: int = 0
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    ema: bool = False
    ema_decay: float = 0.999
    snr_gamma: float | None = None


@dataclass
class HardwareSpec:
    pool: str = "auto"
    nodes: int = 1
    accelerators_per_node: int = 1
    deadline: str | None = None

    @property
    def deadline_seconds(self) -> float | None:
        return parse_duration(self.deadline)


@dataclass
class RunBudget:
    max_cost: Money | None = None
    max_duration: str | None = None
    on_exceeded: Literal["Stop", "Suspend"] = "Stop"

    @property
    def max_duration_seconds(self) -> float | None:
        return parse_duration(self.max_duration)


@dataclass
class CheckpointSpec:
    every_steps: int = 500
    keep: int = 3


@dataclass
class EvaluationSpec:
    samples: int = 16
    metrics: list[Literal["loss", "fid", "kid"]] = field(default_factory=lambda: ["loss", "fid"])
    held_out_fraction: float = 0.1
    feature_extractor_uri: str | None = None
    inference_steps: int | None = None


@dataclass
class EvaluationRecord:
    """How a run's metrics were measured: versions are compared only when these agree."""

    feature_extractor: str | None = None
    reference_set: str | None = None
    samples: int | None = None
    held_out: int | None = None
    inference_steps: int | None = None


@dataclass
class TrainingRunSpec:
    model_ref: LocalRef
    dataset_ref: LocalRef
    training: TrainingSpec
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    budget: RunBudget = field(default_factory=RunBudget)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    evaluation: EvaluationSpec | None = None
    output: OutputSpec = field(default_factory=OutputSpec)
    queue_name: str | None = None
    suspend: bool = False


@dataclass
class BaseModelRef:
    name: str
    version: str | None = None


@dataclass
class LoraSpec:
    rank: int = 8
    alpha: int = 16
    merge: bool = False


@dataclass
class DreamboothSpec:
    instance_prompt: str = "a photo of sks object"
    class_prompt: str | None = None
    prior_loss_weight: float = 1.0
    num_class_images: int = 16


@dataclass
class EmbeddingSpec:
    concept: str
    initializer: str | None = None


@dataclass
class PreferenceSpec:
    feedback_uri: str
    beta: float = 5000.0


@dataclass
class FineTuneSpec:
    base_model: BaseModelRef
    dataset_ref: LocalRef
    method: Literal["full", "lora", "dreambooth", "embedding", "preference"]
    training: TrainingSpec
    lora: LoraSpec | None = None
    dreambooth: DreamboothSpec | None = None
    embedding: EmbeddingSpec | None = None
    preference: PreferenceSpec | None = None
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    budget: RunBudget = field(default_factory=RunBudget)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    evaluation: EvaluationSpec | None = None
    output: OutputSpec = field(default_factory=OutputSpec)
    queue_name: str | None = None
    suspend: bool = False


@dataclass
class Progress:
    step: int = 0
    total_steps: int = 0
    percent: float = 0.0
    loss: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None


@dataclass
class CostStatus:
    accrued: Money | None = None
    estimated: Money | None = None
    limit: Money | None = None
    currency: str = "USD"
    estimated_seconds: float | None = None
    estimate_error: float | None = None


@dataclass
class EstimatePartStatus:
    part: Literal["startup", "training", "evaluation", "checkpoints"]
    seconds: float
    basis: Literal["prior", "measured"]
    runs: int = 0


@dataclass
class EstimateStatus:
    """The admitted estimate, part by part, with its range (docs/estimates.md)."""

    seconds: float
    min_seconds: float
    max_seconds: float
    basis: str
    parts: list[EstimatePartStatus] = field(default_factory=list)
    from_step: int | None = None  # steps done when it was made (a resumed run's estimate is of the rest)


@dataclass
class AccrualSegment:
    """One stretch of time during which a run held `accelerators` at `price_per_hour`.

    The operator keeps these in status so that accrued cost is recomputed from
    timestamps after a restart; an open segment has no `end`.
    """

    start: str
    pool: str
    accelerators: int
    price_per_hour: Money
    end: str | None = None
    pod: str | None = None


@dataclass
class RunStatus:
    phase: Literal["Pending", "Waiting", "Running", "Succeeded", "Failed", "BudgetExceeded", "Suspended"] | None = None
    pool: str | None = None
    job: str | None = None
    progress: Progress | None = None
    cost: CostStatus | None = None
    estimate: EstimateStatus | None = None
    accelerator_seconds: float | None = None
    running_seconds: float | None = None
    segments: list[AccrualSegment] = field(default_factory=list)
    start_time: str | None = None
    completion_time: str | None = None
    checkpoint: str | None = None
    artifact: str | None = None
    samples: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: EvaluationRecord | None = None
    version: str | None = None
    restarts: int = 0
    observed_generation: int | None = None
    conditions: list[Condition] = field(default_factory=list)


# ---------------------------------------------------------------- kinds
@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...]
    spec_type: type
    status_type: type


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("AcceleratorPool", "acceleratorpools", "acceleratorpool", False, ("gfpool",),
             AcceleratorPoolSpec, AcceleratorPoolStatus),
        Kind("Budget", "budgets", "budget", True, ("gfbudget",), BudgetSpec, BudgetStatus),
        Kind("Dataset", "datasets", "dataset", True, ("gfds",), DatasetSpec, DatasetStatus),
        Kind("GenModel", "genmodels", "genmodel", True, ("gm", "gfmodel"), GenModelSpec, GenModelStatus),
        Kind("TrainingRun", "trainingruns", "trainingrun", True, ("tr", "gfrun"), TrainingRunSpec, RunStatus),
        Kind("FineTune", "finetunes", "finetune", True, ("ft", "gfft"), FineTuneSpec, RunStatus),
    )
}


# ---------------------------------------------------------------- parsing
def _is_money(tp: Any) -> bool:
    return tp is Decimal


def _parse(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _parse(args[0], value, path)
    if value is None:
        raise SpecError(path, "is required")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SpecError(path, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(path, "must be a list")
        (item_tp,) = typing.get_args(tp)
        return [_parse(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(path, "must be an object")
        _, val_tp = typing.get_args(tp)
        return {str(k): _parse(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if _is_money(tp):
        try:
            return parse_money(value)
        except ValueError as exc:
            raise SpecError(path, str(exc)) from exc
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(path, f"must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError as exc:
            raise SpecError(path, f"must be a number, got {value!r}") from exc
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, f"must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(path, f"must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp!r} at {path}")  # pragma: no cover


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def from_dict(cls: type, data: Any, path: str = "spec", *, strict: bool = True) -> Any:
    """Parse a camelCase mapping into dataclass `cls`; unknown keys are errors when strict."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(path, "must be an object")
    hints = _hints(cls)
    known = {camel(f.name): f for f in dataclasses.fields(cls)}
    if strict:
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(path, f"unknown field(s): {', '.join(unknown)}")
    kwargs = {}
    for key, f in known.items():
        sub = f"{path}.{key}"
        if key in data:
            kwargs[f.name] = _parse(hints[f.name], data[key], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(sub, "is required")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Render a dataclass as the camelCase mapping the API stores (None fields omitted)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            out[camel(f.name)] = to_dict(value)
        return out
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Decimal):
        return money_str(obj)
    return obj


@dataclass
class Resource:
    """A parsed resource: identity from metadata, typed spec and status."""

    kind: str
    name: str
    namespace: str | None
    uid: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: Any
    status: Any
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def parse_resource(body: dict, *, strict_status: bool = False) -> Resource:
    """Parse a whole object (as from the API or a YAML file) into a `Resource`."""
    kind_name = body.get("kind")
    if kind_name not in KINDS:
        raise SpecError("kind", f"unknown kind {kind_name!r}")
    kind = KINDS[kind_name]
    meta = body.get("metadata") or {}
    spec = from_dict(kind.spec_type, body.get("spec") or {}, "spec")
    status = from_dict(kind.status_type, body.get("status") or {}, "status", strict=strict_status)
    return Resource(
        kind=kind_name,
        name=meta.get("name", ""),
        namespace=meta.get("namespace") if kind.namespaced else None,
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 1),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        spec=spec,
        status=status,
        creation_timestamp=meta.get("creationTimestamp"),
        deletion_timestamp=meta.get("deletionTimestamp"),
    )
