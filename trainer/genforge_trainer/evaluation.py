"""Evaluation: held-out denoising loss, FID and KID, sample statistics, a PNG sample grid,
``metrics.json``.

Sample statistics (``genforge_trainer.samplestats.sample_statistics``): on data with plain
backgrounds (the synthetic shapes, product shots), the share of samples on one of the data's
backgrounds, their background noise next to the data's and, for class-conditional models,
whether the object's colour is one the data shows with that label — what a person checks on
the sample grid, and what FID on a few samples does not show.

FID/KID need an image feature extractor. ``evaluation.featureExtractorUri`` may point at a
TorchScript Inception-v3 feature network (e.g. the ``inception-2015-12-05.pt`` file used
by StyleGAN/clean-fid: input float NCHW in [0, 255], 2048-d pool features); its numbers
are comparable with the literature. Without it — no weights can be downloaded — the
trainer uses ``random-conv-v1``: a fixed, seeded random convolutional network (3 strided
conv layers, mean+std pooled at three depths, 224-d), deterministic across machines.
Random-feature FID ranks models sensibly but is NOT comparable with published FID
numbers; ``metrics.featureExtractor`` always says which extractor produced the numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from torch import nn

from genforge_trainer import storage
from genforge_trainer.config import EvaluationSpec, RunSpec
from genforge_trainer.exitcodes import ConfigError
from genforge_trainer.imagedata import ImageSet, to_uint8

log = logging.getLogger(__name__)

FALLBACK_EXTRACTOR = "random-conv-v1"


# --------------------------------------------------------------------------- feature extractors


class RandomConvFeatures(nn.Module):
    """``random-conv-v1``: fixed random conv features (documented in the module docstring).

    Weights come from ``torch.Generator().manual_seed(20240611)`` in a fixed order, so the
    extractor is identical everywhere without shipping any file.
    """

    name = FALLBACK_EXTRACTOR
    size = 64

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(20240611)
        shapes = [(16, 3, 5), (32, 16, 3), (64, 32, 3)]
        self.weights = nn.ParameterList()
        for out_ch, in_ch, k in shapes:
            w = torch.randn(out_ch, in_ch, k, k, generator=g) / math.sqrt(in_ch * k * k)
            self.weights.append(nn.Parameter(w, requires_grad=False))

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float() / 127.5 - 1.0
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        feats = []
        for w in self.weights:
            x = F.leaky_relu(F.conv2d(x, w, stride=2, padding=w.shape[-1] // 2), 0.2)
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(feats, dim=1)


class TorchScriptInception(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.net = torch.jit.load(path, map_location="cpu").eval()
        self.name = f"inception-torchscript:{os.path.basename(path)}"

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float()
        try:
            return self.net(x, return_features=True)
        except (RuntimeError, TypeError):
            return self.net(x)


def feature_extractor(spec: EvaluationSpec | None) -> nn.Module:
    uri = spec.feature_extractor_uri if spec else None
    if not uri:
        return RandomConvFeatures().eval()
    path = storage.local_path(uri)
    if path is None or not os.path.exists(path):
        raise ConfigError(f"evaluation.featureExtractorUri must be a readable local file, got {uri!r}")
    return TorchScriptInception(path)


@torch.no_grad()
def features(extractor: nn.Module, images_uint8: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    out = [extractor(images_uint8[i : i + batch_size].cpu()) for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(out).double().numpy()


# --------------------------------------------------------------------------- FID, KID


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows are samples)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        eps = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
    return max(value, 0.0)


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID: unbiased MMD² with the cubic polynomial kernel, averaged over subsets."""
    d = a.shape[1]
    m = min(len(a), len(b), subset_size)
    if m < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values))


