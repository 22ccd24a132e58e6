"""Preference fine-tuning (Diffusion-DPO): which ``preference.beta`` moves the demo's model?

Everything is generated here, nothing is downloaded:

1. the demo's data and base model: ``synthetic://shapes`` (512 images, 16 px, seed 0) and
   the GenModel of ``examples/model.yaml`` trained as ``examples/trainingrun.yaml`` says
   (1500 steps, batch 16; ~7 min on one core; cached in ``--workdir`` when one is given);
2. feedback with one clear, measurable preference — a lighter background:

   * ``--feedback generated`` (default; what users' thumbs would rate): 64 base samples per
     shape label (the model's 25 DDIM steps); per label the 16 with the lightest border are
     "up", the 16 with the darkest "down", paired one to one: 128 pairs; held-out pairs the
     same way from other sampling seeds;
   * ``--feedback data``: generator images on a white background preferred over images on a
     black one, same label, from other seeds of ``synthetic://shapes`` than the training data;

3. for each beta and seed: ``genforge_trainer.train.run`` — the code a ``preference``
   FineTune executes — with the demo fine-tune's steps and batch (``examples/finetune-lora.yaml``:
   60 steps of 16 pairs) and ``--lr`` (default 1e-5; the FineTune CRD's default, 1e-4,
   damages the model at every beta — see docs/benchmarks.md);
4. measures, against the base (= the DPO reference):

   * ``acc``: implicit reward accuracy on held-out pairs — share of pairs whose
     ``(e_w - e_l) - (e_w_ref - e_l_ref)`` (averaged over ``--draws`` shared noise/timestep
     draws) is negative, i.e. the model prefers the winner more than the reference does;
     ``loss``: the run's own DPO loss on held-out pairs (ln 2 = 0.693 means no change);
   * movement: ``lum``: mean luminance (0–255) of the border of 128 samples (16 per label,
     fixed seed, 25 DDIM steps) and ``light``: their share lighter than the base's median
     sample (50 % for the base); ``dW``/``dL``: relative change of the denoising loss on
     held-out winners / losers;
   * collapse: ``dData``: relative change of the denoising loss on 256 fresh generator
     images (all four backgrounds; fixed noise and timesteps); ``plain``: share of samples
     whose border is a plain colour (mean per-channel std < 15; real images 99 %).

Run::

    python benchmarks/bench_preference_beta.py --workdir /tmp/pref   # betas 0.1 … 20000, seeds 0 1
    python benchmarks/bench_preference_beta.py --workdir /tmp/pref --lr 1e-4 --betas 0.1 100 1000 2000 5000 20000
    python benchmarks/bench_preference_beta.py --workdir /tmp/pref --steps 240 --betas 0.1 1000 5000 20000 --seeds 0

``--workdir`` keeps the base model (and the feedback) for the next command; seeds vary the
fine-tune only (batch order, noise, timesteps), not the base or the feedback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))

from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.data import synthetic  # noqa: E402
from genforge_trainer.evaluation import image_grid  # noqa: E402
from genforge_trainer.imagedata import load_images, to_uint8  # noqa: E402
from genforge_trainer.methods import per_sample_denoising_loss, read_feedback  # noqa: E402
from genforge_trainer.models import load_pretrained  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402

EXAMPLES = ROOT / "examples"
PLAIN_STD = 15.0


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())["spec"]


def inference_steps() -> int:
    return int(example("model.yaml")["config"].get("inferenceSteps", 50))


def border(images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: mean luminance of its one-pixel border, and the border's mean channel std."""
    x = images_uint8.float()
    ring = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1)
    return (ring * weights).sum(dim=1).mean(dim=1), ring.std(dim=2).mean(dim=1)


# --------------------------------------------------------------------------- data


def write_images(directory: Path, params: synthetic.ShapesParams, indices: list[int]) -> str:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    with open(directory / "metadata.jsonl", "w") as meta:
        for n, i in enumerate(indices):
            item = synthetic.generate(params, i)
            name = f"images/{n:06d}.png"
            item.image.save(directory / name)
            record = {
                "file_name": name,
                "caption": item.caption,
                "label": item.label,
                "license": item.license,
            }
            meta.write(json.dumps(record) + "\n")
    return f"file://{directory}"


