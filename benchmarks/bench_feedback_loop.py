"""Human feedback end to end: how far do thumbs move the model, per preference setting?

The loop of tests/review/test_feedback_loop.py, repeated over settings and seeds:

1. a base: ``--model tiny`` (the test's: 300 steps of a 2-level UNet on 32 synthetic shapes,
   16 px) or ``--model demo`` (the demo's GenModel trained as examples/trainingrun.yaml says,
   1500 steps on 512 shapes; ~7 min on one core, cached in ``--workdir``);
2. 64 samples (8 per shape, seeds 0…63, 10 DDIM steps) rated through the review page's HTTP
   API (review.server, a real aiohttp server): 👍 when the shape's pixels' mean red exceeds
   their mean blue by ≥ 20 levels (samplestats.shape_redness: the object, not the background),
   👎 when blue exceeds red by as much, the rest skipped; 64 more samples
   from seeds 10000… are never rated (held out);
3. for each learning rate, β and fine-tune seed: the preference fine-tune the
   page's button creates (60 steps of 16 pairs) through ``genforge_trainer.train.run``;
4. the share of samples showing a red-over-blue shape before and after, on the rated and the held-out
   seeds; the mean red − blue; and Δ loss — the change of the denoising loss on 256 fresh
   generator images (fixed noise and timesteps), which shows a model damaged on its data.

Run::

    python benchmarks/bench_feedback_loop.py --workdir /tmp/fb --model tiny
    python benchmarks/bench_feedback_loop.py --workdir /tmp/fb --model demo --lrs 1e-5 1e-4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preference_beta import demo_model, run_document, train_base, write_images  # noqa: E402

from genforge_operator.review.finetune import FineTuneRequest, manifest  # noqa: E402
from genforge_operator.review.server import BackgroundServer, ReviewApp  # noqa: E402
from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.data import synthetic  # noqa: E402
from genforge_trainer.generate import generate  # noqa: E402
from genforge_trainer.imagedata import load_images  # noqa: E402
from genforge_trainer.methods import per_sample_denoising_loss  # noqa: E402
from genforge_trainer.models import load_pretrained  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402
from genforge_trainer.samplestats import folder_shape_redness  # noqa: E402

CLEAR = 20.0
TINY = {"name": "shapes", "architecture": "unet2d-ddpm", "resolution": 16,
        "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1, "inferenceSteps": 4}}


def redness(folder: Path) -> np.ndarray:
    """Each sample's shape colour (samplestats: the object's pixels, not the background); NaN
    without a shape."""
    return np.array([np.nan if v is None else v for v in folder_shape_redness(folder)])


def share(values: np.ndarray) -> float:
    return float((np.nan_to_num(values, nan=-1.0) > 0).mean())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Captured:
    def __init__(self):
        self.created: list[dict] = []

    def create(self, request):
        self.created.append(manifest(request))
        return self.created[-1]

    def get(self, namespace, name):
        return None


def base_model(args, work: Path) -> tuple[str, str, object]:
    if args.model == "demo":
        params = synthetic.ShapesParams(count=512, size=16, seed=0)
        data = work / "data-demo"
        if not (data / "metadata.jsonl").exists():
            write_images(data, params, list(range(params.count)))
        uri, spec = train_base(work, f"file://{data}", None)
        return uri, f"file://{data}", spec.model
    params = synthetic.ShapesParams(count=32, size=16, seed=0)
    data = work / "data-tiny"
    if not (data / "metadata.jsonl").exists():
        write_images(data, params, list(range(params.count)))
    out = work / "base-tiny"
    training = {"steps": 300, "batchSize": 8, "learningRate": 2e-3, "logEverySteps": 100}
    spec = parse_run_spec(run_document(out, f"file://{data}", TINY, training))
    if not (out / "model" / "genforge.json").exists():
        train.run(spec, ProgressReporter())
    return f"file://{out}/model", f"file://{data}", spec.model


def fresh_loss(uri: str, model_spec, images) -> float:
    """Mean denoising loss on `images` (an ImageSet) with fixed noise and timesteps."""
    model = load_pretrained(uri, model_spec)
    model.denoiser.eval()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        cond = model.conditioning([""] * len(images), images.labels, torch.device("cpu"))
        errors = per_sample_denoising_loss(model, model.denoiser, images.pixels, cond, generator)
    return float(errors.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3])
    parser.add_argument("--betas", type=float, nargs="+", default=[500, 5000, 20000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base-uri", help="a trained model folder of the demo's architecture instead of training "
                                           "one (e.g. the version `genforge demo` made)")
    parser.add_argument("--sampling-steps", type=int, default=10, help="DDIM steps of every sample (the demo: 25)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base, data_uri, model_spec = base_model(args, work)
    if args.base_uri:
        base = args.base_uri

    def sample(uri: str, out: Path, seed: int) -> np.ndarray:
        if not (out / "samples.jsonl").exists():
            generate(uri, out, per_label=8, seed=seed, steps=args.sampling_steps, model_name="shapes", version="v",
                     progress=False, device="cpu")
        return redness(out)

    tag = f"{args.model}" + (f"-k{args.sampling_steps}" if args.sampling_steps != 10 else "") + (
        "-" + __import__("hashlib").sha256(args.base_uri.encode()).hexdigest()[:8] if args.base_uri else "")
    folder = work / f"review-{tag}"
    before, held = sample(base, folder, 0), sample(base, work / f"held-{tag}", 10_000)
    (folder / "ratings.jsonl").unlink(missing_ok=True)
    offer = FineTuneRequest(namespace="bench", model="shapes", version="v", dataset="shapes",
                            feedback_uri=f"file://{folder}/ratings.jsonl")
    captured = Captured()
    with BackgroundServer(ReviewApp(folder, finetune=offer, cluster=lambda: captured, default_rater="bench")) as s:
        state = json.loads(urllib.request.urlopen(s.url + "/api/state", timeout=30).read())
        rated = 0
        for item, value in zip(state["samples"], before, strict=True):
            if not np.isnan(value) and abs(value) >= CLEAR:
                post(s.url + "/api/rate", {"image": item["file"], "rating": "up" if value > 0 else "down"})
                rated += 1
        post(s.url + "/api/finetune", {})
    page_training = captured.created[0]["spec"]["training"]
    fresh = synthetic.ShapesParams(count=256, size=16, seed=103)
    fresh_images = load_images(write_images(work / "fresh", fresh, list(range(fresh.count))),
                               model_spec.resolution)
    base_fresh = fresh_loss(base, model_spec, fresh_images)
    n = len(before)
    print(f"{args.model}: {rated} of {n} rated; base red-over-blue {share(before):.0%} (held-out "
          f"{share(held):.0%}), shapes' mean red−blue {np.nanmean(before):+.1f}; page's training block {page_training}",
          flush=True)
    rows = []
    for lr in args.lrs:
        for beta in args.betas:
            for seed in args.seeds:
                out = work / f"ft-{tag}-lr{lr:g}-b{beta:g}-s{seed}"
                training = {**page_training, "learningRate": lr, "seed": seed, "logEverySteps": 20}
                model = {**(TINY if args.model == "tiny" else demo_model()), "baseUri": base}
                doc = run_document(out, data_uri, model, training, command="finetune",
                                   finetune={"method": "preference",
                                             "preference": {"feedbackUri": offer.feedback_uri, "beta": beta}})
                t0 = time.perf_counter()
                tuned = train.run(parse_run_spec(doc), ProgressReporter())["artifact"]
                seconds = time.perf_counter() - t0
                after = sample(tuned, out / "rated-seeds", 0)
                after_held = sample(tuned, out / "held-out", 10_000)
                row = {"lr": lr, "beta": beta, "seed": seed, "seconds": seconds,
                       "share": share(after), "held": share(after_held), "mean": float(np.nanmean(after)),
                       "shapes": float(np.mean(~np.isnan(after))),
                       "dloss": fresh_loss(tuned, model_spec, fresh_images) / base_fresh - 1}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{args.model} base: red-over-blue shapes {share(before):.0%} on the rated seeds, {share(held):.0%} "
          f"held out; shapes found {np.mean(~np.isnan(before)):.0%}; {rated} of {n} rated\n")
    print("| lr | β | red-over-blue shapes, rated seeds | held-out seeds | shapes' red − blue | shapes found | "
          "Δ loss, fresh data |")
    print("|---:|---:|---|---|---|---|---|")

    def spread(values: list[float], pattern: str) -> str:
        if len(values) == 1:
            return pattern.format(values[0])
        return f"{pattern.format(statistics.median(values))} ({pattern.format(min(values))}…{pattern.format(max(values))})"

    for lr in args.lrs:
        for beta in args.betas:
            rs = [r for r in rows if (r["lr"], r["beta"]) == (lr, beta)]
            print(f"| {lr:g} | {beta:g} | {spread([r['share'] for r in rs], '{:.0%}')} | "
                  f"{spread([r['held'] for r in rs], '{:.0%}')} | {spread([r['mean'] for r in rs], '{:+.1f}')} | "
                  f"{spread([r['shapes'] for r in rs], '{:.0%}')} | "
                  f"{spread([r['dloss'] for r in rs], '{:+.0%}')} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all; {statistics.median(r['seconds'] for r in rows):.0f} s per "
          f"fine-tune (median)")


if __name__ == "__main__":
    main()
