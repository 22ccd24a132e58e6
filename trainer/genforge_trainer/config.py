"""The run spec document, parsed into typed, documented dataclasses.

The document is the one contract between operator and trainer (docs/contract.md). Keys
are camelCase in JSON and snake_case here; each dataclass field maps to
``camelCase(field name)``. Parsing is strict: an unknown ``schemaVersion``, an unknown
key at any level, a value of the wrong type or out of range all raise ``ConfigError``
(exit code 2), and every problem in the document is reported at once, each with its
JSON path, e.g. ``training.batchSize: must be >= 1, got 0``.

Usage::

    spec = load_run_spec("/etc/genforge/run.json")
    spec.training.batch_size, spec.model.config.block_out_channels, spec.finetune.lora.rank
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genforge_trainer.exitcodes import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "COMMANDS",
    "ConfigError",
    "RunSpec",
    "RunRef",
    "OutputSpec",
    "CheckpointSpec",
    "ModelConfig",
    "ModelSpec",
    "DatasetSpec",
    "TrainingSpec",
    "EvaluationSpec",
    "DistributedSpec",
    "LoraSpec",
    "DreamboothSpec",
    "EmbeddingSpec",
    "PreferenceSpec",
    "FinetuneSpec",
    "SourceSpec",
    "PreparationSpec",
    "PrivacySpec",
    "LicenseSpec",
    "PrepareSpec",
    "parse_run_spec",
    "load_run_spec",
    "to_document",
]

SCHEMA_VERSION = "genforge.dev/v1alpha1"
COMMANDS = ("prepare", "train", "finetune", "evaluate")

Command = Literal["prepare", "train", "finetune", "evaluate"]
Architecture = Literal["unet2d-ddpm", "stable-diffusion"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]
Metric = Literal["loss", "fid", "kid"]
Method = Literal["full", "lora", "dreambooth", "embedding", "preference"]


#: Upper bound of ``ModelConfig.guidance_scale`` (the CRD's maximum too).
MAX_GUIDANCE_SCALE = 20.0


def _check(errors: list[str], ok: bool, path: str, message: str) -> None:
    if not ok:
        errors.append(f"{path}: {message}")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class RunRef:
    """The Kubernetes object this run belongs to (for logs, labels and output names)."""

    name: str
    kind: str = "TrainingRun"
    namespace: str = "default"
    uid: str = ""

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, bool(self.name), f"{path}.name", "must not be empty")


@dataclass(frozen=True)
class OutputSpec:
    """Where artifacts go: ``<uri>/model`` (save_pretrained folder), ``<uri>/samples.png``,
    ``<uri>/metrics.json``; for ``prepare`` the prepared dataset itself."""

    uri: str

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, bool(self.uri), f"{path}.uri", "must not be empty")


@dataclass(frozen=True)
class CheckpointSpec:
    """Checkpointing. ``everySteps: 0`` checkpoints only on SIGTERM (and never periodically);
    the newest ``keep`` checkpoints are kept. ``uri`` defaults to ``<output.uri>/checkpoints``."""

    uri: str | None = None
    every_steps: int = 500
    keep: int = 3

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, self.every_steps >= 0, f"{path}.everySteps", f"must be >= 0, got {self.every_steps}")
        _check(errors, self.keep >= 1, f"{path}.keep", f"must be >= 1, got {self.keep}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs of ``unet2d-ddpm`` (a diffusers UNet2DModel + DDPMScheduler).

    Ignored for ``stable-diffusion``, whose architecture comes from ``baseUri``.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    #: Which resolution levels use self-attention (same length as blockOutChannels);
    #: default: none on the first level, attention on the lowest resolution.
    attention: tuple[bool, ...] | None = None
    #: GroupNorm groups; default: the largest of 32/16/8/4/2/1 dividing every channel count.
    norm_num_groups: int | None = None
    attention_head_dim: int = 8
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    #: What the denoiser predicts: the noise (``epsilon``), the velocity ``α·ε − σ·x0``
    #: (``v_prediction``) or the clean image itself (``sample``, x0).
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    #: Denoising steps when sampling (evaluation, sample grids, DreamBooth class images);
    #: sampling uses DDIM on the trained DDPM noise schedule.
    inference_steps: int = 50
    #: DDIM's η (Song et al., "Denoising Diffusion Implicit Models"): 0 samples
    #: deterministically from the initial noise; 1 adds fresh noise at every step, as much
    #: as DDPM's ancestral sampler (stochastic sampling corrects part of the denoiser's error
    #: instead of carrying it to the image). In [0, 1].
    ddim_eta: float = 0.0
    #: Class (label) dropout for classifier-free guidance (Ho & Salimans, "Classifier-Free
    #: Diffusion Guidance"): a class-conditional model gets one more class-embedding row, the
    #: null class, and each training sample's class is replaced by it with this probability,
    #: so one model learns the conditional and the unconditional denoiser. 0 (the default):
    #: no null class, the model of before. In [0, 1).
    class_dropout: float = 0.0
    #: Classifier-free guidance when sampling a class-conditional model: the prediction is
    #: ``uncond + guidanceScale · (cond − uncond)``. 1 (the default) is the plain conditional
    #: model; above 1 needs a model trained with ``classDropout`` > 0 (its null class).
    guidance_scale: float = 1.0
    #: Rescale the betas to zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules
    #: and Sample Steps are Flawed"): the last training step is pure noise, as sampling's
    #: first step is, so the model cannot lean on image statistics (a mean colour) that
    #: leak through training's last step and are absent when sampling. Needs v_prediction
    #: or sample.
    rescale_betas_zero_snr: bool = False
    #: Where sampling's timesteps fall: ``leading`` (diffusers' default), ``trailing``
    #: (starts at the last training step — with zero terminal SNR), ``linspace``.
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"

    def validate(self, path: str, errors: list[str]) -> None:
        ch = self.block_out_channels
        _check(errors, len(ch) >= 1, f"{path}.blockOutChannels", "must list at least one channel count")
        _check(
            errors, all(c >= 1 for c in ch), f"{path}.blockOutChannels", f"must be positive, got {list(ch)}"
        )
        _check(
            errors,
            self.layers_per_block >= 1,
            f"{path}.layersPerBlock",
            f"must be >= 1, got {self.layers_per_block}",
        )
        if self.attention is not None:
            _check(
                errors,
                len(self.attention) == len(ch),
                f"{path}.attention",
                f"must have one entry per blockOutChannels entry ({len(ch)}), got {len(self.attention)}",
            )
        if self.norm_num_groups is not None:
            _check(
                errors,
                self.norm_num_groups >= 1 and all(c % self.norm_num_groups == 0 for c in ch),
                f"{path}.normNumGroups",
                f"must divide every channel count {list(ch)}, got {self.norm_num_groups}",
            )
        _check(errors, self.attention_head_dim >= 1, f"{path}.attentionHeadDim", "must be >= 1")
        _check(errors, 0.0 <= self.dropout < 1.0, f"{path}.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(errors, self.num_train_timesteps >= 2, f"{path}.numTrainTimesteps", "must be >= 2")
        _check(
            errors,
            1 <= self.inference_steps <= self.num_train_timesteps,
            f"{path}.inferenceSteps",
            f"must be in [1, numTrainTimesteps={self.num_train_timesteps}], got {self.inference_steps}",
        )
        _check(
            errors,
            math.isfinite(self.ddim_eta) and 0.0 <= self.ddim_eta <= 1.0,
            f"{path}.ddimEta",
            f"must be in [0, 1] (0: deterministic DDIM, 1: as stochastic as DDPM), got {self.ddim_eta}",
        )
        _check(
            errors,
            math.isfinite(self.class_dropout) and 0.0 <= self.class_dropout < 1.0,
            f"{path}.classDropout",
            f"must be in [0, 1) (the share of training samples whose class is the null class), got {self.class_dropout}",
        )
        _check(
            errors,
            math.isfinite(self.guidance_scale) and 1.0 <= self.guidance_scale <= MAX_GUIDANCE_SCALE,
            f"{path}.guidanceScale",
            f"must be in [1, {MAX_GUIDANCE_SCALE:g}] (1: no guidance), got {self.guidance_scale}",
        )
        _check(
            errors,
            self.guidance_scale == 1.0 or self.class_dropout > 0.0,
            f"{path}.guidanceScale",
            f"guidance ({self.guidance_scale}) needs a model trained with classDropout > 0 (the unconditional "
            "prediction comes from its null class); classDropout is 0",
        )
        _check(
            errors,
            not self.rescale_betas_zero_snr or self.prediction_type != "epsilon",
            f"{path}.rescaleBetasZeroSnr",
            "needs predictionType v_prediction or sample (at zero SNR an epsilon prediction says nothing "
            "about the image)",
        )

    @property
    def groups(self) -> int:
        if self.norm_num_groups is not None:
            return self.norm_num_groups
        return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in self.block_out_channels))

    @property
    def attention_levels(self) -> tuple[bool, ...]:
        if self.attention is not None:
            return self.attention
        n = len(self.block_out_channels)
        return tuple(n > 1 and i == n - 1 for i in range(n))


@dataclass(frozen=True)
class ModelSpec:
    """The GenModel: architecture, resolution and, for fine-tunes, evaluation of an
    existing version or ``stable-diffusion``, the pretrained weights at ``baseUri``
    (a save_pretrained folder at a ``file://``/fsspec URI or a plain local path).

    ``baseAdapters``: LoRA adapter folders (peft ``adapter_config.json`` +
    ``adapter_model.safetensors``, as a ``lora`` fine-tune without ``merge`` leaves them),
    merged in order into the weights at ``baseUri`` before the run starts — how a run
    starts from a GenModel version that is an adapter. Empty by default."""

    architecture: Architecture
    resolution: int
    name: str = "model"
    config: ModelConfig = field(default_factory=ModelConfig)
    base_uri: str | None = None
    base_adapters: tuple[str, ...] = ()

    def validate(self, path: str, errors: list[str]) -> None:
        _check(
            errors,
            8 <= self.resolution <= 4096,
            f"{path}.resolution",
            f"must be in [8, 4096], got {self.resolution}",
        )
        if self.architecture == "unet2d-ddpm":
            factor = 2 ** (len(self.config.block_out_channels) - 1)
            _check(
                errors,
                self.resolution % factor == 0,
                f"{path}.resolution",
                f"must be divisible by {factor} (2^(levels-1) for {len(self.config.block_out_channels)} levels), "
                f"got {self.resolution}",
            )
        _check(
            errors,
            not self.base_adapters or bool(self.base_uri),
            f"{path}.baseAdapters",
            "needs model.baseUri (the model the adapters are merged into)",
        )
        _check(
            errors,
            all(self.base_adapters),
            f"{path}.baseAdapters",
            "must not contain empty URIs",
        )
        if self.architecture == "stable-diffusion":
            _check(
                errors,
                bool(self.base_uri),
                f"{path}.baseUri",
                "is required for architecture stable-diffusion",
            )
            _check(
                errors,
                self.resolution % 8 == 0,
                f"{path}.resolution",
                f"must be divisible by 8 for stable-diffusion, got {self.resolution}",
            )


@dataclass(frozen=True)
class DatasetSpec:
    """A prepared dataset: ``<uri>/metadata.jsonl`` plus the image files it names."""

    uri: str
    name: str = "dataset"

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, bool(self.uri), f"{path}.uri", "must not be empty")


@dataclass(frozen=True)
class TrainingSpec:
    """Optimisation hyperparameters. ``steps`` counts optimizer updates; each consumes
    ``batchSize × gradientAccumulation × processes`` samples. ``maxGradNorm: 0`` disables
    clipping."""

    steps: int
    batch_size: int
    learning_rate: float = 1e-4
    mixed_precision: MixedPrecision = "no"
    gradient_accumulation: int = 1
    seed: int = 0
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    lr_scheduler: LrScheduler = "constant"
    ema: bool = False
    #: The EMA's decay; diffusers' EMAModel warms it up as ``min(decay, (1 + step) / (10 + step))``,
    #: so a short run's average follows its recent weights, not its random initial ones.
    ema_decay: float = 0.999
    #: Min-SNR-γ loss weighting (Hang et al., 2023): each timestep's loss weighted by
    #: ``min(SNR, γ) / SNR`` (epsilon), ``min(SNR, γ) / (SNR + 1)`` (v-prediction) or
    #: ``min(SNR, γ)`` (sample) — the same weighting of the image's error — so the
    #: many easy low-noise steps stop dominating; 5 is the paper's value. Null: unweighted.
    snr_gamma: float | None = None
    weight_decay: float = 0.0
    #: Optional accelerate trackers ("tensorboard", "mlflow"); logs go under <output.uri>/logs.
    trackers: tuple[Literal["tensorboard", "mlflow"], ...] = ()
    #: Log a line (and update tqdm) every this many steps.
    log_every_steps: int = 10
    #: ``torch.compile`` the denoiser. Default (null): on CUDA for runs of at least
    #: ``AUTO_COMPILE_MIN_STEPS`` steps, where the minute of compilation pays back
    #: (2.1x the plain loop's throughput vs 1.3x without, docs/benchmarks.md); never on CPU.
    compile: bool | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, self.steps >= 1, f"{path}.steps", f"must be >= 1, got {self.steps}")
        _check(errors, self.batch_size >= 1, f"{path}.batchSize", f"must be >= 1, got {self.batch_size}")
        _check(
            errors,
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"{path}.learningRate",
            f"must be > 0, got {self.learning_rate}",
        )
        _check(
            errors,
            self.gradient_accumulation >= 1,
            f"{path}.gradientAccumulation",
            f"must be >= 1, got {self.gradient_accumulation}",
        )
        _check(errors, self.seed >= 0, f"{path}.seed", f"must be >= 0, got {self.seed}")
        _check(
            errors,
            math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
            f"{path}.maxGradNorm",
            f"must be >= 0 (0 disables clipping), got {self.max_grad_norm}",
        )
        _check(
            errors,
            self.lr_warmup_steps >= 0,
            f"{path}.lrWarmupSteps",
            f"must be >= 0, got {self.lr_warmup_steps}",
        )
        _check(
            errors, 0.0 < self.ema_decay < 1.0, f"{path}.emaDecay", f"must be in (0, 1), got {self.ema_decay}"
        )
        _check(
            errors, self.weight_decay >= 0, f"{path}.weightDecay", f"must be >= 0, got {self.weight_decay}"
        )
        _check(
            errors,
            self.snr_gamma is None or (math.isfinite(self.snr_gamma) and self.snr_gamma > 0),
            f"{path}.snrGamma",
            f"must be > 0 (or null: no weighting), got {self.snr_gamma}",
        )
        _check(errors, self.log_every_steps >= 1, f"{path}.logEverySteps", "must be >= 1")


@dataclass(frozen=True)
class EvaluationSpec:
    """What to measure after training (and for ``evaluate``).

    ``samples`` images are generated for the sample grid and FID/KID (compared with up to
    ``samples`` held-out real images). ``featureExtractorUri`` points at Inception-v3
    weights (a torchvision/pytorch-fid state dict); without it a deterministic fallback
    extractor is used and named in the metrics (``featureExtractor``).
    """

    samples: int = 16
    metrics: tuple[Metric, ...] = ("loss", "fid")
    #: Fraction of the dataset held out (deterministically, by seed) for loss/FID/KID.
    held_out_fraction: float = 0.1
    feature_extractor_uri: str | None = None
    #: Sampling steps for evaluation images; default: model.config.inferenceSteps.
    inference_steps: int | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, self.samples >= 1, f"{path}.samples", f"must be >= 1, got {self.samples}")
        _check(
            errors, len(set(self.metrics)) == len(self.metrics), f"{path}.metrics", "must not repeat a metric"
        )
        _check(
            errors,
            0.0 <= self.held_out_fraction < 1.0,
            f"{path}.heldOutFraction",
            f"must be in [0, 1), got {self.held_out_fraction}",
        )
        if self.inference_steps is not None:
            _check(errors, self.inference_steps >= 1, f"{path}.inferenceSteps", "must be >= 1")


@dataclass(frozen=True)
class DistributedSpec:
    """The process layout the operator chose; accelerate reads the actual rendezvous from
    the torchrun environment (``MASTER_ADDR``, ``WORLD_SIZE``, ...)."""

    nodes: int = 1
    processes_per_node: int = 1
    accelerator_type: str = "cpu"

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, self.nodes >= 1, f"{path}.nodes", f"must be >= 1, got {self.nodes}")
        _check(
            errors,
            self.processes_per_node >= 1,
            f"{path}.processesPerNode",
            f"must be >= 1, got {self.processes_per_node}",
        )


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the attention/conv projections; ``merge`` also writes a merged model."""

    rank: int = 8
    alpha: float = 16
    merge: bool = False
    dropout: float = 0.0
    #: Module names to adapt; default: attention projections (to_q/to_k/to_v/to_out.0).
    target_modules: tuple[str, ...] | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, self.rank >= 1, f"{path}.rank", f"must be >= 1, got {self.rank}")
        _check(errors, self.alpha > 0, f"{path}.alpha", f"must be > 0, got {self.alpha}")
        _check(errors, 0.0 <= self.dropout < 1.0, f"{path}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DreamboothSpec:
    """DreamBooth. For text-conditioned models the prompts are text; for class-conditional
    ``unet2d-ddpm`` models ``instancePrompt`` names the (new or existing) class label of the
    instance images and ``classPrompt`` the label whose base-model samples preserve the prior
    (empty: unconditional samples)."""

    instance_prompt: str = ""
    class_prompt: str = ""
    prior_loss_weight: float = 1.0
    num_class_images: int = 16

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, self.prior_loss_weight >= 0, f"{path}.priorLossWeight", "must be >= 0")
        _check(errors, self.num_class_images >= 0, f"{path}.numClassImages", "must be >= 0")


