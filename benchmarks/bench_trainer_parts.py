"""Where genforge's CPU training step and the tuned plain loop's differ, part by part.

    python benchmarks/bench_trainer_parts.py [--rounds 5] [--steps 20]        # part timings
    python benchmarks/bench_trainer_parts.py --profile [--active 10]          # torch.profiler

Same model, batch and data as ``bench_trainer.py``'s CPU defaults (32 px, channels
32,64,64, batch 16, fp32, 512 synthetic-shapes images).

Part timings: both loop bodies are built side by side in one process from the same
initial weights — genforge's from its own parts (``load_images``, ``load_or_build``,
``build_method``, fused AdamW, ``Accelerator.prepare``, ``step_generator``,
``method.next_batch`` / ``method.loss``, the reporter), the tuned plain loop's as in
``bench_trainer.plain_loop(tuned=True)`` — and run in interleaved rounds of ``--steps``
steps (after 5 warm-up steps each, the order alternating), so a slow minute of a shared host
falls on both alike. Each step is cut into batch, forward + loss (noise and timestep draw,
``add_noise``, the UNet, the MSE), backward, clipping, optimizer (step, LR schedule,
``zero_grad``) and bookkeeping (loss accumulation, progress, stop check); "other" is the
step's wall time minus those parts. Printed: the median ms of each part over every timed
step, per loop.

``--profile``: the real loops (``train.run`` and ``bench_trainer.plain_loop(tuned=True)``,
unmodified) under ``torch.profiler`` (CPU), stepped by a global optimizer-step hook, for
``--active`` steps after warm-up; prints per-step self CPU ms of the operators whose time
differs most between the two, and each loop's total.

``--extras``: microseconds of genforge's per-step extras on their own, against what the
plain loop does in their place — a seeded generator per step (``step_generator``) and
noise/timestep draws from it, the per-sample loss path (forward and backward of the MSE
reduction), and an EMA update of the bench model's parameters (off in the bench, on in
the demo recipe).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "trainer"))

import bench_trainer  # noqa: E402

PARTS = ("batch", "forward+loss", "backward", "clip", "optimizer", "bookkeeping")


def bench_args(**overrides) -> argparse.Namespace:
    base = dict(
        resolution=32,
        channels="32,64,64",
        layers=1,
        batch_size=16,
        steps=60,
        warmup=20,
        log_every=20,
        images=512,
        mixed_precision="no",
        plain_workers=0,
    )
    return argparse.Namespace(**(base | overrides))


class GenforgeBody:
    """train.run's loop body (one micro-batch per step), built from the trainer's own parts."""

    def __init__(self, args, data_uri: str, out: Path) -> None:
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler

        from genforge_trainer.imagedata import load_images
        from genforge_trainer.methods import build_method
        from genforge_trainer.models import load_or_build
        from genforge_trainer.progress import ProgressReporter

        spec = bench_trainer.run_spec(args, data_uri, out)
        self.training = training = spec.training
        self.accelerator = Accelerator(mixed_precision="no")
        data = load_images(spec.dataset.uri, spec.model.resolution)
        self.model = load_or_build(spec.model, data.label_names)
        self.method = build_method(spec, self.model, data, self.accelerator.device)
        self.params = self.method.trainable_parameters()
        self.initial = copy.deepcopy(self.model.denoiser)  # the plain loop starts from the same weights
        optimizer = torch.optim.AdamW(
            self.params, lr=training.learning_rate, weight_decay=training.weight_decay, fused=True
        )
        schedule = get_scheduler(
            training.lr_scheduler,
            optimizer,
            num_warmup_steps=training.lr_warmup_steps,
            num_training_steps=training.steps,
        )
        denoiser, self.optimizer, self.schedule = self.accelerator.prepare(
            self.method.modules["denoiser"], optimizer, schedule
        )
        self.method.modules["denoiser"] = denoiser
        self.method.configure_sampler(training.batch_size, training.seed, 0, 1)
        denoiser.train()
        self.reporter = ProgressReporter()
        self.window = torch.zeros(())
        self.step = 0

    def run(self, count: int, parts: dict[str, list[float]] | None) -> None:
        from genforge_trainer.train import _stop_requested, step_generator

        acc, method, training = self.accelerator, self.method, self.training
        for _ in range(count):
            t0 = time.perf_counter()
            with acc.accumulate(*method.modules.values()):
                t1 = time.perf_counter()
                batch = method.next_batch(self.step)
                t2 = time.perf_counter()
                loss = method.loss(batch, step_generator(training.seed, self.step, 0, 0, acc.device))
                t3 = time.perf_counter()
                acc.backward(loss)
                t4 = time.perf_counter()
                if acc.sync_gradients and training.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, training.max_grad_norm)
                t5 = time.perf_counter()
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                t6 = time.perf_counter()
            t7 = time.perf_counter()
            self.window += loss.detach() / training.gradient_accumulation
            method.after_step()
            self.step += 1
            if self.step % training.log_every_steps == 0:
                _ = float(acc.reduce(self.window, reduction="mean"))
                self.window.zero_()
            self.reporter.update(step=self.step)
            _stop_requested(self.reporter, acc)
            t8 = time.perf_counter()
            if parts is not None:
                _note(parts, (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t8 - t7), t8 - t0)


class PlainTunedBody:
    """bench_trainer.plain_loop(tuned=True)'s loop body."""

    def __init__(self, args, data_dir: Path, model: torch.nn.Module) -> None:
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.args = args
        self.accelerator = Accelerator(mixed_precision="no")
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.params = list(model.parameters())
        optimizer = bench_trainer._fused_adamw(self.params, self.accelerator.device, 1e-4)
        loader = torch.utils.data.DataLoader(
            bench_trainer.PngDataset(data_dir, args.resolution),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=0,
            drop_last=True,
        )
        schedule = get_scheduler("constant", optimizer)
        self.model, self.optimizer, self.loader, self.schedule = self.accelerator.prepare(
            model, optimizer, loader, schedule
        )
        self.model.train()
        self.batches = iter(self.loader)
        self.window = torch.zeros(())
        self.step = 0

    def _next(self) -> torch.Tensor:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, count: int, parts: dict[str, list[float]] | None) -> None:
        acc, model = self.accelerator, self.model
        for _ in range(count):
            t0 = time.perf_counter()
            with acc.accumulate(model):
                t1 = time.perf_counter()
                images = self._next()
                t2 = time.perf_counter()
                noise = torch.randn(images.shape, device=images.device)
                timesteps = torch.randint(0, 1000, (images.shape[0],), device=images.device)
                noisy = self.scheduler.add_noise(images, noise, timesteps)
                loss = F.mse_loss(model(noisy, timesteps).sample.float(), noise)
                t3 = time.perf_counter()
                acc.backward(loss)
                t4 = time.perf_counter()
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.params, 1.0)
                t5 = time.perf_counter()
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                t6 = time.perf_counter()
            t7 = time.perf_counter()
            self.step += 1
            self.window += loss.detach()
            if self.step % self.args.log_every == 0:
                _ = (self.window / self.args.log_every).item()
                self.window.zero_()
            t8 = time.perf_counter()
            if parts is not None:
                _note(parts, (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t8 - t7), t8 - t0)


