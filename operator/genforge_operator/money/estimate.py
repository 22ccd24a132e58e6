"""How long a run takes and what it costs on each pool. Pure.

Money comes from the one cost model (`cost.py`); admission, `pool: auto` and
`genforge estimate` (`cli/estimate.py`) call the same functions (`budget.admit`), so
the CLI and the operator agree on every number.

The model (docs/estimates.md has the derivation and a worked example):

* **Work.** Each optimizer step consumes `batchSize × gradientAccumulation` samples *per
  trainer process* (the trainer's contract); a run has one process per accelerator, or
  one per node on CPU pools — the same count the cost model bills. So
  `samples = remaining steps × batchSize × gradientAccumulation × processes`.
* **Throughput per accelerator** (in "full-training, mixed-precision" samples/s):
  the mean measured on this pool for the same architecture and resolution
  (`AcceleratorPool.status.measured`), else the prior
  `reference device FLOP/s × pool.relativeThroughput / training FLOPs per sample`.
  Training FLOPs per sample are counted from the UNet's layers (convolutions, attention,
  transformer blocks) at the model's resolution: forward + backward = 3 × forward, plus
  the frozen VAE and text encoder forward for `stable-diffusion`.
* **Work factors.** `mixedPrecision: "no"` on an accelerator costs ×2 (fp32 runs at about
  half the tensor-core rate); fine-tuning methods cost a factor of full training
  (`METHOD_FACTORS`).
* **Scaling.** `accelerators × efficiency`, efficiency = 0.98 per doubling of
  accelerators within a node × 0.95 per doubling of nodes.
* **Duration** = startup (image pull, model load, rendezvous) + samples / throughput,
  rounded up to whole seconds. **Cost** = `accrual.cost_of(duration, accelerators, price)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from ..api import (
    AcceleratorPoolSpec,
    FineTuneSpec,
    GenModelSpec,
    MeasuredThroughput,
    ModelConfig,
    Resource,
    TrainingRunSpec,
)
from ..formats import human_duration, money
from ..units import CENT
from . import accrual

RunSpec = TrainingRunSpec | FineTuneSpec

# ------------------------------------------------------------------ calibration
#: Sustained training FLOP/s of the reference accelerator (relativeThroughput 1.0): one
#: NVIDIA L4 in bf16 — 121 TFLOP/s dense peak at ~25 % utilisation, typical for UNets.
REFERENCE_ACCELERATOR_FLOPS = 30e12
#: Sustained training FLOP/s of the reference CPU node (relativeThroughput 1.0 on a CPU
#: pool): an 8-vCPU AVX2 x86 node running PyTorch in fp32, ~15 % of its ~640 GFLOP/s peak.
#: The default tiny model (64 px, channels 32/64/64) then trains at ~17 samples/s.
REFERENCE_CPU_NODE_FLOPS = 100e9
#: Seconds from Job creation to the first training step: image pull, model and data
#: load; plus rendezvous per doubling of nodes.
STARTUP_SECONDS_CPU = 30
STARTUP_SECONDS_ACCELERATOR = 120
RENDEZVOUS_SECONDS_PER_NODE_DOUBLING = 15
#: Data-parallel efficiency per doubling of accelerators within a node / of nodes.
INTRA_NODE_EFFICIENCY = 0.98
INTER_NODE_EFFICIENCY = 0.95
#: Cost of a sample relative to full training. DreamBooth with a class prompt trains on
#: a class image for every instance image (prior preservation), hence ×2.
METHOD_FACTORS = {"full": 1.0, "lora": 0.7, "dreambooth": 1.0, "embedding": 0.65, "preference": 1.7}
DREAMBOOTH_PRIOR_FACTOR = 2.0
#: Cost of a sample on an accelerator by mixedPrecision.
PRECISION_FACTORS = {"no": 2.0, "fp16": 1.0, "bf16": 1.0}

#: stable-diffusion's UNet comes from its base weights, not from GenModel.spec.config:
#: the SD 1.x UNet (≈860M parameters) on latents of resolution/8, with the frozen
#: VAE encoder (channels 128-512) and CLIP ViT-L/14 text encoder (≈123M parameters).
SD_UNET = ModelConfig(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                      attention=[True, True, True, False])
SD_CROSS_ATTENTION_DIM = 768
SD_ATTENTION_LEVELS = [True, True, True, False]
SD_VAE_CHANNELS = [128, 256, 512, 512]
SD_TEXT_ENCODER_PARAMETERS = 123e6
SD_CONTEXT_TOKENS = 77

# Reasons `pool: auto` (or a named pool) gives for its decision.
REASON_POOL_CHOSEN = "PoolChosen"
REASON_POOL_NOT_FOUND = "PoolNotFound"
REASON_NO_POOL = "NoPoolAvailable"
REASON_NO_POOL_FITS = "NoPoolFits"
REASON_DEADLINE_UNREACHABLE = "DeadlineUnreachable"
REASON_ESTIMATE_EXCEEDS_MAX_COST = "EstimateExceedsMaxCost"
REASON_INSUFFICIENT_BUDGET = "InsufficientBudget"

AUTO = "auto"


# ------------------------------------------------------------------ FLOPs of a model
def _resnet(c_in: float, c: float, n: float) -> float:
    shortcut = c_in * c * n if c_in != c else 0.0
    return 9 * c_in * c * n + 9 * c * c * n + shortcut


def _self_attention(c: float, n: float) -> float:
    return 4 * n * c * c + 2 * n * n * c


def _transformer(c: float, n: float, context_dim: float, tokens: float) -> float:
    # proj in/out 2, self-attention 4, cross-attention q/out 2, GEGLU feed-forward 12 (× n c²)
    return 20 * n * c * c + 2 * n * n * c + 2 * tokens * context_dim * c + 2 * n * tokens * c


def _attention_levels(config: ModelConfig) -> list[bool]:
    """Levels with attention, as the trainer builds them (default: the lowest resolution)."""
    n = len(config.block_out_channels)
    value: Any = config.attention
    if isinstance(value, (list, tuple)):
        return [bool(v) for v in value][:n] + [False] * max(0, n - len(value))
    if value is True:
        return [i > 0 for i in range(n)] if n > 1 else [True]
    return [n > 1 and i == n - 1 for i in range(n)]


def unet_forward_macs(config: ModelConfig, resolution: int, in_channels: int = 3, *,
                      attention: Sequence[bool] | None = None, context_dim: int | None = None,
                      tokens: int = SD_CONTEXT_TOKENS) -> float:
    """Multiply-accumulates of one forward pass of a diffusers-style UNet on one sample.

    Counts the 3×3 convolutions of every ResNet block (down: `layersPerBlock` per level,
    up: one more, taking the skip connection), down/up-sampling convolutions, and the
    attention (plain self-attention, or a transformer block with cross-attention when
    `context_dim` is given) at the levels that have it and in the middle block.
    """
    channels = [float(c) for c in config.block_out_channels]
    layers = config.layers_per_block
    levels = list(attention) if attention is not None else _attention_levels(config)

    def attn(c: float, n: float) -> float:
        return _transformer(c, n, context_dim, tokens) if context_dim else _self_attention(c, n)

    def pixels(level: int) -> float:
        return (resolution / 2**level) ** 2

    last = len(channels) - 1
    macs = 9 * in_channels * channels[0] * pixels(0)
    prev = channels[0]
    for i, c in enumerate(channels):
        for j in range(layers):
            macs += _resnet(prev if j == 0 else c, c, pixels(i))
            macs += attn(c, pixels(i)) if levels[i] else 0.0
        prev = c
        if i < last:
            macs += 9 * c * c * pixels(i + 1)
    macs += 2 * _resnet(channels[-1], channels[-1], pixels(last)) + attn(channels[-1], pixels(last))
    for i in reversed(range(len(channels))):
        c = channels[i]
        for _ in range(layers + 1):
            macs += _resnet(2 * c, c, pixels(i))
            macs += attn(c, pixels(i)) if levels[i] else 0.0
        if i > 0:
            macs += 9 * c * c * pixels(i - 1)
    return macs + 9 * channels[0] * in_channels * pixels(0)


def _vae_encoder_macs(resolution: int) -> float:
    channels = [float(c) for c in SD_VAE_CHANNELS]
    macs = 9 * 3 * channels[0] * resolution**2
    prev = channels[0]
    for i, c in enumerate(channels):
        n = (resolution / 2**i) ** 2
        macs += _resnet(prev, c, n) + _resnet(c, c, n)
        prev = c
        if i < len(channels) - 1:
            macs += 9 * c * c * (resolution / 2 ** (i + 1)) ** 2
    n_last = (resolution / 2 ** (len(channels) - 1)) ** 2
    macs += 2 * _resnet(prev, prev, n_last) + _self_attention(prev, n_last)
    return macs + 9 * prev * 8 * n_last


def train_flops_per_sample(model: GenModelSpec) -> float:
    """Floating-point operations to train on one sample (forward + backward = 3 × forward)."""
    if model.architecture == "stable-diffusion":
        latent = max(1, model.resolution // 8)
        unet = unet_forward_macs(SD_UNET, latent, in_channels=4, attention=SD_ATTENTION_LEVELS,
                                 context_dim=SD_CROSS_ATTENTION_DIM)
        frozen = _vae_encoder_macs(model.resolution) + SD_TEXT_ENCODER_PARAMETERS * SD_CONTEXT_TOKENS
        return 2 * (3 * unet + frozen)
    return 2 * 3 * unet_forward_macs(model.config, model.resolution)


def reference_samples_per_second(model: GenModelSpec, *, cpu: bool) -> float:
    """Prior samples/s of `model` on one reference device (an L4, or an 8-vCPU node)."""
    device = REFERENCE_CPU_NODE_FLOPS if cpu else REFERENCE_ACCELERATOR_FLOPS
    return device / train_flops_per_sample(model)


# ------------------------------------------------------------------ work and scaling
def processes_per_node(pool: AcceleratorPoolSpec, accelerators_per_node: int) -> int:
    """Trainer processes per node: one per accelerator, one per CPU node."""
    return 1 if pool.accelerator.is_cpu else accelerators_per_node


def samples_of(spec: RunSpec, processes: int, *, completed_steps: int = 0) -> int:
    """Samples the trainer will process for the steps still to do."""
    training = spec.training
    steps = max(0, training.steps - completed_steps)
    return steps * training.batch_size * training.gradient_accumulation * processes


def work_factor(spec: RunSpec, *, cpu: bool) -> float:
    """Cost of one of this run's samples relative to a full-training, mixed-precision one."""
    factor = 1.0 if cpu else PRECISION_FACTORS[spec.training.mixed_precision]
    method = getattr(spec, "method", "full")
    factor *= METHOD_FACTORS[method]
    dreambooth = getattr(spec, "dreambooth", None)
    if method == "dreambooth" and dreambooth is not None and dreambooth.class_prompt:
        factor *= DREAMBOOTH_PRIOR_FACTOR
    return factor


