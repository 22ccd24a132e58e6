"""One strategy object per training method; the loop in ``train.py`` is the same for all.

A ``Method`` decides which parameters train, what a batch is and what the loss is, and
what artifact the run leaves behind:

=============  ==========================================================================
``train``      denoising loss, all UNet weights (fresh model, or ``baseUri`` when given)
``full``       the same, starting from the base version
``lora``       peft LoRA adapters on the UNet (``inject_adapter_in_model``); base frozen;
               artifact: ``<output>/adapter`` (small safetensors), merged model optional
``dreambooth`` instance images + prior preservation on class images the base generates
``embedding``  one new concept embedding, all else frozen: a new class-embedding row
               (class-conditional ``unet2d-ddpm``) or a new token (textual inversion, SD)
``preference`` Diffusion-DPO on (preferred, rejected) pairs against a frozen reference
=============  ==========================================================================

Feedback for ``preference`` (``finetune.preference.feedbackUri``) is JSONL, either one
rated image per line ``{"prompt"|"label": ..., "image": REF, "rating": "up"|"down"}``
(ratings may also be ``1``/``-1`` or ``true``/``false``; every up is paired with every
down of the same prompt/label) or one pair per line
``{"prompt"|"label": ..., "chosen": REF, "rejected": REF}``. ``REF`` is a URI, or a path
relative to the feedback file's directory. Rated lines fold per (image, ``rater``): the last
rating stands, and ``{"image": REF, "rater": ..., "undo": true}`` withdraws it — the
append-only journal ``genforge review`` writes (a torn final line is ignored).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genforge_trainer import storage
from genforge_trainer.config import RunSpec
from genforge_trainer.exitcodes import ConfigError, DataError
from genforge_trainer.imagedata import BatchSampler, ImageSet, decode_image, to_model_input
from genforge_trainer.models import (  # noqa: F401  (load_lora_adapter: re-exported)
    DiffusionModel,
    load_lora_adapter,
    merge_lora,
    publish_dir,
    save_model,
)

log = logging.getLogger(__name__)

#: Datasets up to this size (decoded uint8) are kept on the accelerator.
DEVICE_DATA_BUDGET_BYTES = 2 * 2**30
TEXTUAL_INVERSION_TEMPLATES = ("a photo of {}", "a rendering of {}", "{}", "an image of {}")


@dataclass
class Batch:
    pixels: torch.Tensor  # uint8 [B, 3, H, W] on the device
    captions: list[str]
    labels: list[str | None]


def per_sample_denoising_loss(
    model: DiffusionModel,
    denoiser: nn.Module,
    pixels: torch.Tensor,
    cond: dict[str, Any],
    generator: torch.Generator,
    *,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error of the denoiser's prediction, one value per sample; with
    ``snr_gamma``, weighted by min-SNR-γ (``snr_weights``)."""
    latents = model.encode(to_model_input(pixels))
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if timesteps is None:
        timesteps = torch.randint(
            0,
            model.noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=generator,
            device=latents.device,
        )
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = denoiser(noisy, timesteps, **cond).sample
    target = model.target(latents, noise, timesteps)
    losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(
        dim=tuple(range(1, target.dim()))
    )
    if snr_gamma:
        losses = losses * snr_weights(model.noise_scheduler, timesteps, snr_gamma)
    return losses