def save_pairs(directory: Path, pairs: list[tuple[str, object, object]]) -> str:
    """``pairs`` of (label, chosen PIL image, rejected PIL image) → a feedback JSONL."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (label, chosen, rejected) in enumerate(pairs):
        chosen.save(directory / f"images/{n:06d}-up.png")
        rejected.save(directory / f"images/{n:06d}-down.png")
        lines.append(
            json.dumps(
                {"label": label, "chosen": f"images/{n:06d}-up.png", "rejected": f"images/{n:06d}-down.png"}
            )
        )
    (directory / "feedback.jsonl").write_text("\n".join(lines) + "\n")
    return f"file://{directory}/feedback.jsonl"


def data_pairs(directory: Path, seed: int, per_label: int) -> str:
    """White-background images preferred over black-background ones, per shape label."""
    params = synthetic.ShapesParams(count=per_label * 200, size=16, seed=seed)
    found: dict[tuple[str, str], list[int]] = {}
    for i in range(params.count):
        caption, label = synthetic.describe(params, i)
        found.setdefault((label, caption.rsplit(" on a ", 1)[1]), []).append(i)
    pairs = []
    for label in synthetic.SHAPES:
        wins = found[(label, "white background")][:per_label]
        losses = found[(label, "black background")][:per_label]
        assert len(wins) == len(losses) == per_label, (label, len(wins), len(losses))
        pairs += [
            (label, synthetic.generate(params, w).image, synthetic.generate(params, lo).image)
            for w, lo in zip(wins, losses, strict=True)
        ]
    return save_pairs(directory, pairs)


def generated_pairs(directory: Path, model, seed: int, per_label: int, pool: int) -> str:
    """Per label, ``pool`` base samples: the ``per_label`` lightest-bordered "up", as many darkest "down"."""
    from PIL import Image

    labels = [label for label in model.labels for _ in range(pool)]
    images = to_uint8(
        model.sample(
            len(labels),
            steps=inference_steps(),
            generator=torch.Generator().manual_seed(seed),
            labels=labels,
            batch_size=64,
        )
    )
    lum, _ = border(images)
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for k, label in enumerate(model.labels):
        order = torch.argsort(lum[k * pool : (k + 1) * pool], descending=True) + k * pool
        ups, downs = order[:per_label], order[-per_label:][torch.randperm(per_label, generator=g)]
        for u, d in zip(ups.tolist(), downs.tolist(), strict=True):
            pil = [Image.fromarray(images[i].permute(1, 2, 0).numpy()) for i in (u, d)]
            pairs.append((label, *pil))
    return save_pairs(directory, pairs)


# --------------------------------------------------------------------------- runs


def run_document(out: Path, data_uri: str, model: dict, training: dict, **extra) -> dict:
    return {
        "schemaVersion": "genforge.dev/v1alpha1",
        "command": extra.pop("command", "train"),
        "run": {"kind": "TrainingRun", "namespace": "bench", "name": out.name, "uid": out.name},
        "output": {"uri": f"file://{out}"},
        "checkpoint": {"everySteps": 0, "keep": 1},
        "model": model,
        "dataset": {"uri": data_uri},
        "training": training,
        "evaluation": None,
        **extra,
    }


def demo_model() -> dict:
    spec = example("model.yaml")
    return {
        "name": "shapes",
        "architecture": spec["architecture"],
        "resolution": spec["resolution"],
        "config": spec["config"],
    }


def train_base(work: Path, data_uri: str, steps: int | None) -> tuple[str, object]:
    training = dict(example("trainingrun.yaml")["training"])
    if steps:
        training["steps"] = steps
        training["lrWarmupSteps"] = min(training.get("lrWarmupSteps", 0), steps)
    training["logEverySteps"] = 100
    out = work / f"base-{training['steps']}"
    spec = parse_run_spec(run_document(out, data_uri, demo_model(), training))
    if not (out / "model" / "genforge.json").exists():
        start = time.perf_counter()
        train.run(spec, ProgressReporter())
        print(f"base: {training['steps']} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return f"file://{out}/model", spec


def finetune(work: Path, data_uri: str, base_uri: str, feedback_uri: str, beta: float, seed: int, args):
    demo = example("finetune-lora.yaml")["training"]
    training = {
        "steps": args.steps or demo["steps"],
        "batchSize": args.batch_size or demo["batchSize"],
        "learningRate": args.lr,
        "seed": seed,
        "logEverySteps": 10,
    }
    out = work / f"pref-{args.feedback}-b{beta:g}-s{seed}-lr{args.lr:g}"
    doc = run_document(
        out,
        data_uri,
        {**demo_model(), "baseUri": base_uri},
        training,
        command="finetune",
        finetune={"method": "preference", "preference": {"feedbackUri": feedback_uri, "beta": beta}},
    )
    spec = parse_run_spec(doc)
    start = time.perf_counter()
    result = train.run(spec, ProgressReporter())
    return load_pretrained(result["artifact"], spec.model), time.perf_counter() - start, result["loss"]


# --------------------------------------------------------------------------- measures


class Probe:
    """Fixed inputs (noise, timesteps, sampling seed) shared by every model measured."""

    def __init__(self, model, pairs, data, draws: int, samples_per_label: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.pairs, self.data, self.draws = pairs, data, draws
        n, shape = len(pairs), (3, model.resolution, model.resolution)
        steps = model.noise_scheduler.config.num_train_timesteps
        self.pair_noise = torch.randn((draws, n, *shape), generator=g)
        self.pair_t = torch.randint(0, steps, (draws, n), generator=g)
        self.data_noise = torch.randn((len(data), *shape), generator=g)
        self.data_t = torch.randint(0, steps, (len(data),), generator=g)
        self.sample_labels = [label for label in model.labels for _ in range(samples_per_label)]

    @torch.no_grad()
    def errors(self, model, pixels, labels, noise, timesteps, batch: int = 256) -> torch.Tensor:
        out = []
        for s in range(0, len(pixels), batch):
            sl = slice(s, s + batch)
            cond = model.conditioning([""] * len(pixels[sl]), labels[sl], torch.device("cpu"))
            out.append(
                per_sample_denoising_loss(
                    model, model.denoiser, pixels[sl], cond, None, noise=noise[sl], timesteps=timesteps[sl]
                )
            )
        return torch.cat(out)

    @torch.no_grad()
    def measure(self, model) -> dict:
        model.denoiser.eval()
        p = self.pairs
        win = [
            self.errors(model, p.chosen, p.labels, self.pair_noise[d], self.pair_t[d])
            for d in range(self.draws)
        ]
        lose = [
            self.errors(model, p.rejected, p.labels, self.pair_noise[d], self.pair_t[d])
            for d in range(self.draws)
        ]
        images = to_uint8(
            model.sample(
                len(self.sample_labels),
                steps=inference_steps(),
                generator=torch.Generator().manual_seed(31337),
                labels=self.sample_labels,
                batch_size=64,
            )
        )
        lum, std = border(images)
        return {
            "win": torch.stack(win),
            "lose": torch.stack(lose),
            "data": self.errors(model, self.data.pixels, self.data.labels, self.data_noise, self.data_t),
            "lum": lum,
            "std": std,
            "images": images,
        }


def compare(tuned: dict, ref: dict, beta: float) -> dict:
    # [draws, pairs]; > 0: the model prefers the winner more than the reference does
    s = (ref["win"] - ref["lose"]) - (tuned["win"] - tuned["lose"])
    return {
        "acc": float((s.mean(dim=0) > 0).float().mean()),
        "loss": float(-F.logsigmoid(0.5 * beta * s).mean()),
        "lum": float(tuned["lum"].mean()),
        "light": float((tuned["lum"] > ref["lum"].median()).float().mean()),
        "dW": float(tuned["win"].mean() / ref["win"].mean() - 1),
        "dL": float(tuned["lose"].mean() / ref["lose"].mean() - 1),
        "dData": float(tuned["data"].mean() / ref["data"].mean() - 1),
        "plain": float((tuned["std"] < PLAIN_STD).float().mean()),
    }


# --------------------------------------------------------------------------- main


def spread(values: list[float], pattern: str) -> str:
    if len(values) == 1:
        return pattern.format(values[0])
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{pattern.format(mid)} ({pattern.format(lo)}…{pattern.format(hi)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 1, 10, 100, 1000, 2000, 5000, 20000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--lr", type=float, default=1e-5, help="fine-tune learning rate (the CRD default is 1e-4)"
    )
    parser.add_argument("--steps", type=int, default=0, help="fine-tune steps (default: the demo's, 60)")
    parser.add_argument("--batch-size", type=int, default=0, help="pairs per step (default: the demo's, 16)")
    parser.add_argument("--feedback", choices=["generated", "data"], default="generated")
    parser.add_argument("--base-steps", type=int, default=0, help="base training steps (default: the demo's)")
    parser.add_argument("--pairs-per-label", type=int, default=16)
    parser.add_argument("--draws", type=int, default=4, help="noise/timestep draws per held-out pair")
    parser.add_argument("--samples-per-label", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data, base model and runs here")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (a tiny model gains little from 2, loses much when shared)",
    )
    parser.add_argument("--only-base", action="store_true", help="prepare data and the base model, then stop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-pref-")
        args.workdir = Path(tmp.name)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

    params = synthetic.parse_uri(example("dataset.yaml")["source"]["uri"])
    data_dir = work / "data"
    if not (data_dir / "metadata.jsonl").exists():
        write_images(data_dir, params, list(range(params.count)))
    data_uri = f"file://{data_dir}"
    base_uri, base_spec = train_base(work, data_uri, args.base_steps)
    if args.only_base:
        return
    base = load_pretrained(base_uri, base_spec.model)
    base.denoiser.eval()

    k = args.pairs_per_label
    feedback = {}
    for part, seed in (("train", 101), ("held", 102)):
        directory = work / f"feedback-{args.feedback}-{part}"
        if (directory / "feedback.jsonl").exists():
            feedback[part] = f"file://{directory}/feedback.jsonl"
        elif args.feedback == "data":
            feedback[part] = data_pairs(directory, seed, k)
        else:
            feedback[part] = generated_pairs(directory, base, seed, k, pool=4 * k)
    fresh = synthetic.ShapesParams(count=256, size=params.size, seed=103)
    fresh_uri = write_images(work / "fresh", fresh, list(range(fresh.count)))
    print(f"data, base and feedback ready after {time.perf_counter() - started:.0f} s", flush=True)

    probe = Probe(
        base,
        read_feedback(feedback["held"], base.resolution),
        load_images(fresh_uri, base.resolution),
        args.draws,
        args.samples_per_label,
    )
    ref = probe.measure(base)
    columns = args.samples_per_label
    (work / "samples-base.png").write_bytes(image_grid(ref["images"], columns=columns))
    base_line = (
        f"base: border luminance {float(ref['lum'].mean()):.1f}, plain {float((ref['std'] < PLAIN_STD).float().mean()):.0%}, "
        f"denoising loss: data {float(ref['data'].mean()):.4f}, held-out winners {float(ref['win'].mean()):.4f}, "
        f"losers {float(ref['lose'].mean()):.4f}"
    )
    print(base_line, flush=True)

    rows: list[dict] = []
    for seed in args.seeds:
        for beta in args.betas:
            tuned, seconds, train_loss = finetune(
                work, data_uri, base_uri, feedback["train"], beta, seed, args
            )
            measured = probe.measure(tuned)
            name = f"samples-{args.feedback}-b{beta:g}-s{seed}-lr{args.lr:g}.png"
            (work / name).write_bytes(image_grid(measured["images"], columns=columns))
            row = {"beta": beta, "seed": seed, "seconds": seconds, "train_loss": train_loss}
            row.update(compare(measured, ref, beta))
            rows.append(row)
            print(
                f"beta {beta:>7g} seed {seed}: acc {row['acc']:.0%} loss {row['loss']:.3f} | "
                f"lum {row['lum']:.1f} light {row['light']:.0%} dW {row['dW']:+.1%} dL {row['dL']:+.1%} | "
                f"dData {row['dData']:+.1%} plain {row['plain']:.0%} | train loss {train_loss:.3f} | {seconds:.0f} s",
                flush=True,
            )

    print(
        f"\nfeedback {args.feedback}, lr {args.lr:g}, median (min…max) over seeds {args.seeds}\n{base_line}\n\n"
        "| β | held-out acc | held-out DPO loss | border lum. | lighter than base median | Δ loss winners | "
        "Δ loss losers | Δ loss, fresh data | plain samples |\n|---:|---|---|---|---|---|---|---|---|"
    )
    for beta in args.betas:
        rs = [r for r in rows if r["beta"] == beta]

        def col(key: str, pattern: str, rs=rs) -> str:
            return spread([r[key] for r in rs], pattern)

        print(
            f"| {beta:g} | {col('acc', '{:.0%}')} | {col('loss', '{:.3f}')} | {col('lum', '{:.0f}')} | "
            f"{col('light', '{:.0%}')} | {col('dW', '{:+.1%}')} | {col('dL', '{:+.1%}')} | "
            f"{col('dData', '{:+.1%}')} | {col('plain', '{:.0%}')} |"
        )
    total = time.perf_counter() - started
    per_run = statistics.median(r["seconds"] for r in rows) if rows else 0
    print(f"\ntotal {total / 60:.1f} min; fine-tune {per_run:.0f} s per run (median)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"workdir": str(work), "json": str(args.json)},
                    "rows": rows,
                    "seconds": total,
                },
                indent=2,
                default=str,
            )
        )
    if tmp is not None:
        tmp.cleanup()
    assert all(math.isfinite(r["loss"]) for r in rows)


if __name__ == "__main__":
    main()