def _note(parts: dict[str, list[float]], seconds: tuple[float, ...], step: float) -> None:
    for name, s in zip(PARTS, seconds, strict=True):
        parts.setdefault(name, []).append(s)
    parts.setdefault("other", []).append(step - sum(seconds))
    parts.setdefault("step", []).append(step)


def part_timings(args: argparse.Namespace, tmp: Path) -> None:
    cfg = bench_args()
    data_uri = bench_trainer.write_dataset(tmp / "data", cfg.images, cfg.resolution)
    torch.manual_seed(0)
    ours = GenforgeBody(cfg, data_uri, tmp / "out")
    plain = PlainTunedBody(cfg, tmp / "data", ours.initial)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; parameters: genforge "
        f"{count(ours.method.modules['denoiser'])}, plain {count(plain.model)}; batch dtype/shape: genforge "
        f"{ours.method.next_batch(0).pixels.dtype} → float, plain {plain._next().dtype}"
    )
    loops = {"plain-tuned": plain, "genforge": ours}
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in loops}
    for body in loops.values():
        body.run(5, None)
    names = list(loops)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            loops[name].run(args.steps, parts[name])
    columns = [*PARTS, "other", "step"]
    print(f"\nmedian ms per step ({args.rounds} rounds × {args.steps} steps, interleaved)\n")
    print("| loop | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, by_part in parts.items():
        print(
            f"| {name} | " + " | ".join(f"{1000 * statistics.median(by_part[c]):.2f}" for c in columns) + " |"
        )
    diff = [
        1000 * (statistics.median(parts["genforge"][c]) - statistics.median(parts["plain-tuned"][c]))
        for c in columns
    ]
    print("| genforge − plain | " + " | ".join(f"{d:+.2f}" for d in diff) + " |")
    for name, by_part in parts.items():
        steps = sorted(by_part["step"])
        print(
            f"{name}: step ms min {1000 * steps[0]:.1f}, median {1000 * statistics.median(steps):.1f}, "
            f"max {1000 * steps[-1]:.1f}; samples/s at the median {cfg.batch_size / statistics.median(steps):.1f}"
        )


def profiled(args: argparse.Namespace, tmp: Path) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    cfg = bench_args(warmup=5, steps=5 + 2 + args.active + 2)
    data_uri = bench_trainer.write_dataset(tmp / "data", cfg.images, cfg.resolution)
    tables = {}
    for name in ("plain-tuned", "genforge"):
        torch.manual_seed(0)
        prof = profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=cfg.warmup, warmup=2, active=args.active, repeat=1),
        )
        handle = register_optimizer_step_post_hook(lambda *_, p=prof: p.step())
        try:
            with prof:
                if name == "genforge":
                    bench_trainer.our_loop(cfg, data_uri, tmp / "out")
                else:
                    bench_trainer.plain_loop(cfg, tmp / "data", _plain_model(cfg, data_uri), tuned=True)
        finally:
            handle.remove()
        tables[name] = {e.key: e.self_cpu_time_total / 1000 / args.active for e in prof.key_averages()}
    a, b = tables["plain-tuned"], tables["genforge"]
    keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))
    print(f"\nself CPU ms per step, {args.active} profiled steps each (operators differing most)\n")
    print("| operator | plain-tuned | genforge | genforge − plain |")
    print("|---|---|---|---|")
    for k in keys[: args.top]:
        print(f"| `{k}` | {a.get(k, 0):.2f} | {b.get(k, 0):.2f} | {b.get(k, 0) - a.get(k, 0):+.2f} |")
    print(
        f"| **all operators** | {sum(a.values()):.2f} | {sum(b.values()):.2f} | "
        f"{sum(b.values()) - sum(a.values()):+.2f} |"
    )