def drop_classes(class_labels: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Class dropout for classifier-free guidance: each class id replaced by the null class
    (row 0) with ``probability``, drawn from ``generator`` (the step's: reproducible)."""
    dropped = torch.rand(class_labels.shape, generator=generator, device=generator.device) < probability
    return torch.where(dropped.to(class_labels.device), torch.zeros_like(class_labels), class_labels)


def snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weights (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", 2023) of ``timesteps``: ``min(SNR, γ) / SNR`` for an epsilon target,
    ``min(SNR, γ) / (SNR + 1)`` for a v target and ``min(SNR, γ)`` for an x0 (``sample``)
    target — the same weighting of the x0 error for all three."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps).float()
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if scheduler.config.prediction_type == "sample":
        return clipped
    return clipped / snr.clamp(min=1e-8)


def _freeze_all_but(module: nn.Module, keep: Iterable[nn.Parameter]) -> None:
    keep_ids = {id(p) for p in keep}
    for p in module.parameters():
        p.requires_grad_(id(p) in keep_ids)


class Method:
    """Default behaviour: train every denoiser weight on the dataset's denoising loss."""

    name = "train"

    def __init__(self, spec: RunSpec, model: DiffusionModel, data: ImageSet, device: torch.device) -> None:
        self.spec = spec
        self.model = model
        self.data = data
        self.device = device
        self.modules: dict[str, nn.Module] = {"denoiser": model.denoiser}
        self._sampler: BatchSampler | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Choose trainable parameters, change the model's structure if the method needs to."""
        self.model.denoiser.requires_grad_(True)

    def configure_sampler(self, batch_size: int, seed: int, rank: int, world: int) -> None:
        self._sampler = BatchSampler(self.train_size(), batch_size, seed, rank, world)
        # On an accelerator the whole uint8 dataset lives on the device when it fits in
        # a small budget: a batch is then one on-device gather, no host copy at all.
        self._device_pixels = None
        if self.device.type != "cpu" and self.data.pixels.numel() <= DEVICE_DATA_BUDGET_BYTES:
            self._device_pixels = self.data.pixels.to(self.device)

    def train_size(self) -> int:
        return len(self.data)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def unwrapped(self, name: str = "denoiser") -> nn.Module:
        module = self.modules[name]
        module = getattr(module, "_orig_mod", module)  # torch.compile
        return getattr(module, "module", module)  # DDP

    # ------------------------------------------------------------------ a step
    def next_batch(self, micro_batch: int) -> Batch:
        assert self._sampler is not None
        idx = self._sampler.indices(micro_batch)
        if self._device_pixels is not None:
            pixels = self._device_pixels[torch.from_numpy(idx).to(self.device, non_blocking=True)]
        else:
            pixels = self.data.pixels[torch.from_numpy(idx)].to(self.device)
        return Batch(
            pixels,
            [self.data.captions[i] for i in idx],
            [self.data.labels[i] for i in idx],
        )

    def conditioning(self, batch: Batch) -> dict[str, Any]:
        return self.model.conditioning(batch.captions, batch.labels, self.device)

    #: Whether this method trains with the model's class dropout (``classDropout``); not where
    #: one class row alone learns (``embedding``) or a reference must see the same classes.
    uses_class_dropout = True

    @property
    def class_dropout(self) -> float:
        return self.spec.model.config.class_dropout if self.uses_class_dropout and self.model.null_class else 0.0

    def training_conditioning(self, batch: Batch, generator: torch.Generator) -> dict[str, Any]:
        """``conditioning`` with class dropout applied (classifier-free guidance training)."""
        cond = self.conditioning(batch)
        if self.class_dropout > 0 and "class_labels" in cond:
            cond = {**cond, "class_labels": drop_classes(cond["class_labels"], self.class_dropout, generator)}
        return cond

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        per_sample = per_sample_denoising_loss(
            self.model, self.modules["denoiser"], batch.pixels, self.training_conditioning(batch, generator),
            generator, snr_gamma=self.spec.training.snr_gamma if self.spec.training else None,
        )
        return per_sample.mean()

    def after_step(self) -> None:
        """Called after every optimizer update (e.g. to re-pin frozen slices of a tensor)."""

    # ------------------------------------------------------------------ checkpoint state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.{pname}": p.detach()
            for name in self.modules
            for pname, p in self.unwrapped(name).named_parameters()
            if p.requires_grad
        }

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = {
            f"{name}.{pname}": p
            for name in self.modules
            for pname, p in self.unwrapped(name).named_parameters()
        }
        missing = [k for k in self.trainable_state() if k not in state]
        if missing:
            raise DataError(f"checkpoint does not match this run's model/method (missing {missing[:3]})")
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value.to(params[key].device, params[key].dtype))

    # ------------------------------------------------------------------ artifacts
    def save_artifacts(self) -> dict[str, Any]:
        """Write what the run produces; returns termination-message fields (``artifact``, ...)."""
        uri = save_model(self.model, self.spec.model_uri, denoiser=self.unwrapped())
        return {"artifact": uri}

    def evaluation_denoiser(self) -> nn.Module:
        return self.unwrapped()


class FullFineTune(Method):
    name = "full"


# --------------------------------------------------------------------------- LoRA


def default_lora_targets(module: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    attention = [n for n in ("to_q", "to_k", "to_v") if n in names]
    if attention:
        return [*attention, "to_out.0"]
    return ["conv1", "conv2"]


class Lora(Method):
    name = "lora"

    def setup(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.spec.finetune.lora_or_default
        denoiser = self.model.denoiser
        denoiser.requires_grad_(False)
        self.lora_config = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            init_lora_weights="gaussian",
            target_modules=list(cfg.target_modules or default_lora_targets(denoiser)),
        )
        inject_adapter_in_model(self.lora_config, denoiser)
        for name, p in denoiser.named_parameters():
            p.requires_grad_("lora_" in name)
        count = sum(p.numel() for p in self.trainable_parameters())
        if count == 0:
            raise ConfigError(f"LoRA targets {self.lora_config.target_modules} match no layer of the model")
        log.info(
            "LoRA rank %d on %s: %d trainable parameters",
            cfg.rank,
            sorted(self.lora_config.target_modules),
            count,
        )

    def save_artifacts(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        denoiser = self.unwrapped()
        adapter_uri = storage.join(self.spec.output.uri, "adapter")
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(denoiser).items()}
        with publish_dir(adapter_uri) as path:
            save_file(weights, f"{path}/adapter_model.safetensors")
            config = self.lora_config.to_dict()
            config["target_modules"] = sorted(config["target_modules"])
            with open(f"{path}/adapter_config.json", "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, default=str)
        result: dict[str, Any] = {"artifact": adapter_uri, "adapter": adapter_uri}
        if self.spec.finetune.lora_or_default.merge:
            merged = merge_lora(copy.deepcopy(denoiser))
            result["artifact"] = save_model(self.model, self.spec.model_uri, denoiser=merged)
        return result


# --------------------------------------------------------------------------- embeddings


def _masked_rows_hook(first_trainable_row: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_trainable_row] = 0
        return grad

    return hook


def add_class_row(model: DiffusionModel, concept: str, initializer: str | None) -> int:
    """Append a class-embedding row for ``concept`` (initialised from ``initializer``'s row or
    the mean of the labels' rows — not the null class's); returns its index. Updates the UNet's
    config so save/load keep it."""
    unet = model.denoiser
    old: nn.Embedding = unet.class_embedding
    n = old.num_embeddings
    new = nn.Embedding(n + 1, old.embedding_dim).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight[:n] = old.weight
        if initializer is not None and initializer in model.labels:
            new.weight[n] = old.weight[model.label_row(initializer)]
        else:
            new.weight[n] = old.weight[int(model.null_class):].mean(dim=0)
    unet.class_embedding = new
    unet.register_to_config(num_class_embeds=n + 1)
    model.labels.append(concept)
    return n


class Embedding(Method):
    """Only a new concept embedding learns; everything else stays bit-identical."""

    name = "embedding"
    uses_class_dropout = False

    def setup(self) -> None:
        cfg = self.spec.finetune.embedding
        self.concept = cfg.concept
        if self.model.architecture == "stable-diffusion":
            self._setup_textual_inversion(cfg.initializer)
        elif self.model.class_conditional:
            if self.concept in self.model.labels:
                raise ConfigError(f"embedding concept {self.concept!r} is already a label of the base model")
            self.model.denoiser.requires_grad_(False)
            self.row = add_class_row(self.model, self.concept, cfg.initializer)
            weight = self.model.denoiser.class_embedding.weight
            weight.requires_grad_(True)
            weight.register_hook(_masked_rows_hook(self.row))
            self._frozen_rows = weight[: self.row].detach().clone()
        else:
            raise ConfigError(
                "method embedding needs a text-conditioned (stable-diffusion) or class-conditional unet2d-ddpm base; "
                "this base has no labels"
            )

    def _setup_textual_inversion(self, initializer: str | None) -> None:
        tokenizer, encoder = self.model.tokenizer, self.model.text_encoder
        if tokenizer.add_tokens([self.concept]) != 1:
            raise ConfigError(f"embedding concept {self.concept!r} is already a token of the tokenizer")
        self.token_id = tokenizer.convert_tokens_to_ids(self.concept)
        encoder.resize_token_embeddings(len(tokenizer))
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            init_ids = tokenizer.encode(initializer or "", add_special_tokens=False) if initializer else []
            table[self.token_id] = table[init_ids[0]] if init_ids else table[: self.token_id].mean(dim=0)
        self.model.denoiser.requires_grad_(False)
        encoder.requires_grad_(False)
        table.requires_grad_(True)
        table.register_hook(_masked_rows_hook(self.token_id))
        self._frozen_rows = table[: self.token_id].detach().clone()
        self.modules = {"denoiser": self.model.denoiser, "text_encoder": encoder}

    def after_step(self) -> None:
        # Gradients of the other rows are masked, but weight decay and optimizer epsilon
        # terms would still nudge them: pin them back so they stay bit-identical.
        with torch.no_grad():
            table = self._table()
            table[: self._row()] = self._frozen_rows.to(table.device, table.dtype)

    def next_batch(self, micro_batch: int) -> Batch:
        batch = super().next_batch(micro_batch)
        if self.model.architecture == "stable-diffusion":
            templates = TEXTUAL_INVERSION_TEMPLATES
            batch.captions = [
                templates[(micro_batch + i) % len(templates)].format(self.concept)
                for i in range(len(batch.captions))
            ]
        else:
            batch.labels = [self.concept] * len(batch.labels)
        return batch

    def conditioning(self, batch: Batch) -> dict[str, Any]:
        if self.model.architecture == "stable-diffusion":
            # With gradients: the new token's row is what learns.
            tokens = self.model.tokenizer(
                batch.captions,
                padding="max_length",
                max_length=self.model.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            return {"encoder_hidden_states": self.modules["text_encoder"](tokens)[0]}
        return super().conditioning(batch)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"concept": self.learned_embedding()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self._table()[self._row()] = state["concept"].to(self._table().device)

    def _table(self) -> torch.Tensor:
        if self.model.architecture == "stable-diffusion":
            return self.unwrapped("text_encoder").get_input_embeddings().weight
        return self.unwrapped().class_embedding.weight

    def _row(self) -> int:
        return self.token_id if self.model.architecture == "stable-diffusion" else self.row

    def learned_embedding(self) -> torch.Tensor:
        return self._table()[self._row()].detach()

    def save_artifacts(self) -> dict[str, Any]:
        from safetensors.torch import save_file

        embedding_uri = storage.join(self.spec.output.uri, "embedding")
        with publish_dir(embedding_uri) as path:
            # diffusers' textual-inversion format: {token: vector}; load_textual_inversion reads it.
            save_file(
                {self.concept: self.learned_embedding().cpu().float().clone()},
                f"{path}/learned_embeds.safetensors",
            )
            with open(f"{path}/embedding.json", "w", encoding="utf-8") as f:
                json.dump(
                    {"concept": self.concept, "architecture": self.model.architecture, "row": self._row()},
                    f,
                    indent=2,
                )
        result = {"embedding": embedding_uri, "artifact": embedding_uri}
        if self.model.architecture != "stable-diffusion":
            # The class-conditional UNet with the extra row is a complete, usable version.
            result["artifact"] = save_model(self.model, self.spec.model_uri, denoiser=self.unwrapped())
        return result


# --------------------------------------------------------------------------- DreamBooth


class DreamBooth(Method):
    """Fine-tune on the instance images, keeping the class prior with images the base
    model generates for the class prompt/label (prior-preservation loss)."""

    name = "dreambooth"

    def setup(self) -> None:
        cfg = self.spec.finetune.dreambooth_or_default
        self.cfg = cfg
        model = self.model
        self.instance_label: str | None = None
        self.class_label: str | None = None
        if model.class_conditional:
            if cfg.instance_prompt and cfg.instance_prompt not in model.labels:
                add_class_row(model, cfg.instance_prompt, cfg.class_prompt or None)
            self.instance_label = cfg.instance_prompt or model.labels[0]
            self.class_label = cfg.class_prompt if cfg.class_prompt in model.labels else self.instance_label
        self.class_images = (
            self._generate_class_images() if cfg.num_class_images and cfg.prior_loss_weight else None
        )
        model.denoiser.requires_grad_(True)

    @torch.no_grad()
    def _generate_class_images(self) -> ImageSet:
        from genforge_trainer.imagedata import to_uint8

        n = self.cfg.num_class_images
        generator = torch.Generator().manual_seed(self.spec.training.seed + 7919)
        steps = self.spec.model.config.inference_steps
        self.model.denoiser.to(self.device)
        self.model.to(self.device)
        images = self.model.sample(
            n,
            steps=steps,
            generator=generator,
            labels=[self.class_label] * n if self.model.class_conditional else None,
            prompts=[self.cfg.class_prompt] * n if self.model.architecture == "stable-diffusion" else None,
            eta=self.spec.model.config.ddim_eta,
            guidance_scale=self.spec.model.config.guidance_scale,
        )
        log.info("generated %d class images with the base model (%d steps)", n, steps)
        return ImageSet(to_uint8(images), [self.cfg.class_prompt] * n, [self.class_label] * n)

    def configure_sampler(self, batch_size: int, seed: int, rank: int, world: int) -> None:
        super().configure_sampler(batch_size, seed, rank, world)
        if self.class_images is not None:
            self._class_sampler = BatchSampler(len(self.class_images), batch_size, seed + 1, rank, world)

    def next_batch(self, micro_batch: int) -> Batch:
        batch = super().next_batch(micro_batch)
        batch.captions = [self.cfg.instance_prompt or c for c in batch.captions]
        batch.labels = (
            [self.instance_label] * len(batch.labels) if self.model.class_conditional else batch.labels
        )
        if self.class_images is None:
            return batch
        cls = self.class_images.subset(self._class_sampler.indices(micro_batch))
        return Batch(
            torch.cat([batch.pixels, cls.pixels.to(self.device)]),
            batch.captions + cls.captions,
            batch.labels + cls.labels,
        )

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        per_sample = per_sample_denoising_loss(
            self.model, self.modules["denoiser"], batch.pixels, self.training_conditioning(batch, generator),
            generator, snr_gamma=self.spec.training.snr_gamma if self.spec.training else None,
        )
        if self.class_images is None:
            return per_sample.mean()
        instance, prior = per_sample.chunk(2)
        return instance.mean() + self.cfg.prior_loss_weight * prior.mean()


# --------------------------------------------------------------------------- preference (Diffusion-DPO)


@dataclass
class PreferencePairs:
    chosen: torch.Tensor  # uint8 [N, 3, H, W]
    rejected: torch.Tensor
    prompts: list[str]
    labels: list[str | None]

    def __len__(self) -> int:
        return int(self.chosen.shape[0])


def _rating(value: Any) -> int:
    if value in (True, 1, "up", "+1", "1", "thumbs_up", "like"):
        return 1
    if value in (False, -1, 0, "down", "-1", "0", "thumbs_down", "dislike"):
        return -1
    raise DataError(f"unknown feedback rating {value!r} (use up/down, 1/-1 or true/false)")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _pairings(ups: list[str], downs: list[str], limit: int) -> list[tuple[str, str]]:
    """(👍, 👎) pairs of one label, every rated image in at least one: rounds of the rotation
    up[i] × down[(i + r) mod D], so the first pairs spread over all images (a plain product cut
    at `limit` would pair the first 👍 with every 👎 and leave the other 👍 unused).
    ``max(limit, U, D)`` pairs at most, ``U × D`` when fewer."""
    if not ups or not downs:
        return []
    wanted = min(len(ups) * len(downs), max(limit, len(ups), len(downs)))
    out: list[tuple[str, str]] = []
    for r in range(len(downs)):
        for i in range(len(ups)):
            out.append((ups[i], downs[(i + r) % len(downs)]))
            if len(out) == wanted:
                return out
    return out


def read_feedback(uri: str, resolution: int, max_pairs_per_group: int = 16) -> PreferencePairs:
    """Preference pairs from a feedback JSONL file (format in the module docstring)."""
    base = uri.rsplit("/", 1)[0]

    def ref(value: str) -> str:
        if "://" in value or value.startswith("/"):
            return value
        return storage.join(base, value)

    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"feedback file not found: {storage.redact_url(uri)}") from exc
    tail = text[text.rfind("\n") + 1:] if not text.endswith("\n") else ""
    if tail.strip() and "\n" in text and not _is_json(tail):
        # A journal line torn by a crash (`genforge review` writes whole lines): never acknowledged.
        log.warning("feedback %s: ignoring its unfinished last line", storage.redact_url(uri))
        text = text[: len(text) - len(tail)]
    pairs: list[tuple[str, str, str, str | None]] = []
    # Ratings fold per (image, rater): the last line wins, {"undo": true} withdraws it.
    standing: dict[tuple[str, str], tuple[int, str, str | None]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{storage.redact_url(uri)} line {number}: not JSON ({exc})") from exc
        prompt, label = str(raw.get("prompt") or ""), raw.get("label")
        if "chosen" in raw and "rejected" in raw:
            pairs.append((ref(raw["chosen"]), ref(raw["rejected"]), prompt, label))
        elif "image" in raw and raw.get("undo"):
            standing.pop((ref(raw["image"]), str(raw.get("rater") or "")), None)
        elif "image" in raw and "rating" in raw:
            standing[(ref(raw["image"]), str(raw.get("rater") or ""))] = (_rating(raw["rating"]), prompt, label)
        else:
            raise DataError(f"{storage.redact_url(uri)} line {number}: needs chosen+rejected or image+rating")
    groups: dict[tuple[str, str | None], dict[int, list[str]]] = defaultdict(lambda: {1: [], -1: []})
    for (image, _rater), (rating, prompt, label) in standing.items():
        groups[(prompt, label)][rating].append(image)
    for (prompt, label), rated in groups.items():
        pairs.extend((up, down, prompt, label) for up, down in _pairings(rated[1], rated[-1], max_pairs_per_group))
    if not pairs:
        raise DataError(f"feedback {storage.redact_url(uri)} yields no (preferred, rejected) pair")

    def load(url: str) -> torch.Tensor:
        try:
            return torch.from_numpy(decode_image(storage.read_bytes(url), resolution)).permute(2, 0, 1)
        except FileNotFoundError as exc:
            raise DataError(f"feedback image not found: {storage.redact_url(url)}") from exc

    return PreferencePairs(
        torch.stack([load(p[0]) for p in pairs]),
        torch.stack([load(p[1]) for p in pairs]),
        [p[2] for p in pairs],
        [p[3] for p in pairs],
    )


class Preference(Method):
    """Diffusion-DPO (Wallace et al., 2023): raise the denoiser's relative accuracy on
    preferred over rejected images compared with a frozen reference (the base):

        loss = -log σ(-β/2 · [(e_w - e_l) - (e_w^ref - e_l^ref)])

    with e = per-sample denoising error under the same noise and timestep for both images
    of a pair. At the start the model equals the reference, so the loss is ln 2.
    """

    name = "preference"
    uses_class_dropout = False  # the pair's two images and the reference see the same class

    def setup(self) -> None:
        cfg = self.spec.finetune.preference
        self.beta = cfg.beta
        self.pairs = read_feedback(cfg.feedback_uri, self.model.resolution)
        self.reference = copy.deepcopy(self.model.denoiser).requires_grad_(False).eval().to(self.device)
        self.model.denoiser.requires_grad_(True)
        log.info(
            "preference: %d pairs from %s, beta %g",
            len(self.pairs),
            storage.redact_url(cfg.feedback_uri),
            self.beta,
        )

    def train_size(self) -> int:
        return len(self.pairs)

    def next_batch(self, micro_batch: int) -> Batch:
        idx = torch.from_numpy(self._sampler.indices(micro_batch))
        pixels = torch.cat([self.pairs.chosen[idx], self.pairs.rejected[idx]]).to(self.device)
        prompts = [self.pairs.prompts[i] for i in idx.tolist()]
        labels = [self.pairs.labels[i] for i in idx.tolist()]
        return Batch(pixels, prompts + prompts, labels + labels)

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        half = batch.pixels.shape[0] // 2
        cond = self.conditioning(batch)
        latents = self.model.encode(to_model_input(batch.pixels))
        noise = torch.randn(
            latents[:half].shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
        timesteps = torch.randint(
            0,
            self.model.noise_scheduler.config.num_train_timesteps,
            (half,),
            generator=generator,
            device=latents.device,
        )
        noise, timesteps = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
        errors = per_sample_denoising_loss(
            self.model,
            self.modules["denoiser"],
            batch.pixels,
            cond,
            generator,
            noise=noise,
            timesteps=timesteps,
        )
        with torch.no_grad():
            ref_errors = per_sample_denoising_loss(
                self.model, self.reference, batch.pixels, cond, generator, noise=noise, timesteps=timesteps
            )
        model_diff = errors[:half] - errors[half:]
        ref_diff = ref_errors[:half] - ref_errors[half:]
        return -F.logsigmoid(-0.5 * self.beta * (model_diff - ref_diff)).mean()


METHODS: dict[str, type[Method]] = {
    "train": Method,
    "full": FullFineTune,
    "lora": Lora,
    "dreambooth": DreamBooth,
    "embedding": Embedding,
    "preference": Preference,
}


def build_method(spec: RunSpec, model: DiffusionModel, data: ImageSet, device: torch.device) -> Method:
    key = spec.finetune.method if spec.command == "finetune" and spec.finetune else "train"
    method = METHODS[key](spec, model, data, device)
    method.setup()
    return method


LN2 = math.log(2.0)