def scaling_efficiency(nodes: int, per_node: int) -> float:
    return INTRA_NODE_EFFICIENCY ** math.log2(max(1, per_node)) * INTER_NODE_EFFICIENCY ** math.log2(max(1, nodes))


def startup_seconds(pool: AcceleratorPoolSpec, nodes: int) -> float:
    base = STARTUP_SECONDS_CPU if pool.accelerator.is_cpu else STARTUP_SECONDS_ACCELERATOR
    return base + RENDEZVOUS_SECONDS_PER_NODE_DOUBLING * math.log2(max(1, nodes))


def measured_for(pool: Resource, model: GenModelSpec) -> MeasuredThroughput | None:
    status = pool.status
    for m in (status.measured if status else []):
        if m.architecture == model.architecture and m.resolution == model.resolution and m.runs > 0:
            return m
    return None


def per_accelerator_samples_per_second(pool: Resource, model: GenModelSpec) -> tuple[float, str]:
    """(samples/s of one accelerator in full-training units, "measured" or "prior")."""
    measured = measured_for(pool, model)
    if measured is not None and measured.samples_per_second > 0:
        return measured.samples_per_second, "measured"
    prior = reference_samples_per_second(model, cpu=pool.spec.accelerator.is_cpu)
    return prior * pool.spec.relative_throughput, "prior"


