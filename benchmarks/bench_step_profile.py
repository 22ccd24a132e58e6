"""How a training step's time moves: within a run, between identical runs, and with the host.

    python benchmarks/bench_step_profile.py [--runs 150 150 1500 150] [--window 50] [--json FILE]

Runs the real trainer (``genforge_trainer.train.run``, in this process, one run at a time)
on the demo's exact recipe (examples/model.yaml and examples/trainingrun.yaml: batch 32,
EMA, min-SNR, v-prediction, 512 synthetic 16-px images, checkpoints every 500 steps, no
evaluation) for each entry of ``--runs`` (steps), and before and after each run times a
fixed reference workload (a conv forward+backward at the trainer's thread count, and a
pure-Python loop), so that a run's step time can be read against the host's speed at that
minute. For each run it prints its step times (every step after the first, checkpoint
writes excluded — what ``timing.trainingSeconds`` sums): mean, median, the 10th and 90th
percentiles, and the mean of each ``--window`` steps, which shows warm-up and drift inside
the run. ``--json`` writes every step's seconds for a closer look.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
for package in ("operator", "trainer", "local", "tests"):
    sys.path.insert(0, str(ROOT / package))


def reference(torch) -> tuple[float, float]:
    """(seconds of a fixed conv workload, seconds of a fixed pure-Python loop)."""
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(32, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    begun = time.perf_counter()
    for _ in range(40):
        conv(x).square().mean().backward()
    torch_seconds = time.perf_counter() - begun
    begun = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    return torch_seconds, time.perf_counter() - begun


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[150, 150, 1500, 150])
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch
    from trainer.builders import make_document
    from trainer.datasets import shapes

    from genforge_trainer import timing, train
    from genforge_trainer.config import parse_run_spec
    from genforge_trainer.progress import ProgressReporter

    timers: list = []

    class Recorded(timing.RunTimer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            timers.append(self)

    train.RunTimer = Recorded
    model = yaml.safe_load((ROOT / "examples" / "model.yaml").read_text())["spec"]
    run_spec = yaml.safe_load((ROOT / "examples" / "trainingrun.yaml").read_text())["spec"]
    recipe = run_spec["training"]
    work = Path(tempfile.mkdtemp(prefix="genforge-bench-profile-"))
    data = shapes(work / "data", count=args.images, size=model["resolution"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; the demo's recipe, batch "
          f"{recipe['batchSize']}, {args.images} images", flush=True)
    out = []
    for i, steps in enumerate(args.runs):
        ref_before = reference(torch)
        started = time.strftime("%H:%M:%S")
        doc = make_document(
            output={"uri": f"file://{work}/out-{i}"},
            checkpoint={"uri": None, "everySteps": run_spec["checkpoint"]["everySteps"], "keep": 1},
            model={"resolution": model["resolution"], "config": model["config"]},
            dataset={"uri": data},
            training={**recipe, "steps": steps, "lrWarmupSteps": min(recipe["lrWarmupSteps"], steps)},
            evaluation=None,
        )
        result = train.run(parse_run_spec(doc), ProgressReporter())
        ref_after = reference(torch)
        seconds = list(timers[-1].step_seconds)
        windows = [statistics.fmean(seconds[j:j + args.window]) for j in range(0, len(seconds), args.window)]
        row = {"run": i, "steps": steps, "started": started, "startup": result["timing"].get("startupSeconds"),
               "trainingSeconds": result["timing"]["trainingSeconds"], "mean": statistics.fmean(seconds),
               "median": statistics.median(seconds), "steady": timing.steady_step_seconds(seconds), "p10": quantile(seconds, 0.1), "p90": quantile(seconds, 0.9),
               "windows": windows, "refBefore": ref_before, "refAfter": ref_after, "stepSeconds": seconds}
        out.append(row)
        print(f"run {i} ({steps} steps, {started}): step mean {row['mean'] * 1000:.1f} ms, median "
              f"{row['median'] * 1000:.1f}, steady {row['steady'] * 1000:.1f}, p10 {row['p10'] * 1000:.1f}, p90 {row['p90'] * 1000:.1f}; start-up "
              f"{row['startup']:.2f} s; reference conv {ref_before[0]:.3f}→{ref_after[0]:.3f} s, python "
              f"{ref_before[1]:.3f}→{ref_after[1]:.3f} s", flush=True)
        print(f"  {args.window}-step windows (ms): " + " ".join(f"{w * 1000:.0f}" for w in windows), flush=True)
        if args.json:  # after every run: a long invocation stopped early keeps what it measured
            args.json.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