@dataclass(frozen=True)
class EmbeddingSpec:
    """Learn only a new concept embedding: a text token (textual inversion) or, for a
    class-conditional ``unet2d-ddpm``, a new class-embedding row. ``initializer`` is an
    existing word/label whose embedding seeds the new one."""

    concept: str
    initializer: str | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, bool(self.concept.strip()), f"{path}.concept", "must not be empty")


@dataclass(frozen=True)
class PreferenceSpec:
    """Diffusion-DPO from thumbs-up/down feedback (JSONL; see genforge_trainer.methods).
    ``beta`` is the DPO temperature on the per-sample denoising-error differences."""

    feedback_uri: str
    beta: float = 5000.0

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, bool(self.feedback_uri), f"{path}.feedbackUri", "must not be empty")
        _check(errors, self.beta > 0, f"{path}.beta", f"must be > 0, got {self.beta}")


@dataclass(frozen=True)
class FinetuneSpec:
    """A FineTune: ``method`` plus its own block (defaults used when the block is absent,
    except ``embedding`` and ``preference``, whose blocks are required)."""

    method: Method
    base_version: str | None = None
    lora: LoraSpec | None = None
    dreambooth: DreamboothSpec | None = None
    embedding: EmbeddingSpec | None = None
    preference: PreferenceSpec | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        _check(
            errors,
            self.method != "embedding" or self.embedding is not None,
            f"{path}.embedding",
            "is required for method embedding",
        )
        _check(
            errors,
            self.method != "preference" or self.preference is not None,
            f"{path}.preference",
            "is required for method preference",
        )

    @property
    def lora_or_default(self) -> LoraSpec:
        return self.lora or LoraSpec()

    @property
    def dreambooth_or_default(self) -> DreamboothSpec:
        return self.dreambooth or DreamboothSpec()