# ------------------------------------------------------------------ estimates
@dataclass(frozen=True)
class PoolEstimate:
    """A run on one pool: how long, how much, and (after `choose_pool`) the verdicts."""

    pool: str
    accelerator_type: str
    cpu: bool
    nodes: int
    accelerators: int
    price_per_hour: Decimal
    currency: str
    samples: int
    samples_per_second: float  # all accelerators together, in the run's own samples
    throughput_source: Literal["measured", "prior"]
    duration_seconds: int
    cost: Decimal
    unfit: str | None = None  # why the run cannot be placed on this pool
    meets_deadline: bool = True
    within_max_cost: bool = True
    within_budget: bool = True  # maxCost and every covering Budget's room
    note: str = ""

    @property
    def seconds(self) -> int:
        return self.duration_seconds

    @property
    def fits(self) -> bool:
        return self.unfit is None

    @property
    def rate_per_second(self) -> Decimal:
        return accrual.rate_per_second(self.accelerators, self.price_per_hour)

    @property
    def accelerator_hours(self) -> float:
        return self.duration_seconds * self.accelerators / 3600

    @property
    def mode(self) -> str:
        """The seed's travel picture: walk (CPU), drive (one machine), fly (a farm)."""
        if self.cpu:
            return "walk"
        return "drive" if self.nodes == 1 else "fly"


