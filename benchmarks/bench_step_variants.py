"""Where a demo training step's time goes on this CPU, and which loop choices make it shorter.

    python benchmarks/bench_step_variants.py [--rounds 5] [--steps 30] [--variants loop fused fused-t1 ...]

Builds the demo's model, data and method (examples/model.yaml, examples/trainingrun.yaml:
the [16, 32] 16-px UNet, batch 32, v-prediction, min-SNR-γ, EMA) with the trainer's own
parts (``build_method``, ``Accelerator``, diffusers' ``EMAModel``) and times the loop body of
``genforge_trainer.train.run`` — batch, loss, backward, clipping, optimizer, LR schedule,
zero_grad, EMA — once per variant:

* ``loop``: ``torch.optim.AdamW`` with its CPU default (one tensor at a time in Python);
* ``foreach``: AdamW with ``foreach=True``;
* ``fused``: AdamW with ``fused=True`` (torch's fused CPU kernel);
* ``…-t1``: the same with ``torch.set_num_threads(1)`` (default: all cores).

Variants run interleaved — round 1 every variant, round 2 every variant in another order,
… — ``--steps`` timed steps each after 3 warm-up steps, so a slow minute of a shared host
falls on every variant alike; each variant prints min / median / max of its rounds'
ms per step. With ``--parts`` also the median milliseconds of each part of the step
(batch + forward + loss, backward, clipping, optimizer + LR schedule + zero_grad, EMA) per
variant: a part's median is steadier than a whole step's on a shared host.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
for package in ("operator", "trainer", "local", "tests"):
    sys.path.insert(0, str(ROOT / package))

VARIANTS = {  # name -> (AdamW keyword arguments, torch threads or None for the default)
    "loop": ({}, None),
    "foreach": ({"foreach": True}, None),
    "fused": ({"fused": True}, None),
    "loop-t1": ({}, 1),
    "fused-t1": ({"fused": True}, 1),
}


def build(variant: str, work: Path, data_uri: str, steps: int):
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from trainer.builders import make_document

    from genforge_trainer.config import parse_run_spec
    from genforge_trainer.imagedata import load_images
    from genforge_trainer.methods import build_method
    from genforge_trainer.models import load_or_build

    model_spec = yaml.safe_load((ROOT / "examples" / "model.yaml").read_text())["spec"]
    recipe = yaml.safe_load((ROOT / "examples" / "trainingrun.yaml").read_text())["spec"]["training"]
    doc = make_document(
        output={"uri": f"file://{work}/out-{variant}"},
        checkpoint={"uri": None, "everySteps": 0, "keep": 1},
        model={"resolution": model_spec["resolution"], "config": model_spec["config"]},
        dataset={"uri": data_uri},
        training={**recipe, "steps": steps},
        evaluation=None,
    )
    spec = parse_run_spec(doc)
    training = spec.training
    torch.manual_seed(training.seed)
    accelerator = Accelerator()
    data = load_images(spec.dataset.uri, spec.model.resolution)
    model = load_or_build(spec.model, data.label_names)
    method = build_method(spec, model, data, accelerator.device)
    params = method.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay,
                                  **VARIANTS[variant][0])
    schedule = get_scheduler(training.lr_scheduler, optimizer, num_warmup_steps=training.lr_warmup_steps,
                             num_training_steps=training.steps)
    ema = EMAModel(params, decay=training.ema_decay, foreach=True)
    denoiser, optimizer, schedule = accelerator.prepare(method.modules["denoiser"], optimizer, schedule)
    method.modules["denoiser"] = denoiser
    method.configure_sampler(training.batch_size, training.seed, 0, 1)
    denoiser.train()
    return {"accelerator": accelerator, "method": method, "params": params, "optimizer": optimizer,
            "schedule": schedule, "ema": ema, "training": training, "step": 0}


def run_steps(state: dict, count: int, parts: dict[str, list[float]] | None = None) -> float:
    """Seconds per step of ``count`` steps of train.run's loop body."""
    from genforge_trainer.train import step_generator

    acc, method, params = state["accelerator"], state["method"], state["params"]
    optimizer, schedule, ema, training = state["optimizer"], state["schedule"], state["ema"], state["training"]
    begun = time.perf_counter()
    for _ in range(count):
        step = state["step"]
        marks = [time.perf_counter()]
        batch = method.next_batch(step)
        loss = method.loss(batch, step_generator(training.seed, step, 0, 0, acc.device))
        marks.append(time.perf_counter())
        acc.backward(loss)
        marks.append(time.perf_counter())
        acc.clip_grad_norm_(params, training.max_grad_norm)
        marks.append(time.perf_counter())
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        ema.step(params)
        marks.append(time.perf_counter())
        state["step"] += 1
        if parts is not None:
            for name, a, b in zip(("batch+forward+loss", "backward", "clip", "optimizer", "ema"),
                                  marks, marks[1:], strict=False):
                parts.setdefault(name, []).append(b - a)
    return (time.perf_counter() - begun) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--parts", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from trainer.datasets import shapes

    default_threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="genforge-bench-variants-"))
    data_uri = shapes(work / "data", count=512, size=16)
    total = 3 + args.rounds * args.steps
    states = {v: build(v, work, data_uri, total + 10) for v in args.variants}
    parts: dict[str, dict[str, list[float]]] | None = {v: {} for v in args.variants} if args.parts else None
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    for v in args.variants:
        torch.set_num_threads(VARIANTS[v][1] or default_threads)
        run_steps(states[v], 3)
    for r in range(args.rounds):
        order = args.variants[r % len(args.variants):] + args.variants[: r % len(args.variants)]
        for v in order:
            torch.set_num_threads(VARIANTS[v][1] or default_threads)
            results[v].append(run_steps(states[v], args.steps, parts[v] if parts is not None else None))
    batch = states[args.variants[0]]["training"].batch_size
    print(f"| variant | ms / step min | median | max | samples/s (median) |  ({args.rounds} rounds × "
          f"{args.steps} steps, batch {batch}, {default_threads} threads by default)")
    print("|---|---|---|---|---|")
    for v, seconds in results.items():
        med = statistics.median(seconds)
        print(f"| {v} | {1000 * min(seconds):.1f} | {1000 * med:.1f} | {1000 * max(seconds):.1f} | {batch / med:.0f} |")
    if parts is not None:
        names = list(next(iter(parts.values())))
        print(f"\n| variant | {' | '.join(names)} |  (median ms of every timed step)")
        print("|---|" + "---|" * len(names))
        for v, by_part in parts.items():
            print(f"| {v} | " + " | ".join(f"{1000 * statistics.median(by_part[n]):.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