@dataclass(frozen=True)
class SourceSpec:
    """Raw data: ``file://``, ``s3://``, ``gs://``, ``https://`` (a list file) or
    ``synthetic://shapes?count=..&size=..``; credentials arrive as environment variables."""

    uri: str

    def validate(self, path: str, errors: list[str]) -> None:
        _check(errors, bool(self.uri), f"{path}.uri", "must not be empty")


@dataclass(frozen=True)
class PreparationSpec:
    resolution: int = 64
    crop: Literal["center", "random", "none"] = "center"
    min_resolution: int = 0
    dedupe: bool = True
    max_items: int | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        _check(
            errors,
            8 <= self.resolution <= 4096,
            f"{path}.resolution",
            f"must be in [8, 4096], got {self.resolution}",
        )
        _check(
            errors,
            self.min_resolution >= 0,
            f"{path}.minResolution",
            f"must be >= 0, got {self.min_resolution}",
        )
        if self.max_items is not None:
            _check(errors, self.max_items >= 1, f"{path}.maxItems", f"must be >= 1, got {self.max_items}")


@dataclass(frozen=True)
class PrivacySpec:
    blur_faces: bool = False
    strip_metadata: bool = True
    redact_captions: bool = True


@dataclass(frozen=True)
class LicenseSpec:
    #: SPDX-like ids (lower case); empty: any licence.
    allowed: tuple[str, ...] = ()
    require_license: bool = False