def estimate_on_pool(pool: Resource, spec: RunSpec, model: GenModelSpec, *,
                     completed_steps: int = 0) -> PoolEstimate:
    """Duration and cost of `spec`'s remaining work on `pool`."""
    pool_spec: AcceleratorPoolSpec = pool.spec
    hardware = spec.hardware
    cpu = pool_spec.accelerator.is_cpu
    accelerators = accrual.accelerators_on(pool_spec, hardware)
    per_node = processes_per_node(pool_spec, hardware.accelerators_per_node)
    samples = samples_of(spec, accelerators, completed_steps=completed_steps)
    per_accelerator, source = per_accelerator_samples_per_second(pool, model)
    factor = work_factor(spec, cpu=cpu)
    throughput = per_accelerator * accelerators * scaling_efficiency(hardware.nodes, per_node) / factor
    unfit = accrual.fits_pool(pool_spec, hardware)
    if throughput <= 0:
        unfit, throughput = "has no throughput (relativeThroughput is 0)", math.inf
    train_seconds = samples / throughput if samples else 0.0
    duration = math.ceil(startup_seconds(pool_spec, hardware.nodes) + train_seconds)
    return PoolEstimate(
        pool=pool.name, accelerator_type=pool_spec.accelerator.type, cpu=cpu, nodes=hardware.nodes,
        accelerators=accelerators, price_per_hour=pool_spec.price_per_hour, currency=pool_spec.currency,
        samples=samples, samples_per_second=throughput, throughput_source=source, duration_seconds=duration,
        cost=accrual.cost_of(duration, accelerators, pool_spec.price_per_hour), unfit=unfit,
    )


def estimate_pools(pools: Iterable[Resource], spec: RunSpec, model: GenModelSpec, *,
                   completed_steps: int = 0) -> list[PoolEstimate]:
    """Estimates on every pool: slowest first (walk, drive, fly); pools that don't fit last."""
    estimates = [estimate_on_pool(p, spec, model, completed_steps=completed_steps) for p in pools]
    return sorted(estimates, key=lambda e: (not e.fits, -e.duration_seconds, e.pool))


# ------------------------------------------------------------------ choosing a pool
@dataclass(frozen=True)
class Choice:
    """A pool decision: `pool` is None when nothing qualifies (then `reason` says why)."""

    pool: str | None
    reason: str
    message: str
    estimates: list[PoolEstimate]  # every pool, with verdicts and a note for the Event

    @property
    def chosen(self) -> PoolEstimate | None:
        return next((e for e in self.estimates if e.pool == self.pool), None)

    def alternatives(self) -> str:
        """One line per pool, for the Event that explains the decision."""
        return "; ".join(f"{e.pool}: {money(e.cost, e.currency)} in {human_duration(e.duration_seconds)}"
                         f" ({e.note})" for e in self.estimates)