def extras(args: argparse.Namespace, tmp: Path) -> None:
    import timeit

    from diffusers.training_utils import EMAModel

    from genforge_trainer.train import step_generator

    cfg = bench_args()
    shape = (cfg.batch_size, 3, cfg.resolution, cfg.resolution)
    cpu = torch.device("cpu")
    prediction = torch.randn(shape, requires_grad=True)
    target = torch.randn(shape)
    params = list(_plain_model(cfg, "file:///unused").parameters())
    ema = EMAModel(params, decay=0.999, foreach=True)
    counter = iter(range(10**9))
    generator = step_generator(0, 1, 0, 0, cpu)

    def per_sample():
        losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        losses.mean().backward()

    cases = {  # name -> (genforge's, the plain loop's)
        "generator per step": (lambda: step_generator(0, next(counter), 0, 0, cpu), lambda: None),
        "noise draw (randn)": (lambda: torch.randn(shape, generator=generator), lambda: torch.randn(shape)),
        "timestep draw (randint)": (
            lambda: torch.randint(0, 1000, (cfg.batch_size,), generator=generator),
            lambda: torch.randint(0, 1000, (cfg.batch_size,)),
        ),
        "MSE forward+backward": (per_sample, lambda: F.mse_loss(prediction.float(), target).backward()),
        "EMA update (1.1 M parameters)": (lambda: ema.step(params), lambda: None),
    }
    print(f"\nmicroseconds per call, best of {args.rounds} repeats of 200 calls\n")
    print("| extra | genforge | plain loop | genforge − plain |")
    print("|---|---|---|---|")
    for name, (ours, theirs) in cases.items():
        n = 20 if name.startswith("EMA") else 200
        a, b = (min(timeit.repeat(f, number=n, repeat=args.rounds)) / n * 1e6 for f in (ours, theirs))
        print(f"| {name} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")


def _plain_model(cfg, data_uri: str):
    from genforge_trainer.models import build_unet2d

    return build_unet2d(bench_trainer.run_spec(cfg, data_uri, Path("/tmp")).model, []).denoiser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--extras", action="store_true")
    parser.add_argument("--active", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="genforge-bench-parts-"))
    try:
        (profiled if args.profile else extras if args.extras else part_timings)(args, tmp)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
