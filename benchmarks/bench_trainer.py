"""Trainer throughput: genforge's loop against a minimal plain diffusers + accelerate loop.

Same model (UNet2DModel from the same config), same batch, same data (a prepared synthetic
shapes dataset on local disk), same machine, one process. The plain loop is what the
diffusers ``train_unconditional.py`` example does: a map-style Dataset that opens and
decodes each PNG, a DataLoader, per-step ``loss.item()`` logging, default AdamW.

Prints samples/s in steady state (timed after warm-up steps) for each and the ratio;
on a GPU also bf16 model FLOPs utilisation (FLOPs counted with torch's FlopCounterMode
for one forward+backward). Run::

    python benchmarks/bench_trainer.py                       # CPU defaults (32 px)
    python benchmarks/bench_trainer.py --resolution 64 --batch-size 128 --mixed-precision bf16 \\
        --channels 128,256,256,512 --steps 120 --warmup 30 [--compile]       # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
            meta.write(json.dumps({"file_name": name, "caption": item.caption, "label": item.label}) + "\n")
    return f"file://{directory}"


def run_spec(args, data_uri: str, out: Path):
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
                "logEverySteps": args.warmup,
                "compile": args.compile,
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


def plain_loop(args, data_dir: Path, model) -> float:
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    accelerator = Accelerator(mixed_precision=args.mixed_precision if torch.cuda.is_available() else "no")
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(
        PngDataset(data_dir, args.resolution),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.plain_workers,
        drop_last=True,
    )
    lr_scheduler = get_scheduler("constant", optimizer)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    model.train()
    step, start = 0, None
    while step < args.steps:
        for images in loader:
            if step == args.warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                start = time.perf_counter()
            noise = torch.randn(images.shape, device=images.device)
            timesteps = torch.randint(0, 1000, (images.shape[0],), device=images.device)
            noisy = scheduler.add_noise(images, noise, timesteps)
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(noisy, timesteps).sample.float(), noise)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            _ = loss.detach().item()  # the example logs the loss every step
            step += 1
            if step >= args.steps:
                break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (args.steps - args.warmup) * args.batch_size / (time.perf_counter() - start)


# --------------------------------------------------------------------------- ours


class WindowReporter(ProgressReporter):
    def __init__(self) -> None:
        super().__init__()
        self.windows: list[float] = []

    def update(self, **fields):
        if fields.get("samplesPerSecond") is not None:
            self.windows.append(fields["samplesPerSecond"])
        super().update(**fields)


def our_loop(args, data_uri: str, out: Path) -> float:
    reporter = WindowReporter()
    train.run(run_spec(args, data_uri, out), reporter)
    shutil.rmtree(out, ignore_errors=True)
    # windows of `warmup` steps; the first contains warm-up (and compilation).
    steady = reporter.windows[1:] or reporter.windows
    return float(np.mean(steady))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", default="32,64,64")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--plain-workers", type=int, default=0, help="DataLoader workers of the plain loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile in our loop")
    parser.add_argument("--also-compile", action="store_true", help="also time our loop with torch.compile")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from genforge_trainer.models import build_unet2d

    tmp = Path(tempfile.mkdtemp(prefix="genforge-bench-"))
    try:
        data_uri = write_dataset(tmp / "data", args.images, args.resolution)
        device = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()}"
        )
        torch.manual_seed(0)
        # Same architecture; ours is class-conditional (the dataset has labels), so give
        # the plain loop the same unconditional model it would build from this config.
        plain_model = build_unet2d(run_spec(args, data_uri, tmp).model, []).denoiser
        plain = plain_loop(args, tmp / "data", plain_model)
        del plain_model
        ours = our_loop(args, data_uri, tmp / "out")
        figures = {
            "device": device,
            "resolution": args.resolution,
            "channels": args.channels,
            "batchSize": args.batch_size,
            "mixedPrecision": args.mixed_precision,
            "compile": args.compile,
            "steps": args.steps,
            "warmup": args.warmup,
            "plainSamplesPerSecond": round(plain, 1),
            "oursSamplesPerSecond": round(ours, 1),
            "ratio": round(ours / plain, 2),
        }
        if args.also_compile and not args.compile:
            args.compile = True
            compiled = our_loop(args, data_uri, tmp / "out-compiled")
            args.compile = False
            figures["oursCompiledSamplesPerSecond"] = round(compiled, 1)
            figures["compiledRatio"] = round(compiled / plain, 2)
        if torch.cuda.is_available():
            flops = model_flops_per_sample(args)
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), None)
            figures["modelGflopsPerSample"] = round(flops / 1e9, 3)
            figures["oursTflops"] = round(flops * ours / 1e12, 2)
            if peak:
                figures["oursMfu"] = round(flops * ours / peak, 4)
                figures["plainMfu"] = round(flops * plain / peak, 4)
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