def compare_image_sets(
    real_uint8: torch.Tensor,
    fake_uint8: torch.Tensor,
    extractor: nn.Module | None = None,
    metrics: tuple[str, ...] = ("fid", "kid"),
) -> dict[str, Any]:
    extractor = extractor or RandomConvFeatures().eval()
    fa, fb = features(extractor, real_uint8), features(extractor, fake_uint8)
    out: dict[str, Any] = {"featureExtractor": getattr(extractor, "name", type(extractor).__name__)}
    if "fid" in metrics:
        out["fid"] = round(frechet_distance(fa, fb), 4)
    if "kid" in metrics:
        out["kid"] = round(kernel_inception_distance(fa, fb), 6)
    return out


def reference_set_id(pixels_uint8: torch.Tensor) -> str:
    """Identity of the images a run's loss/FID/KID were measured against: the first 16 hex
    digits of the SHA-256 of the held-out pixels (shape included). Two versions' metrics are
    comparable only when this (and, for FID/KID, the feature extractor) is the same."""
    digest = hashlib.sha256(str(tuple(pixels_uint8.shape)).encode())
    digest.update(pixels_uint8.contiguous().cpu().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


# --------------------------------------------------------------------------- loss, samples


@torch.no_grad()
def held_out_loss(model, denoiser: nn.Module, data: ImageSet, *, seed: int, batch_size: int = 32) -> float:
    """Mean denoising loss on held-out images with fixed noise and timesteps (comparable
    between checkpoints and runs with the same seed)."""
    from genforge_trainer.methods import per_sample_denoising_loss

    device = next(denoiser.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed + 104729)
    total, count = 0.0, 0
    was_training = denoiser.training
    denoiser.eval()
    try:
        for start in range(0, len(data), batch_size):
            part = data.subset(range(start, min(start + batch_size, len(data))))
            pixels = part.pixels.to(device)
            latents_shape = model.encode(pixels[:1].float() / 127.5 - 1).shape[1:]
            n = len(part)
            noise = torch.randn((n, *latents_shape), generator=generator).to(device)
            timesteps = torch.randint(
                0, model.noise_scheduler.config.num_train_timesteps, (n,), generator=generator
            ).to(device)
            cond = model.conditioning(part.captions, part.labels, device)
            losses = per_sample_denoising_loss(
                model, denoiser, pixels, cond, generator, noise=noise, timesteps=timesteps
            )
            total += float(losses.sum())
            count += n
    finally:
        denoiser.train(was_training)
    return total / max(count, 1)


def image_grid(images_uint8: torch.Tensor, columns: int | None = None) -> bytes:
    """PNG bytes of a grid of images (N×3×H×W uint8)."""
    n = len(images_uint8)
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    _, h, w = images_uint8.shape[1:]
    canvas = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images_uint8.permute(0, 2, 3, 1).cpu().numpy()):
        r, c = divmod(i, columns)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = img
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_conditions(model, data: ImageSet, count: int) -> tuple[list[str] | None, list[str] | None]:
    """Labels (class-conditional) or prompts (text-conditioned) for ``count`` samples,
    cycling through the model's labels / the data's captions."""
    if model.class_conditional:
        return [model.labels[i % len(model.labels)] for i in range(count)], None
    if model.architecture == "stable-diffusion":
        captions = data.captions or [""]
        return None, [captions[i % len(captions)] for i in range(count)]
    return None, None


def statistics_against(samples_uint8: torch.Tensor, labels: list[str] | None, reference: ImageSet,
                       seed: int) -> dict[str, float]:
    """``samplestats.sample_statistics`` of samples against (at most ``MAX_REFERENCE``, a
    seeded subset of) the data; empty when the data has no plain backgrounds."""
    from genforge_trainer import samplestats

    if not len(reference):
        return {}
    if len(reference) > samplestats.MAX_REFERENCE:
        pick = np.random.default_rng(seed).choice(len(reference), samplestats.MAX_REFERENCE, replace=False)
        reference = reference.subset(np.sort(pick))
    to_hwc = lambda t: list(t.permute(0, 2, 3, 1).cpu().numpy())  # noqa: E731
    labelled = labels is not None and all(label is not None for label in reference.labels)
    found = samplestats.sample_statistics(
        to_hwc(samples_uint8), to_hwc(reference.pixels),
        labels if labelled else None, reference.labels if labelled else None,
    )
    return found or {}