def _cheapest(estimates: Iterable[PoolEstimate]) -> PoolEstimate | None:
    """Cheapest to the cent; equal costs → faster; then by name."""
    return min(estimates, key=lambda e: (e.cost.quantize(CENT, rounding=ROUND_HALF_UP), e.duration_seconds,
                                         e.pool), default=None)


def choose_pool(
    estimates: Sequence[PoolEstimate],
    *,
    requested: str = AUTO,
    deadline_seconds: float | None = None,
    max_cost_room: Decimal | None = None,
    budget_room: Decimal | None = None,
) -> Choice:
    """The pool a run goes to, and why every other pool did not.

    `requested`: `auto`, or the pool the run names. `max_cost_room`: maxCost minus what
    the run accrued already (None: no maxCost). `budget_room`: the smallest room left in
    the Budgets covering the run (None: no Budget). `auto` picks the cheapest pool that
    fits, meets the deadline and is within budget; a named pool only has to fit and be
    within budget (a deadline only steers `auto`).
    """
    judged = [
        dataclasses.replace(
            e,
            meets_deadline=deadline_seconds is None or e.duration_seconds <= deadline_seconds,
            within_max_cost=max_cost_room is None or e.cost <= max_cost_room,
            within_budget=(max_cost_room is None or e.cost <= max_cost_room)
            and (budget_room is None or e.cost <= budget_room),
        )
        for e in estimates
    ]
    auto = requested == AUTO
    deadline = human_duration(deadline_seconds) if deadline_seconds is not None else None
    if auto:
        considered = judged
    else:
        considered = [e for e in judged if e.pool == requested]
        if not considered:
            known = ", ".join(sorted(e.pool for e in judged)) or "none"
            return Choice(None, REASON_POOL_NOT_FOUND, f"AcceleratorPool {requested!r} not found (pools: {known})",
                          _notes(judged, None, deadline, auto))
    fitting = [e for e in considered if e.fits]
    timely = [e for e in fitting if e.meets_deadline or not auto]
    affordable = [e for e in timely if e.within_max_cost]
    allowed = [e for e in affordable if e.within_budget]
    chosen = _cheapest(allowed)
    if chosen is not None:
        reason, message = REASON_POOL_CHOSEN, _chosen_message(chosen, len(allowed), deadline, auto)
    elif not judged:
        reason, message = REASON_NO_POOL, "no AcceleratorPool exists"
    elif not fitting:
        reason = REASON_NO_POOL_FITS
        message = "; ".join(f"{e.pool} {e.unfit}" for e in considered)
    elif not timely:
        fastest = min(fitting, key=lambda e: e.duration_seconds)
        reason = REASON_DEADLINE_UNREACHABLE
        message = (f"no pool meets the {deadline} deadline: the fastest, {fastest.pool}, needs an estimated "
                   f"{human_duration(fastest.duration_seconds)}")
    elif not affordable:
        best = _cheapest(timely)
        reason = REASON_ESTIMATE_EXCEEDS_MAX_COST
        where = f"{best.pool}, the cheapest pool meeting the {deadline} deadline," if auto and deadline else best.pool
        message = (f"estimated {money(best.cost, best.currency)} on {where} exceeds the "
                   f"{money(max_cost_room, best.currency)} left of maxCost")
    else:
        best = _cheapest(affordable)
        reason = REASON_INSUFFICIENT_BUDGET
        message = (f"estimated {money(best.cost, best.currency)} on {best.pool} exceeds the "
                   f"{money(budget_room, best.currency)} left in the Budget")
    return Choice(chosen.pool if chosen else None, reason, message, _notes(judged, chosen, deadline, auto))


def _chosen_message(chosen: PoolEstimate, count: int, deadline: str | None, auto: bool) -> str:
    what = f"{money(chosen.cost, chosen.currency)} in {human_duration(chosen.duration_seconds)}"
    if not auto:
        return f"pool {chosen.pool} as requested: estimated {what}"
    qualifier = f"meeting the {deadline} deadline " if deadline else ""
    which = "the only pool" if count == 1 else f"the cheapest of {count} pools"
    return f"chose {chosen.pool}, {which} {qualifier}within budget: estimated {what}"


