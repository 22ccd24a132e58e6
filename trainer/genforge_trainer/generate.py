"""Generate images from a trained model folder: N PNGs plus ``samples.jsonl``.

What ``genforge generate`` runs (issue 17, item 1; the cluster lookup of a GenModel version
is the operator CLI's part). Image ``i`` is sampled with its own generator seeded ``seed + i``,
so any one image is reproduced by ``--seed seed+i -n 1`` with the same steps, labels and model.
The folder is a save_pretrained pipeline folder as runs write it (``…/model``), with LoRA
adapter folders merged into it in order (a version that is an adapter: its chain back to a
full model).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from genforge_trainer.config import MAX_GUIDANCE_SCALE, ModelConfig, ModelSpec
from genforge_trainer.exitcodes import ConfigError, DataError
from genforge_trainer.imagedata import to_uint8
from genforge_trainer.models import DiffusionModel, load_pretrained, local_dir, merge_adapters


def inspect(uri: str) -> ModelSpec:
    """The ModelSpec of a pipeline folder (architecture and resolution from its own configs)."""
    with local_dir(uri) as path:
        config = Path(path) / "unet" / "config.json"
        if not config.is_file():
            raise DataError(f"{uri} is not a model folder (no unet/config.json): give a version's `…/model` folder")
        unet = json.loads(config.read_text())
        stable = unet.get("_class_name") == "UNet2DConditionModel"
        resolution = int(unet.get("sample_size") or 64)
        if stable and (Path(path) / "vae" / "config.json").is_file():
            vae = json.loads((Path(path) / "vae" / "config.json").read_text())
            resolution *= 2 ** (len(vae.get("block_out_channels") or [1]) - 1)
    architecture = "stable-diffusion" if stable else "unet2d-ddpm"
    return ModelSpec(architecture=architecture, resolution=resolution, config=ModelConfig(), base_uri=uri)


def load(uri: str, adapters: tuple[str, ...] = ()) -> DiffusionModel:
    spec = inspect(uri)
    return merge_adapters(load_pretrained(uri, spec), adapters)


def generate(
    uri: str,
    out_dir: str | os.PathLike[str],
    *,
    count: int | None = None,
    per_label: int | None = None,
    seed: int = 0,
    steps: int = 25,
    label: str | None = None,
    prompt: str | None = None,
    adapters: tuple[str, ...] = (),
    model_name: str = "",
    version: str = "",
    device: str | None = None,
    progress: bool = True,
    guidance_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Write ``count`` PNGs and ``samples.jsonl`` (one record per image) to ``out_dir``.

    ``per_label`` instead of ``count``: that many images of each label of a class-conditional
    model (labels in turn), or that many images in all for any other model.
    ``guidance_scale``: classifier-free guidance (a model trained with ``classDropout``; 1: none).
    """
    if (count is None) == (per_label is None):
        raise ConfigError("give either a count or a number per label")
    if (count if count is not None else per_label) < 1:
        raise ConfigError(f"-n must be at least 1, got {count if count is not None else per_label}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if not (math.isfinite(guidance_scale) and 1.0 <= guidance_scale <= MAX_GUIDANCE_SCALE):
        raise ConfigError(f"--guidance-scale must be in [1, {MAX_GUIDANCE_SCALE:g}], got {guidance_scale}")
    model = load(uri, adapters)
    model.check_guidance(guidance_scale)
    if model.architecture == "stable-diffusion":
        if label is not None:
            raise ConfigError("a stable-diffusion model takes --prompt, not --label")
        prompts: list[str] | None = [prompt or ""]
        labels: list[str] | None = None
    else:
        if prompt is not None:
            raise ConfigError("a unet2d-ddpm model takes --label, not --prompt")
        if model.class_conditional:
            if label is not None and label not in model.labels:
                raise ConfigError(f"label {label!r} is not one the model knows: {', '.join(model.labels)}")
            chosen = label
        elif label is not None:
            raise ConfigError("this model is not class-conditional: it takes no --label")
        else:
            chosen = None
        labels, prompts = None, None
    if count is None:
        count = per_label * (len(model.labels) if model.class_conditional and label is None
                             and model.architecture == "unet2d-ddpm" else 1)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.denoiser.to(target)
    model.to(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(count), desc="generate", disable=not progress):
        if model.architecture == "unet2d-ddpm" and model.class_conditional:
            # No label: the model's labels in turn, so a batch shows every class.
            labels = [chosen if chosen is not None else model.labels[i % len(model.labels)]]
        generator = torch.Generator().manual_seed(seed + i)
        image = to_uint8(model.sample(1, steps=steps, generator=generator, labels=labels, prompts=prompts,
                                      guidance_scale=guidance_scale))[0]
        name = f"sample-{i:04d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / name)
        records.append({"file": name, "seed": seed + i, "label": labels[0] if labels else None,
                        "prompt": prompts[0] if prompts else None, "model": model_name, "version": version,
                        "uri": uri, "adapters": list(adapters), "steps": steps,
                        **({"guidanceScale": guidance_scale} if guidance_scale != 1.0 else {})})
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return records