@dataclass(frozen=True)
class PrepareSpec:
    """A Dataset's preparation; the prepared dataset is written to ``output.uri``."""

    source: SourceSpec
    preparation: PreparationSpec = field(default_factory=PreparationSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    license: LicenseSpec = field(default_factory=LicenseSpec)


AUTO_COMPILE_MIN_STEPS = 1000

# The sections each command needs (beyond schemaVersion, command, run, output).
_REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare",),
    "train": ("model", "dataset", "training"),
    "finetune": ("model", "dataset", "training", "finetune"),
    "evaluate": ("model", "dataset"),
}


@dataclass(frozen=True)
class RunSpec:
    """The whole run spec document."""

    schema_version: str
    command: Command
    run: RunRef
    output: OutputSpec
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    model: ModelSpec | None = None
    dataset: DatasetSpec | None = None
    training: TrainingSpec | None = None
    evaluation: EvaluationSpec | None = None
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    finetune: FinetuneSpec | None = None
    prepare: PrepareSpec | None = None

    def validate(self, path: str, errors: list[str]) -> None:
        for section in _REQUIRED_SECTIONS.get(self.command, ()):
            _check(
                errors,
                getattr(self, section) is not None,
                _camel(section),
                f"is required for command {self.command!r}",
            )
        if self.command == "finetune" and self.model is not None:
            _check(
                errors,
                bool(self.model.base_uri),
                "model.baseUri",
                "is required for command 'finetune' (the base version's weights)",
            )
        if self.finetune is not None and self.training is not None:
            _check(
                errors,
                self.finetune.method != "preference" or self.training.snr_gamma is None,
                "training.snrGamma",
                "does not apply to method preference (its loss compares denoising errors of pairs)",
            )

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint.uri or _join(self.output.uri, "checkpoints")

    @property
    def model_uri(self) -> str:
        """Where the trained model's save_pretrained folder goes."""
        return _join(self.output.uri, "model")


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


