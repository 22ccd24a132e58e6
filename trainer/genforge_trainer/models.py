"""The diffusion models genforge trains, apart from the loop.

A ``DiffusionModel`` holds what a training method needs: the trainable ``denoiser`` (a
UNet), the DDPM ``noise_scheduler`` and, for latent models, the frozen VAE and text
encoder. Two architectures:

* ``unet2d-ddpm`` — ``UNet2DModel`` + ``DDPMScheduler`` in pixel space, built from the
  GenModel's config; class-conditional (one class-embedding row per label) when the
  dataset has labels, with row 0 the null class before them when ``classDropout`` > 0
  (classifier-free guidance). Saved as a ``DDPMPipeline`` folder plus ``genforge.json``
  (labels, ``nullClass``).
* ``stable-diffusion`` — ``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` and
  tokenizer from a ``save_pretrained`` folder at ``model.baseUri`` (any fsspec URI; never a
  hub id). Saved as a ``StableDiffusionPipeline`` folder (no safety checker).

Everything loads with ``local_files_only=True``: ``HF_HUB_OFFLINE=1`` always works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genforge_trainer import storage
from genforge_trainer.config import ModelConfig, ModelSpec
from genforge_trainer.exitcodes import ConfigError, DataError, StorageError

log = logging.getLogger(__name__)

GENFORGE_FILE = "genforge.json"


# --------------------------------------------------------------------------- local copies of URIs


@contextlib.contextmanager
def local_dir(uri: str) -> Iterator[str]:
    """A local directory with the contents of ``uri`` (itself when local, else a download)."""
    path = storage.local_path(uri)
    if path is not None:
        if not os.path.isdir(path):
            raise DataError(f"model folder not found: {uri}")
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="genforge-model-")
    try:
        fs, remote = storage.filesystem(uri)
        if not fs.isdir(remote):
            raise DataError(f"model folder not found: {storage.redact_url(uri)}")
        fs.get(remote.rstrip("/") + "/", tmp, recursive=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def publish_dir(uri: str) -> Iterator[str]:
    """Yield a local directory to fill; on success it replaces ``uri`` atomically
    (staging + rename locally; upload then swap on object stores)."""
    with storage.StagedDirectory(uri) as stage:
        path = storage.local_path(stage.url)
        if path is not None:
            yield path
        else:
            tmp = tempfile.mkdtemp(prefix="genforge-out-")
            try:
                yield tmp
                fs, remote = storage.filesystem(stage.url)
                fs.put(tmp.rstrip("/") + "/", remote, recursive=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        stage.commit()


# --------------------------------------------------------------------------- the model


@dataclass
class DiffusionModel:
    architecture: str
    resolution: int
    denoiser: nn.Module
    noise_scheduler: Any  # diffusers.DDPMScheduler
    labels: list[str] = field(default_factory=list)  # class-conditional unet2d: labels[i] is row i (+1 with null_class)
    #: Row 0 of the class embedding is the null class (no label): trained by class dropout,
    #: the unconditional prediction of classifier-free guidance.
    null_class: bool = False
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None

    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along each side (1 for pixel-space models)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def class_conditional(self) -> bool:
        return self.architecture == "unet2d-ddpm" and bool(self.labels)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.vae, self.text_encoder) if m is not None]

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> DiffusionModel:
        """Move the frozen parts (the denoiser is moved by accelerate)."""
        for module in self.frozen_modules():
            module.to(device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ training-time helpers
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Model-space inputs from pixels in [-1, 1]: pixels themselves, or VAE latents."""
        if self.vae is None:
            return pixels
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            return dist.mean * self.vae.config.scaling_factor

    def label_row(self, label: str) -> int:
        """The class-embedding row of ``label`` (after the null class's row 0, if any)."""
        try:
            return self.labels.index(label) + int(self.null_class)
        except ValueError as exc:
            raise DataError(f"label {label!r} is not one of the model's labels {self.labels}") from exc

    def label_ids(self, labels: list[str | None], device: torch.device) -> torch.Tensor:
        offset = int(self.null_class)
        index = {name: i + offset for i, name in enumerate(self.labels)}
        try:
            return torch.tensor([index[label] for label in labels], device=device, dtype=torch.long)
        except KeyError as exc:
            raise DataError(f"label {exc.args[0]!r} is not one of the model's labels {self.labels}") from exc

    def check_guidance(self, scale: float) -> None:
        """Refuse classifier-free guidance (``scale`` != 1) on a model without a null class:
        there is no unconditional prediction to guide away from."""
        if scale == 1.0:
            return
        if not self.class_conditional:
            raise ConfigError(
                f"model.config.guidanceScale {scale:g} needs a class-conditional unet2d-ddpm model "
                f"(this {self.architecture} model has no class labels); sample it with guidanceScale 1"
            )
        if not self.null_class:
            raise ConfigError(
                f"model.config.guidanceScale {scale:g} needs a model trained with classDropout > 0; this one "
                f"has no null class (its {len(self.labels)} class-embedding rows are its labels): sample it with "
                "guidanceScale 1 (genforge generate: --guidance-scale 1), or train a model with classDropout"
            )

    def encode_prompts(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(tokens)[0]

    def conditioning(
        self, captions: list[str], labels: list[str | None], device: torch.device
    ) -> dict[str, Any]:
        """Keyword arguments for ``denoiser(x, t, **kwargs)`` for a batch."""
        if self.architecture == "stable-diffusion":
            with torch.no_grad():
                return {"encoder_hidden_states": self.encode_prompts(captions, device)}
        if self.class_conditional:
            return {"class_labels": self.label_ids(labels, device)}
        return {}

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        if kind == "sample":
            return latents
        raise ConfigError(f"unsupported prediction type {kind!r}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        count: int,
        *,
        steps: int,
        generator: torch.Generator,
        labels: list[str] | None = None,
        prompts: list[str] | None = None,
        denoiser: nn.Module | None = None,
        batch_size: int = 32,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """``count`` images as float [-1, 1] (N×3×H×W, on the CPU), DDIM-sampled with η =
        ``eta`` (``ModelConfig.ddim_eta``; above 0, each step's fresh noise comes from
        ``generator`` too, after the batch's initial noise) and classifier-free guidance
        ``guidance_scale`` (``ModelConfig.guidance_scale``; 1: none)."""
        from diffusers import DDIMScheduler

        self.check_guidance(guidance_scale)
        net = denoiser if denoiser is not None else self.denoiser
        device = next(net.parameters()).device
        dtype = next(net.parameters()).dtype
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        out = []
        was_training = net.training
        net.eval()
        try:
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                channels = net.config.in_channels
                size = self.resolution // self.latent_factor
                x = torch.randn((n, channels, size, size), generator=generator, device="cpu").to(
                    device, dtype
                )
                batch_labels = (labels or [None] * count)[start : start + n]
                batch_prompts = (prompts or [""] * count)[start : start + n]
                cond = self.conditioning(batch_prompts, batch_labels, device)
                cond = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
                scheduler.set_timesteps(steps, device=device)
                for t in scheduler.timesteps:
                    if guidance_scale != 1.0:
                        model_out = self.guided(net, x, t, cond["class_labels"], guidance_scale)
                    else:
                        model_out = net(x, t, **cond).sample
                    x = scheduler.step(model_out, t, x, eta=eta, generator=generator).prev_sample
                if self.vae is not None:
                    x = self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
                out.append(x.float().clamp(-1, 1).cpu())
        finally:
            net.train(was_training)
        return torch.cat(out)

    def guided(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Classifier-free guidance: ``uncond + scale · (cond − uncond)`` of the denoiser's
        output (noise, velocity or image alike: the combination is linear), the conditional
        and the null-class halves in one forward pass of twice the batch."""
        null = torch.zeros_like(class_labels)
        out = net(torch.cat([x, x]), t, class_labels=torch.cat([class_labels, null])).sample
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str, denoiser: nn.Module | None = None) -> None:
        """A pipeline folder (safetensors) loadable with ``from_pretrained`` offline."""
        from diffusers import DDPMPipeline, StableDiffusionPipeline

        net = denoiser if denoiser is not None else self.denoiser
        if self.architecture == "stable-diffusion":
            pipe = StableDiffusionPipeline(
                vae=self.vae,
                text_encoder=self.text_encoder,
                tokenizer=self.tokenizer,
                unet=net,
                scheduler=self.noise_scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = DDPMPipeline(unet=net, scheduler=self.noise_scheduler)
        pipe.save_pretrained(directory, safe_serialization=True)
        meta = {"architecture": self.architecture, "resolution": self.resolution, "labels": self.labels,
                **({"nullClass": True} if self.null_class else {})}
        with open(os.path.join(directory, GENFORGE_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)


# --------------------------------------------------------------------------- building and loading


def _block_types(levels: tuple[bool, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    down = tuple("AttnDownBlock2D" if attn else "DownBlock2D" for attn in levels)
    up = tuple("AttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(levels))
    return down, up


def build_unet2d(spec: ModelSpec, labels: list[str]) -> DiffusionModel:
    """A fresh ``unet2d-ddpm`` from the GenModel's config (with the null class's row 0 when
    ``classDropout`` > 0)."""
    from diffusers import DDPMScheduler, UNet2DModel

    cfg = spec.config
    if cfg.class_dropout > 0 and not labels:
        raise ConfigError(
            f"model.config.classDropout {cfg.class_dropout:g} needs a class-conditional model, and this "
            "dataset has no labels: set classDropout to 0"
        )
    null_class = cfg.class_dropout > 0
    down, up = _block_types(cfg.attention_levels)
    unet = UNet2DModel(
        sample_size=spec.resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=cfg.block_out_channels,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.groups,
        attention_head_dim=cfg.attention_head_dim,
        dropout=cfg.dropout,
        num_class_embeds=(len(labels) + int(null_class)) or None,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.rescale_betas_zero_snr,
        timestep_spacing=cfg.timestep_spacing,
    )
    return DiffusionModel("unet2d-ddpm", spec.resolution, unet, scheduler, labels=list(labels),
                          null_class=null_class)


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_pretrained(uri: str, spec: ModelSpec) -> DiffusionModel:
    """Load a pipeline folder written by ``save_pretrained`` (ours or diffusers')."""
    with local_dir(uri) as path:
        if os.path.exists(os.path.join(path, ADAPTER_CONFIG)) and not os.path.isdir(
            os.path.join(path, "unet")
        ):
            raise DataError(
                f"{storage.redact_url(uri)} is a LoRA adapter, not a model: give the model it was "
                f"trained on as model.baseUri and the adapter in model.baseAdapters"
            )
        meta = {}
        if os.path.exists(os.path.join(path, GENFORGE_FILE)):
            with open(os.path.join(path, GENFORGE_FILE), encoding="utf-8") as f:
                meta = json.load(f)
        try:
            if spec.architecture == "stable-diffusion":
                return _load_stable_diffusion(path, spec)
            from diffusers import DDPMScheduler, UNet2DModel

            unet = UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True)
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot load a {spec.architecture} model from {storage.redact_url(uri)}: {exc}"
            ) from exc
    labels = list(meta.get("labels") or [])
    null_class = bool(meta.get("nullClass")) and bool(unet.config.num_class_embeds)
    rows = unet.config.num_class_embeds
    if rows and len(labels) + int(null_class) != rows:
        labels = [str(i) for i in range(rows - int(null_class))]
    if unet.config.sample_size != spec.resolution:
        log.warning(
            "base model was trained at %spx, this run uses %dpx", unet.config.sample_size, spec.resolution
        )
    return DiffusionModel("unet2d-ddpm", spec.resolution, unet, scheduler, labels=labels, null_class=null_class)


def _load_stable_diffusion(path: str, spec: ModelSpec) -> DiffusionModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    vae.eval()
    text_encoder.eval()
    return DiffusionModel(
        "stable-diffusion",
        spec.resolution,
        unet,
        scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


# --------------------------------------------------------------------------- LoRA adapters


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold injected LoRA weights into the base layers and remove the adapter wrappers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, BaseTunerLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config  # no adapter left: a later injection starts clean
    return module


def load_lora_adapter(denoiser: nn.Module, adapter_uri: str) -> nn.Module:
    """Inject a saved adapter (``methods.Lora.save_artifacts``) into a base UNet, in place."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    with local_dir(adapter_uri) as path:
        try:
            with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as f:
                raw = json.load(f)
            weights = load_file(os.path.join(path, ADAPTER_WEIGHTS))
        except (OSError, ValueError) as exc:
            raise DataError(f"{storage.redact_url(adapter_uri)} is not a LoRA adapter folder: {exc}") from exc
    config = LoraConfig(
        r=raw["r"],
        lora_alpha=raw["lora_alpha"],
        target_modules=raw["target_modules"],
        lora_dropout=raw.get("lora_dropout", 0.0),
    )
    inject_adapter_in_model(config, denoiser)
    result = set_peft_model_state_dict(denoiser, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise DataError(
            f"LoRA adapter {storage.redact_url(adapter_uri)} does not fit the model it is applied to "
            f"(unexpected {sorted(unexpected)[:3]})"
        )
    return denoiser


def merge_adapters(model: DiffusionModel, adapter_uris: tuple[str, ...] | list[str]) -> DiffusionModel:
    """Merge each LoRA adapter, in order, into the model's denoiser: the weights of the
    GenModel version the last adapter is (a plain model again, no peft wrappers left)."""
    for uri in adapter_uris:
        try:
            load_lora_adapter(model.denoiser, uri)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DataError(f"cannot apply LoRA adapter {storage.redact_url(uri)}: {exc}") from exc
        merge_lora(model.denoiser)
        log.info("merged LoRA adapter %s into the base model", storage.redact_url(uri))
    return model


def load_base(spec: ModelSpec) -> DiffusionModel:
    """The model at ``baseUri`` with ``baseAdapters`` merged into it."""
    assert spec.base_uri
    return merge_adapters(load_pretrained(spec.base_uri, spec), spec.base_adapters)


def check_guidance_config(model: DiffusionModel, config: ModelConfig) -> None:
    """Refuse a GenModel config the model cannot honour: class dropout or guidance on a
    model without a null class (a base trained without ``classDropout``, or unlabelled)."""
    if config.class_dropout > 0 and not model.null_class:
        raise ConfigError(
            f"model.config.classDropout {config.class_dropout:g} needs a class-conditional model with a null "
            "class; the base model has none (trained with classDropout 0, or without labels): set classDropout to 0"
        )
    model.check_guidance(config.guidance_scale)


def load_or_build(spec: ModelSpec, labels: list[str]) -> DiffusionModel:
    """The model a run starts from: the base at ``baseUri`` (with ``baseAdapters`` merged
    in) when given, else a fresh one."""
    if spec.base_uri:
        return load_base(spec)
    if spec.architecture == "stable-diffusion":  # pragma: no cover - config validation forbids it
        raise ConfigError("stable-diffusion needs model.baseUri")
    return build_unet2d(spec, labels)


def save_model(model: DiffusionModel, uri: str, denoiser: nn.Module | None = None) -> str:
    """Write the model's pipeline folder to ``uri`` atomically; returns ``uri``."""
    try:
        with publish_dir(uri) as path:
            model.save_pretrained(path, denoiser=denoiser)
    except OSError as exc:
        raise StorageError(f"cannot write the model to {storage.redact_url(uri)}: {exc}") from exc
    return uri
