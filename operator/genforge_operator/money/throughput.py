"""How fast a run trains on a pool: the FLOP model, priors and measured throughput. Pure.

The model (docs/estimates.md has the derivation and a worked example):

* **Work.** Each optimizer step consumes `batchSize × gradientAccumulation` samples *per
  trainer process* (the trainer's contract); a run has one process per accelerator, or
  one per node on CPU pools — the same count the cost model bills. So
  `samples = remaining steps × batchSize × gradientAccumulation × processes`.
* **Effective FLOP/s per accelerator** (in full-training, mixed-precision units): measured
  on the pool by earlier runs (`calibration.py`, `AcceleratorPool.status.calibration`), else
  the prior `prior_flops_per_second`: a known accelerator's published dense bf16 peak ×
  `MODEL_FLOPS_UTILISATION`, a cpu pool's `cpusPerNode` × `CPU_CORE_FLOPS`, or the
  reference device's sustained FLOP/s; × `pool.relativeThroughput` in every case.
  Training FLOPs per sample are counted from the UNet's layers (convolutions, attention,
  transformer blocks) at the model's resolution: forward + backward = 3 × forward, plus
  the frozen VAE and text encoder forward for `stable-diffusion`.
* **Work factors.** `mixedPrecision: "no"` on an accelerator costs ×2 (fp32 runs at about
  half the tensor-core rate); fine-tuning methods cost a factor of full training
  (`METHOD_FACTORS`).
* **Scaling.** `accelerators × efficiency`, efficiency = 0.98 per doubling of
  accelerators within a node × 0.95 per doubling of nodes.
* **Calibration.** After a run, `calibration.fold_run` records each part the trainer
  timed (start-up, training FLOP/s, evaluation FLOP/s, checkpoint writes) on the pool;
  `update_measured` still keeps the older per-architecture `status.measured` samples/s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ..api import (
    AcceleratorPoolSpec,
    FineTuneSpec,
    GenModelSpec,
    MeasuredThroughput,
    ModelConfig,
    Resource,
    TrainingRunSpec,
)
from . import accrual

RunSpec = TrainingRunSpec | FineTuneSpec

# ------------------------------------------------------------------ calibration
#: Training FLOP/s of one vCPU beside the per-step overhead, for cpu pools that give
#: `cpusPerNode`. Fitted with STEP_OVERHEAD_SECONDS_CPU by benchmarks/bench_step_overhead.py
#: on the demo's 2-vCPU machine twice on 2026-12-07: 75 ms + 38 GFLOP/s a vCPU at 11:14 and
#: 33 ms + 66 GFLOP/s at 22:48 (the same model's step: 110 ms, then 62 ms — the host's speed,
#: not the code). The prior sits between the two (50 ms + 50 GFLOP/s), so a first estimate is
#: within 2× in both (docs/benchmarks.md).
CPU_CORE_FLOPS = 50e9
#: The reference CPU node (relativeThroughput 1.0 on a cpu pool without `cpusPerNode`): 8 vCPUs.
REFERENCE_CPU_NODE_FLOPS = 8 * CPU_CORE_FLOPS
#: Published dense bf16 peak FLOP/s of one accelerator (GPU: NVIDIA datasheets, without
#: sparsity; TPU: Google Cloud's per-chip figures), by the GKE accelerator label.
ACCELERATOR_PEAK_FLOPS = {
    "nvidia-tesla-t4": 65e12,
    "nvidia-tesla-v100": 125e12,
    "nvidia-l4": 121e12,
    "nvidia-tesla-a100": 312e12,
    "nvidia-a100-80gb": 312e12,
    "nvidia-l40s": 362e12,
    "nvidia-h100-80gb": 989e12,
    "nvidia-h100-mega-80gb": 989e12,
    "nvidia-h200-141gb": 989e12,
    "tpu-v4-podslice": 275e12,
    "tpu-v5-lite-podslice": 197e12,
    "tpu-v5p-slice": 459e12,
    "tpu-v6e-slice": 918e12,
}
#: The share of that peak a diffusion UNet's training sustains (model FLOPs utilisation):
#: ~25 % is typical of convolution-heavy models in bf16 (an L4 at 25 % is the reference).
MODEL_FLOPS_UTILISATION = 0.25
#: Sustained training FLOP/s of the reference accelerator (relativeThroughput 1.0 on a type
#: not in ACCELERATOR_PEAK_FLOPS): one NVIDIA L4 in bf16 at MODEL_FLOPS_UTILISATION.
REFERENCE_ACCELERATOR_FLOPS = ACCELERATOR_PEAK_FLOPS["nvidia-l4"] * MODEL_FLOPS_UTILISATION
#: Seconds from Job creation to the first training step: image pull, model and data
#: load; plus rendezvous per doubling of nodes. On a CPU pod whose node has the image it is
#: Python, torch and the data: 6–10 s measured by the demo's runs on a 2-vCPU machine (was
#: 30 s, which put the first estimate there 2.3–3.2× too long, then 12 s); a first pull on a
#: fresh node is longer, and the first run on the pool measures it.
STARTUP_SECONDS_CPU = 10
STARTUP_SECONDS_ACCELERATOR = 120
#: Seconds per checkpoint or final-model write before one was measured on the pool: a
#: small model's (a Stable-Diffusion-sized checkpoint takes longer until measured).
CHECKPOINT_SECONDS_CPU = 1.0
CHECKPOINT_SECONDS_ACCELERATOR = 2.0
RENDEZVOUS_SECONDS_PER_NODE_DOUBLING = 15
#: Seconds a training step costs besides its FLOPs, per trainer process: operator dispatch
#: (a UNet step is hundreds of small kernels), the optimizer and EMA updates, assembling the
#: batch, the progress report. It dominates tiny models on a CPU, so a model with 4× the
#: FLOPs per step takes less than 4× as long (docs/benchmarks.md measures it on the demo's
#: machine, in-process and as runs beside the operator; see CPU_CORE_FLOPS for the fit). On a
#: measured pool it scales with the pool's measured speed (`seconds_at`), so the same model's
#: estimate is its measured step.
STEP_OVERHEAD_SECONDS_CPU = 0.050
STEP_OVERHEAD_SECONDS_ACCELERATOR = 0.01
#: The trainer samples evaluation images in batches of this many (`genforge_trainer.models`).
SAMPLING_BATCH = 32
#: Seconds a denoising call of one sampling batch costs besides its FLOPs (dispatch, the
#: scheduler's step; the metrics' fixed work rides along): like the training step's overhead,
#: it dominates a tiny model's evaluation on a CPU (docs/benchmarks.md fits it on the demo's machine).
SAMPLING_CALL_OVERHEAD_SECONDS_CPU = 0.03
SAMPLING_CALL_OVERHEAD_SECONDS_ACCELERATOR = 0.004
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


def forward_flops_per_sample(model: GenModelSpec) -> float:
    """FLOPs of one denoising step on one sample at inference (≈ a third of training's)."""
    return train_flops_per_sample(model) / 3


def reference_samples_per_second(model: GenModelSpec, *, cpu: bool) -> float:
    """Prior samples/s of `model` on one reference device (an L4, or an 8-vCPU node)."""
    device = REFERENCE_CPU_NODE_FLOPS if cpu else REFERENCE_ACCELERATOR_FLOPS
    return device / train_flops_per_sample(model)


def prior_flops_per_second(pool: AcceleratorPoolSpec) -> tuple[float, str]:
    """The prior effective training FLOP/s of one accelerator (one node on cpu pools), and
    where it comes from, in words."""
    accelerator, relative = pool.accelerator, pool.relative_throughput
    scale = f" × relativeThroughput {relative:g}" if relative != 1 else ""
    if accelerator.is_cpu:
        if pool.cpus_per_node:
            return (pool.cpus_per_node * CPU_CORE_FLOPS * relative,
                    f"{pool.cpus_per_node} vCPUs × {CPU_CORE_FLOPS / 1e9:g} GFLOP/s{scale}")
        return REFERENCE_CPU_NODE_FLOPS * relative, f"the reference 8-vCPU node{scale}"
    peak = ACCELERATOR_PEAK_FLOPS.get(accelerator.type)
    if peak is not None:
        return (peak * MODEL_FLOPS_UTILISATION * relative,
                f"{accelerator.type} {peak / 1e12:g} TFLOP/s peak × {MODEL_FLOPS_UTILISATION:.0%}{scale}")
    return REFERENCE_ACCELERATOR_FLOPS * relative, f"the reference L4{scale}"


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


def step_flops(spec: RunSpec, model: GenModelSpec, *, cpu: bool) -> float:
    """FLOPs of one optimizer step of one trainer process, in full-training units."""
    training = spec.training
    return training.batch_size * training.gradient_accumulation * train_flops_per_sample(model) \
        * work_factor(spec, cpu=cpu)


def step_overhead_seconds(pool: AcceleratorPoolSpec) -> float:
    """The per-step overhead on `pool`: its kind's, ÷ relativeThroughput (a faster pool)."""
    base = STEP_OVERHEAD_SECONDS_CPU if pool.accelerator.is_cpu else STEP_OVERHEAD_SECONDS_ACCELERATOR
    return base / pool.relative_throughput


def seconds_at(rate: float, work: float, overhead: float, prior_rate: float) -> float:
    """Seconds of `work` FLOPs plus its `overhead` (the prior's) on a pool that runs at `rate`
    FLOP/s where its prior says `prior_rate`: the overhead scales with the pool's speed like
    the FLOPs do (a pool measured twice as fast as its prior dispatches twice as fast too), so

        seconds = (overhead × prior_rate + work) ÷ rate

    which is overhead + work ÷ rate at the prior's rate."""
    if rate <= 0:
        return math.inf
    return (overhead * prior_rate + work) / rate


def rate_from_seconds(seconds: float, work: float, overhead: float, prior_rate: float) -> float:
    """The FLOP/s at which `seconds_at` gives the `seconds` a run measured for `work` FLOPs and
    the prior's `overhead`: one run cannot tell overhead from FLOPs, so both scale by how
    much faster or slower than its prior the pool was (`prior_rate` × prior seconds ÷
    measured seconds). The same model's estimate then reproduces the measured step exactly,
    whatever the prior overhead (before: a step shorter than the prior's overhead kept only a
    quarter of it as FLOPs and was estimated up to 1.5× too long)."""
    return (overhead * prior_rate + work) / seconds if seconds > 0 else 0.0


def scaling_efficiency(nodes: int, per_node: int) -> float:
    return INTRA_NODE_EFFICIENCY ** math.log2(max(1, per_node)) * INTER_NODE_EFFICIENCY ** math.log2(max(1, nodes))


def prior_startup_seconds(pool: AcceleratorPoolSpec) -> float:
    """Start-up of a one-node run before any was measured on the pool."""
    return STARTUP_SECONDS_CPU if pool.accelerator.is_cpu else STARTUP_SECONDS_ACCELERATOR


def rendezvous_seconds(nodes: int) -> float:
    """What start-up adds for `nodes` nodes over one (the rendezvous)."""
    return RENDEZVOUS_SECONDS_PER_NODE_DOUBLING * math.log2(max(1, nodes))


def startup_seconds(pool: AcceleratorPoolSpec, nodes: int) -> float:
    return prior_startup_seconds(pool) + rendezvous_seconds(nodes)


def checkpoint_writes(spec: RunSpec, *, completed_steps: int = 0) -> int:
    """Checkpoint and model writes the trainer makes for the steps still to do: one every
    `checkpoint.everySteps` before the last step, one at the last step, the final model."""
    every, steps = spec.checkpoint.every_steps, spec.training.steps
    if not every:
        return 1
    periodic = (steps - 1) // every - completed_steps // every if steps > completed_steps else 0
    return max(0, periodic) + 2


def sampling_calls(samples: float, steps: float) -> int:
    """Denoising calls of an evaluation: batches of SAMPLING_BATCH images × sampling steps."""
    return math.ceil(samples / SAMPLING_BATCH) * int(steps) if samples > 0 and steps > 0 else 0


def evaluation_calls(spec: RunSpec, model: GenModelSpec) -> int:
    evaluation = spec.evaluation
    if evaluation is None:
        return 0
    return sampling_calls(evaluation.samples, evaluation.inference_steps or model.config.inference_steps)


def sampling_overhead_seconds(pool: AcceleratorPoolSpec) -> float:
    """Overhead of one denoising call on `pool`: its kind's, ÷ relativeThroughput."""
    base = SAMPLING_CALL_OVERHEAD_SECONDS_CPU if pool.accelerator.is_cpu else SAMPLING_CALL_OVERHEAD_SECONDS_ACCELERATOR
    return base / pool.relative_throughput


def evaluation_work(spec: RunSpec, model: GenModelSpec) -> float:
    """FLOPs of the evaluation after training: samples × sampling steps × a denoising step
    (× ``sampling_passes``: two with classifier-free guidance)."""
    evaluation = spec.evaluation
    if evaluation is None:
        return 0.0
    steps = evaluation.inference_steps or model.config.inference_steps
    return evaluation.samples * steps * sampling_passes(model) * forward_flops_per_sample(model)


def sampling_passes(model: GenModelSpec) -> int:
    """Denoiser passes per image and sampling step: two with classifier-free guidance (the
    conditional and the null-class prediction, in one call of twice the batch), else one."""
    return 2 if model.config.guidance_scale != 1.0 else 1


def measured_for(pool: Resource, model: GenModelSpec) -> MeasuredThroughput | None:
    status = pool.status
    for m in (status.measured if status else []):
        if m.architecture == model.architecture and m.resolution == model.resolution and m.runs > 0:
            return m
    return None


def legacy_measured_flops(pool: Resource, spec: RunSpec, model: GenModelSpec) -> tuple[float, int] | None:
    """FLOP/s from the older `status.measured` entry for this model's architecture and
    resolution (pools measured before `status.calibration` existed), and its runs."""
    measured = measured_for(pool, model)
    if measured is None or measured.samples_per_second <= 0:
        return None
    cpu = pool.spec.accelerator.is_cpu
    work = step_flops(spec, model, cpu=cpu)
    efficiency = scaling_efficiency(spec.hardware.nodes, processes_per_node(pool.spec, spec.hardware.accelerators_per_node))
    step = work / (measured.samples_per_second * train_flops_per_sample(model) * efficiency)
    prior = prior_flops_per_second(pool.spec)[0]
    return rate_from_seconds(step, work / efficiency, step_overhead_seconds(pool.spec), prior), measured.runs


# ------------------------------------------------------------------ calibration from runs
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