def _notes(judged: list[PoolEstimate], chosen: PoolEstimate | None, deadline: str | None,
           auto: bool) -> list[PoolEstimate]:
    out = []
    for e in judged:
        if chosen is not None and e.pool == chosen.pool:
            note = "chosen"
        elif not e.fits:
            note = f"does not fit: {e.unfit}"
        elif not e.meets_deadline:
            note = f"misses the {deadline} deadline"
        elif not e.within_max_cost:
            note = "exceeds maxCost"
        elif not e.within_budget:
            note = "exceeds the Budget's room"
        elif not auto:
            note = "not requested"
        elif chosen is not None and e.cost > chosen.cost:
            note = f"{money(e.cost - chosen.cost, e.currency)} more than {chosen.pool}"
        elif chosen is not None:
            note = f"as cheap as {chosen.pool} but slower"
        else:
            note = "eligible"
        out.append(dataclasses.replace(e, note=note))
    return out


# ------------------------------------------------------------------ after a run
def estimate_error(estimated_seconds: float | None, actual_seconds: float | None) -> float | None:
    """(actual − estimated) / estimated: +0.25 = the run took 25 % longer than estimated."""
    if not estimated_seconds or actual_seconds is None:
        return None
    return round((actual_seconds - estimated_seconds) / estimated_seconds, 4)


def update_measured(
    measured: Sequence[MeasuredThroughput],
    *,
    pool: AcceleratorPoolSpec,
    spec: RunSpec,
    model: GenModelSpec,
    samples_per_second: float,
) -> list[MeasuredThroughput]:
    """`AcceleratorPool.status.measured` after a run observed `samples_per_second`.

    `samples_per_second` is the trainer's training throughput over all its processes.
    It is normalised to one accelerator in full-training units (dividing out the run's
    accelerators, scaling efficiency and work factor) and folded into the running mean
    of the pool's entry for the model's architecture and resolution (`runs` += 1).
    """
    if samples_per_second <= 0:
        return list(measured)
    hardware = spec.hardware
    cpu = pool.accelerator.is_cpu
    accelerators = accrual.accelerators_on(pool, hardware)
    efficiency = scaling_efficiency(hardware.nodes, processes_per_node(pool, hardware.accelerators_per_node))
    per_accelerator = samples_per_second * work_factor(spec, cpu=cpu) / (accelerators * efficiency)
    out = []
    found = False
    for m in measured:
        if m.architecture == model.architecture and m.resolution == model.resolution:
            runs = max(0, m.runs)
            mean = (m.samples_per_second * runs + per_accelerator) / (runs + 1)
            out.append(dataclasses.replace(m, samples_per_second=round(mean, 6), runs=runs + 1))
            found = True
        else:
            out.append(m)
    if not found:
        out.append(MeasuredThroughput(architecture=model.architecture, resolution=model.resolution,
                                      samples_per_second=round(per_accelerator, 6), runs=1))
    return out


# ------------------------------------------------------------------ for `genforge render`
def choose_pool_for_run(run: Resource, catalog: Any, now: datetime | None = None) -> Any:
    """The pool the operator would run `run` on, or a `plan.Blocked` saying why none."""
    from ..plan import REASON_MODEL_NOT_FOUND, Blocked
    from .periods import admit

    model = catalog.models.get(model_name(run))
    if model is None:
        return Blocked(REASON_MODEL_NOT_FOUND, f"GenModel {model_name(run)!r} not found in namespace {run.namespace}")
    admission = admit(run, model.spec, list(catalog.pools.values()), catalog.budgets, now or datetime.now(UTC))
    if not admission.admitted:
        return Blocked(admission.reason, admission.message, permanent=admission.decision == "Failed")
    return catalog.pools[admission.pool]


def model_name(run: Resource) -> str:
    return run.spec.base_model.name if run.kind == "FineTune" else run.spec.model_ref.name
