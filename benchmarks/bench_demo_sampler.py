"""Does another sampler make the demo's trained model draw cleaner samples?

Issue 21, part 2: the sampler side of the recipe, on models ``bench_demo_recipe.py``
already trained (``--workdir/<recipe>-s<seed>/model``). Each variant samples the trial's
64 evaluation images again — the same labels (8 per shape) and the same initial noise as
the trial's own evaluation (``seed + 31337``) — with a diffusers scheduler built from the
model's saved noise schedule, and reports the statistics of
``genforge_trainer.samplestats.sample_statistics`` against the 512 data images:

* ``ddimN``: DDIM, N steps, η = 0 (what a TrainingRun's evaluation does with
  ``inferenceSteps: N``; ``ddim25`` reproduces the trial's own figures);
* ``ddimN-etaE``: DDIM with η = E (1: as stochastic as DDPM);
* ``ddpmN``: DDPM ancestral sampling on N of the 1000 training steps;
* ``ddim25-threshold``: DDIM with dynamic thresholding (Imagen; diffusers' ``thresholding``);
* ``dpmpp2m25``: DPM-Solver++(2M), 25 steps, last step to σ = 0.

Every variant keeps diffusers' defaults otherwise (``clip_sample``: the predicted image is
clipped to [-1, 1] at each step, as in the trained schedule's config). Nothing is done to
the samples after sampling. Sampling only — no training — so a variant costs seconds.

Run (after the trials exist)::

    python benchmarks/bench_demo_sampler.py --workdir /tmp/recipe21 --trials v-small-g20-s0 v-small-g20-s1
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))

from genforge_trainer.evaluation import image_grid, sample_conditions, statistics_against, to_uint8  # noqa: E402
from genforge_trainer.imagedata import load_images  # noqa: E402
from genforge_trainer.models import load_pretrained  # noqa: E402

SAMPLES = 64
#: name -> (diffusers scheduler class, steps, scheduler config overrides, DDIM η or None)
VARIANTS: dict[str, tuple[str, int, dict, float | None]] = {
    "ddim25": ("DDIMScheduler", 25, {}, None),
    "ddim15": ("DDIMScheduler", 15, {}, None),
    "ddim25-eta0.5": ("DDIMScheduler", 25, {}, 0.5),
    "ddim25-eta1": ("DDIMScheduler", 25, {}, 1.0),
    "ddim50-eta1": ("DDIMScheduler", 50, {}, 1.0),
    "ddim100-eta1": ("DDIMScheduler", 100, {}, 1.0),
    "ddpm50": ("DDPMScheduler", 50, {}, None),
    "ddpm100": ("DDPMScheduler", 100, {}, None),
    "ddim25-threshold": ("DDIMScheduler", 25, {"thresholding": True}, None),
    "dpmpp2m25": ("DPMSolverMultistepScheduler", 25, {"final_sigmas_type": "zero"}, None),
    # More of the steps at low noise, where the corner speckle is decided: ancestral (DDPM)
    # steps at t = 999·(1 − i/N)^p (p = 2, 3). (Karras σ spacing itself does not fit a
    # zero-terminal-SNR schedule: its σ_max is 4096 and most steps land on t ≈ 990.)
    "ddpm50-quad": ("DDPMScheduler", 50, {}, None),
    "ddpm50-cubic": ("DDPMScheduler", 50, {}, None),
    "ddpm100-quad": ("DDPMScheduler", 100, {}, None),
    "euler-a50": ("EulerAncestralDiscreteScheduler", 50, {}, None),
    "euler-a100": ("EulerAncestralDiscreteScheduler", 100, {}, None),
    "ddim50-eta1-linspace": ("DDIMScheduler", 50, {"timestep_spacing": "linspace"}, 1.0),
}
#: name -> p of the variants sampled at t = 999·(1 − i/N)^p instead of the scheduler's spacing.
SPACING_POWER = {"ddpm50-quad": 2, "ddpm50-cubic": 3, "ddpm100-quad": 2}


@torch.no_grad()
def sample(model, scheduler, steps: int, labels: list[str], generator: torch.Generator,
           eta: float | None, power: int | None = None) -> torch.Tensor:
    """64 images in [-1, 1], drawn in batches of 32 as ``DiffusionModel.sample`` draws them."""
    import diffusers

    net = model.denoiser.eval()
    stochastic = isinstance(scheduler, diffusers.DDPMScheduler) or not isinstance(scheduler, diffusers.DDIMScheduler)
    custom = (sorted({round(999 * (1 - i / steps) ** power) for i in range(steps)}, reverse=True)
              if power else None)
    out = []
    for start in range(0, SAMPLES, 32):
        x = torch.randn((32, 3, model.resolution, model.resolution), generator=generator)
        cond = model.conditioning([""] * 32, labels[start : start + 32], torch.device("cpu"))
        if custom:
            scheduler.set_timesteps(timesteps=custom)
        else:
            scheduler.set_timesteps(steps)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            prediction = net(scheduler.scale_model_input(x, t), t, **cond).sample
            if eta is not None:
                x = scheduler.step(prediction, t, x, eta=eta, generator=generator).prev_sample
            elif stochastic and "generator" in inspect.signature(scheduler.step).parameters:
                x = scheduler.step(prediction, t, x, generator=generator).prev_sample
            else:
                x = scheduler.step(prediction, t, x).prev_sample
        out.append(x.float().clamp(-1, 1))
    return torch.cat(out)


def run_variants(work: Path, trial: str, names: list[str]) -> list[dict]:
    import diffusers

    from genforge_trainer.config import ModelSpec

    seed = int(trial.rsplit("-s", 1)[1])
    data = load_images(f"file://{work / 'data'}", 16)
    model = load_pretrained(f"file://{work / trial / 'model'}", ModelSpec(name="shapes", architecture="unet2d-ddpm",
                                                                         resolution=16))
    labels, _ = sample_conditions(model, data, SAMPLES)
    rows = []
    for name in names:
        cls, steps, overrides, eta = VARIANTS[name]
        scheduler = getattr(diffusers, cls).from_config(model.noise_scheduler.config, **overrides)
        generator = torch.Generator().manual_seed(seed + 31337)
        start = time.perf_counter()
        samples = to_uint8(sample(model, scheduler, steps, labels, generator, eta, SPACING_POWER.get(name)))
        found = statistics_against(samples, labels, data, seed)
        (work / trial / f"sampler-{name}.png").write_bytes(image_grid(samples))
        rows.append({"trial": trial, "sampler": name, "bg": found["onDataBackground"],
                     "mix": found["backgroundMix"], "noise": found["backgroundNoise"],
                     "colour": found["labelColour"], "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="bench_demo_recipe.py's --workdir")
    parser.add_argument("--trials", nargs="+", required=True, help="trial folders, e.g. v-small-g20-s0")
    parser.add_argument("--samplers", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = [row for trial in args.trials for row in run_variants(args.workdir, trial, args.samplers)]
    print("| trial | sampler | on a data background | background mix | corner noise | colour ≈ label |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['sampler']} | {100 * r['bg']:.0f} % | {r['mix']:.2f} | {r['noise']:.1f} "
              f"| {100 * r['colour']:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