def evaluate_model(
    spec: RunSpec,
    model,
    denoiser: nn.Module,
    held_out: ImageSet,
    *,
    reference: ImageSet | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the configured evaluation; write ``samples.png`` and ``metrics.json`` under the
    run's output; return termination-message fields (``metrics``, ``samples``).
    ``reference``: the data the sample statistics compare with (default ``held_out``;
    the training run passes the whole dataset, so that every label's colours are seen)."""
    ev = spec.evaluation or EvaluationSpec()
    seed = spec.training.seed if spec.training else 0
    metrics: dict[str, Any] = {}
    if "loss" in ev.metrics and len(held_out):
        metrics["loss"] = round(held_out_loss(model, denoiser, held_out, seed=seed), 6)
    steps = ev.inference_steps or spec.model.config.inference_steps
    labels, prompts = sample_conditions(model, held_out, ev.samples)
    if progress:
        progress(f"sampling {ev.samples} images ({steps} steps)")
    generator = torch.Generator().manual_seed(seed + 31337)
    samples = to_uint8(
        model.sample(
            ev.samples, steps=steps, generator=generator, labels=labels, prompts=prompts, denoiser=denoiser,
            eta=spec.model.config.ddim_eta, guidance_scale=spec.model.config.guidance_scale,
        )
    )
    wanted = tuple(m for m in ev.metrics if m in ("fid", "kid"))
    if wanted and len(held_out) >= 2:
        metrics.update(compare_image_sets(held_out.pixels, samples, feature_extractor(ev), wanted))
    elif wanted:
        metrics["featureExtractor"] = None
        log.warning("FID/KID skipped: fewer than 2 held-out images")
    metrics.update(statistics_against(samples, labels, reference if reference is not None else held_out, seed))
    metrics["samples"] = ev.samples
    metrics["heldOut"] = len(held_out)
    if len(held_out):
        metrics["referenceSet"] = reference_set_id(held_out.pixels)
    metrics["inferenceSteps"] = steps
    metrics["ddimEta"] = spec.model.config.ddim_eta
    metrics["guidanceScale"] = spec.model.config.guidance_scale
    samples_uri = storage.join(spec.output.uri, "samples.png")
    storage.write_bytes(samples_uri, image_grid(samples))
    storage.write_bytes(storage.join(spec.output.uri, "metrics.json"), json.dumps(metrics, indent=2).encode())
    log.info("evaluation: %s", metrics)
    return {"metrics": metrics, "samples": samples_uri}


def run(spec: RunSpec, reporter) -> dict[str, Any]:
    """``genforge-trainer evaluate``: evaluate the model at ``model.baseUri`` (with
    ``model.baseAdapters`` merged in; default: ``<output>/model``) on the dataset's held-out
    split."""
    import dataclasses

    from genforge_trainer.imagedata import load_images, split_held_out
    from genforge_trainer.models import load_base, load_pretrained

    reporter.update(phase="evaluate")
    uri = spec.model.base_uri or spec.model_uri
    model = load_base(spec.model) if spec.model.base_uri else load_pretrained(uri, spec.model)
    model.check_guidance(spec.model.config.guidance_scale)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.denoiser.to(device)
    model.to(device)
    data = load_images(spec.dataset.uri, spec.model.resolution)
    ev = spec.evaluation or EvaluationSpec()
    _, held = split_held_out(len(data), ev.held_out_fraction, spec.training.seed if spec.training else 0)
    held_out = data.subset(held) if len(held) else data
    spec = dataclasses.replace(spec, evaluation=ev)
    result = evaluate_model(spec, model, model.denoiser, held_out, reference=data)
    return {"artifact": uri, **result}
