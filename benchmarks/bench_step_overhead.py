"""A training step's time as overhead + FLOPs ÷ FLOP/s, on this machine's CPU.

    python benchmarks/bench_step_overhead.py [--steps 120] [--widths 16 24 32] [--batches 16 32]

Runs the real trainer (``genforge_trainer.train.run``, in this process, one run at a time)
on the demo's model and recipe (examples/model.yaml, examples/trainingrun.yaml: EMA,
min-SNR, v-prediction) at 16 px with channels (w, 2w) for each width and batch size, reads
each run's ``timing`` (the loop's seconds without checkpoint writes) and fits

    seconds per step = overhead + FLOPs per step ÷ FLOP/s

by least squares over the runs, FLOPs per step from the operator's FLOP model
(``throughput.train_flops_per_sample`` × batch). The fit is where the CPU priors
``STEP_OVERHEAD_SECONDS_CPU`` and ``CPU_CORE_FLOPS`` (FLOP/s ÷ the cores torch uses) come
from; the residuals show how well one straight line carries a measurement across model
and batch sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
for package in ("operator", "trainer", "local", "tests"):
    sys.path.insert(0, str(ROOT / package))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from trainer.builders import make_document
    from trainer.datasets import shapes

    from genforge_operator.api import GenModelSpec, ModelConfig
    from genforge_operator.money import throughput
    from genforge_trainer import train
    from genforge_trainer.config import parse_run_spec
    from genforge_trainer.progress import ProgressReporter

    model = yaml.safe_load((ROOT / "examples" / "model.yaml").read_text())["spec"]
    recipe = yaml.safe_load((ROOT / "examples" / "trainingrun.yaml").read_text())["spec"]["training"]
    work = Path(tempfile.mkdtemp(prefix="genforge-bench-overhead-"))
    data = shapes(work / "data", count=256, size=model["resolution"])
    rows = []
    for width in args.widths:
        for batch in args.batches:
            config = {**model["config"], "blockOutChannels": [width, 2 * width]}
            training = {k: v for k, v in recipe.items() if k not in ("steps", "batchSize")}
            doc = make_document(
                output={"uri": f"file://{work}/out-{width}-{batch}"},
                checkpoint={"uri": None, "everySteps": 0, "keep": 1},
                model={"resolution": model["resolution"], "config": config},
                dataset={"uri": data},
                training={**training, "steps": args.steps, "batchSize": batch, "lrWarmupSteps": 10},
                evaluation=None,
            )
            timing = train.run(parse_run_spec(doc), ProgressReporter())["timing"]
            spec = GenModelSpec(architecture="unet2d-ddpm", resolution=model["resolution"],
                                config=ModelConfig(block_out_channels=[width, 2 * width], layers_per_block=1))
            flops = batch * throughput.train_flops_per_sample(spec)
            rows.append((width, batch, flops, timing["trainingSeconds"] / (args.steps - 1)))  # the first: start-up
            print(f"channels {width}/{2 * width} batch {batch}: {rows[-1][3] * 1000:.1f} ms a step, "
                  f"{flops / 1e9:.2f} GFLOP", file=sys.stderr, flush=True)
    x = np.array([r[2] for r in rows])
    y = np.array([r[3] for r in rows])
    slope, overhead = np.polyfit(x, y, 1)
    rate = 1 / slope
    threads = torch.get_num_threads()
    print(f"trainer on this CPU ({threads} torch threads), {args.steps} steps per run, the demo's recipe")
    print(f"{'channels':>9} {'batch':>5} {'GFLOP/step':>10} {'ms/step':>8} {'fit ms':>7} {'residual':>8} "
          f"{'effective GFLOP/s':>17}")
    for width, batch, flops, seconds in rows:
        fit = overhead + flops / rate
        print(f"{width:>4}/{2 * width:<4} {batch:>5} {flops / 1e9:>10.2f} {seconds * 1000:>8.1f} {fit * 1000:>7.1f} "
              f"{(seconds - fit) / seconds:>+8.1%} {flops / seconds / 1e9:>17.1f}")
    print(f"fit: overhead {overhead * 1000:.1f} ms a step, {rate / 1e9:.1f} GFLOP/s "
          f"({rate / threads / 1e9:.1f} GFLOP/s per thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