# --------------------------------------------------------------------------- parsing


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_MISSING = object()


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "a boolean",
            "dict": "an object",
        }.get(tp.__name__, f"an object ({tp.__name__})")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    return str(tp)


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Convert a JSON value to ``tp``; on a problem append to errors and return _MISSING."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            errors.append(f"{path}: must not be null")
            return _MISSING
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(inner, value, path, errors)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and not isinstance(value, bool):
            return value
        errors.append(f"{path}: must be one of {', '.join(repr(v) for v in allowed)}; got {value!r}")
        return _MISSING
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            errors.append(f"{path}: must be a list, got {value!r}")
            return _MISSING
        items = [_convert(inner, item, f"{path}[{i}]", errors) for i, item in enumerate(value)]
        return _MISSING if any(item is _MISSING for item in items) else tuple(items)
    if dataclasses.is_dataclass(tp):
        return _parse_section(tp, value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    errors.append(f"{path}: must be {_type_name(tp)}, got {value!r}")
    return _MISSING


def _parse_section(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    label = path or "document"
    if not isinstance(raw, dict):
        errors.append(f"{label}: must be an object, got {raw!r}")
        return _MISSING
    hints = typing.get_type_hints(cls)
    fields = {_camel(f.name): f for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        errors.append(f"{label}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(fields))})")
    before = len(errors)
    kwargs: dict[str, Any] = {}
    for key, f in fields.items():
        if key in raw:
            value = _convert(hints[f.name], raw[key], prefix + key, errors)
            if value is not _MISSING:
                kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{prefix}{key}: is required")
    if len(errors) > before:
        return _MISSING
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path, errors)
    return obj


def parse_run_spec(document: dict[str, Any]) -> RunSpec:
    """Parse and validate a run spec document; raise ConfigError listing every problem."""
    if not isinstance(document, dict):
        raise ConfigError(f"run spec must be a JSON object, got {type(document).__name__}")
    version = document.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise ConfigError(f"schemaVersion: unsupported {version!r}; this trainer reads {SCHEMA_VERSION!r}")
    errors: list[str] = []
    spec = _parse_section(RunSpec, document, "", errors)
    if errors:
        raise ConfigError("invalid run spec:\n  " + "\n  ".join(errors))
    return spec


def load_run_spec(path: str | Path) -> RunSpec:
    """Read and parse a run spec JSON file (a plain local path)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read run spec {str(path)!r}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run spec {str(path)!r} is not valid JSON: {exc}") from exc
    return parse_run_spec(document)


def to_document(spec: Any) -> Any:
    """The camelCase JSON document for a spec (or any section): parse(to_document(s)) == s."""
    if dataclasses.is_dataclass(spec):
        return {_camel(f.name): to_document(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    if isinstance(spec, tuple | list):
        return [to_document(v) for v in spec]
    return spec
