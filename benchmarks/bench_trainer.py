"""Trainer throughput: genforge's loop against plain diffusers + accelerate loops.

Same model (UNet2DModel from the same config), same batch, same data (a prepared synthetic
shapes dataset on local disk), same machine, one process at a time. The loops:

* ``plain`` — what the diffusers ``train_unconditional.py`` example does as shipped: a
  map-style Dataset that opens and decodes each PNG, a DataLoader, default AdamW,
  ``loss.item()`` every step;
* ``plain-tuned`` — the same with the one-line fixes an engineer would make: fused AdamW
  (where torch has it for the device), the loss accumulated on the device and read every
  ``--log-every`` steps, persistent (and on CUDA pinned) DataLoader workers;
* ``genforge`` — `genforge_trainer.train.run`, the code a TrainingRun executes;
* with ``--compile``, also ``plain-tuned+compile`` and ``genforge+compile`` (torch.compile).

One timer for every loop: a global optimizer-step hook notes the time when step
``--warmup`` and the last step finish (CUDA synchronised), so samples/s = (steps − warmup)
× batch ÷ that time, warm-up and compilation excluded alike. ``--trials`` repeats every
loop, interleaved (the order rotates each trial); min/median/max are printed and ratios
are of medians. On a GPU also bf16 model FLOPs utilisation (FLOPs counted with torch's
FlopCounterMode for one forward+backward). Run::

    python benchmarks/bench_trainer.py --trials 5                  # CPU defaults (32 px)
    python benchmarks/bench_trainer.py --resolution 64 --batch-size 128 --mixed-precision bf16 \\
        --channels 128,256,256,512 --layers 2 --steps 150 --warmup 30 --plain-workers 8 --compile  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))

from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.data import synthetic  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def write_dataset(directory: Path, count: int, size: int) -> str:
    (directory / "images").mkdir(parents=True)
    params = synthetic.ShapesParams(count=count, size=size, seed=0)
    with open(directory / "metadata.jsonl", "w") as meta:
        for i in range(count):
            item = synthetic.generate(params, i)
            name = f"images/{i:06d}.png"
            item.image.save(directory / name)
            # No labels: genforge then builds the same unconditional UNet2DModel the plain loops train.
            meta.write(json.dumps({"file_name": name, "caption": item.caption}) + "\n")
    return f"file://{directory}"


def run_spec(args, data_uri: str, out: Path, *, compile_model: bool = False):
    channels = [int(c) for c in args.channels.split(",")]
    return parse_run_spec(
        {
            "schemaVersion": "genforge.dev/v1alpha1",
            "command": "train",
            "run": {"name": "bench"},
            "output": {"uri": f"file://{out}"},
            "checkpoint": {"everySteps": 0, "keep": 1},
            "model": {
                "architecture": "unet2d-ddpm",
                "resolution": args.resolution,
                "config": {"blockOutChannels": channels, "layersPerBlock": args.layers},
            },
            "dataset": {"uri": data_uri},
            "training": {
                "steps": args.steps,
                "batchSize": args.batch_size,
                "learningRate": 1e-4,
                "mixedPrecision": args.mixed_precision,
                "logEverySteps": args.log_every,
                "compile": compile_model,
            },
            "evaluation": None,
        }
    )


# --------------------------------------------------------------------------- the plain loop


class PngDataset(torch.utils.data.Dataset):
    """What the diffusers example does with torchvision transforms, in PIL + numpy."""

    def __init__(self, root: Path, resolution: int) -> None:
        lines = (root / "metadata.jsonl").read_text().splitlines()
        self.files = [root / json.loads(line)["file_name"] for line in lines]
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = (
            Image.open(self.files[i])
            .convert("RGB")
            .resize((self.resolution, self.resolution), Image.Resampling.BILINEAR)
        )
        array = np.asarray(image, dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


class StepTimer:
    """Notes when optimizer step `warmup` and step `steps` finish, for any loop (a global
    optimizer-step hook: the same timer for the plain loops and genforge's)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.count = warmup, steps, 0
        self.start: float | None = None
        self.end: float | None = None
        self._handle = None

    def __enter__(self) -> StepTimer:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _hook(self, optimizer, args, kwargs) -> None:
        self.count += 1
        if self.count in (self.warmup, self.steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if self.count == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    def samples_per_second(self, batch_size: int) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the loop made {self.count} optimizer steps, expected {self.steps}")
        return (self.steps - self.warmup) * batch_size / (self.end - self.start)


def _fused_adamw(params, device: torch.device, lr: float):
    """Fused AdamW where torch has a fused kernel for the device, else the foreach one."""
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, foreach=True)


def plain_loop(args, data_dir: Path, model, *, tuned: bool = False, compile_model: bool = False) -> float:
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    accelerator = Accelerator(mixed_precision=args.mixed_precision if torch.cuda.is_available() else "no")
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    params = list(model.parameters())
    device = accelerator.device
    optimizer = _fused_adamw(params, device, 1e-4) if tuned else torch.optim.AdamW(params, lr=1e-4)
    workers = args.plain_workers
    loader = torch.utils.data.DataLoader(
        PngDataset(data_dir, args.resolution),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=tuned and workers > 0,
        pin_memory=tuned and torch.cuda.is_available(),
    )
    lr_scheduler = get_scheduler("constant", optimizer)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    forward = torch.compile(model) if compile_model else model
    model.train()
    window = torch.zeros((), device=device)
    step = 0
    with StepTimer(args.warmup, args.steps) as timer:
        while step < args.steps:
            for images in loader:
                noise = torch.randn(images.shape, device=images.device)
                timesteps = torch.randint(0, 1000, (images.shape[0],), device=images.device)
                noisy = scheduler.add_noise(images, noise, timesteps)
                with accelerator.accumulate(model):
                    loss = F.mse_loss(forward(noisy, timesteps).sample.float(), noise)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                if tuned:
                    window += loss.detach()
                    if step % args.log_every == 0:
                        _ = (window / args.log_every).item()
                        window.zero_()
                else:
                    _ = loss.detach().item()  # the example logs the loss every step
                if step >= args.steps:
                    break
    return timer.samples_per_second(args.batch_size)


# --------------------------------------------------------------------------- ours


def our_loop(args, data_uri: str, out: Path, *, compile_model: bool = False) -> float:
    spec = run_spec(args, data_uri, out, compile_model=compile_model)
    with StepTimer(args.warmup, args.steps) as timer:
        train.run(spec, ProgressReporter())
    shutil.rmtree(out, ignore_errors=True)
    return timer.samples_per_second(args.batch_size)


def model_flops_per_sample(args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from genforge_trainer.models import build_unet2d

    spec = run_spec(args, "file:///unused", Path("/tmp"))
    unet = build_unet2d(spec.model, []).denoiser.to("cuda")
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device="cuda")
    t = torch.randint(0, 1000, (args.batch_size,), device="cuda")
    with FlopCounterMode(display=False) as counter:
        unet(x, t).sample.float().pow(2).mean().backward()
    return counter.get_total_flops() / args.batch_size


LOOPS = ("plain", "plain-tuned", "genforge")
COMPILED = ("plain-tuned+compile", "genforge+compile")


def run_loop(name: str, args, tmp: Path, data_uri: str, trial: int) -> float:
    from genforge_trainer.models import build_unet2d

    torch.manual_seed(trial)
    if name.startswith("genforge"):
        return our_loop(args, data_uri, tmp / f"out-{name}-{trial}", compile_model=name.endswith("+compile"))
    model = build_unet2d(run_spec(args, data_uri, tmp).model, []).denoiser
    return plain_loop(args, tmp / "data", model, tuned=name != "plain", compile_model=name.endswith("+compile"))


def _stats(values: list[float]) -> dict:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1), "trials": [round(v, 1) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", default="32,64,64")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=20, help="steps between loss reads (tuned plain, genforge)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--plain-workers", type=int, default=0, help="DataLoader workers of the plain loops")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile rows")
    parser.add_argument("--trials", type=int, default=3, help="interleaved repetitions of every loop")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genforge-bench-"))
    try:
        data_uri = write_dataset(tmp / "data", args.images, args.resolution)
        device = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()}"
        )
        loops = LOOPS + (COMPILED if args.compile else ())
        results: dict[str, list[float]] = {name: [] for name in loops}
        for trial in range(args.trials):
            order = loops[trial % len(loops):] + loops[:trial % len(loops)]
            for name in order:
                results[name].append(run_loop(name, args, tmp, data_uri, trial))
                print(f"trial {trial} {name}: {results[name][-1]:.1f} samples/s", file=sys.stderr, flush=True)
        medians = {name: statistics.median(values) for name, values in results.items()}
        figures = {
            "device": device,
            "torch": torch.__version__,
            "resolution": args.resolution,
            "channels": args.channels,
            "layersPerBlock": args.layers,
            "batchSize": args.batch_size,
            "mixedPrecision": args.mixed_precision,
            "steps": args.steps,
            "warmup": args.warmup,
            "plainWorkers": args.plain_workers,
            "samplesPerSecond": {name: _stats(values) for name, values in results.items()},
            "ratios": {
                "genforge/plain": round(medians["genforge"] / medians["plain"], 2),
                "genforge/plain-tuned": round(medians["genforge"] / medians["plain-tuned"], 2),
            },
        }
        if args.compile:
            figures["ratios"]["genforge+compile/plain-tuned+compile"] = round(
                medians["genforge+compile"] / medians["plain-tuned+compile"], 2)
        if torch.cuda.is_available():
            flops = model_flops_per_sample(args)
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), None)
            figures["modelGflopsPerSample"] = round(flops / 1e9, 3)
            if peak:
                figures["mfu"] = {name: round(flops * m / peak, 4) for name, m in medians.items()}
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
