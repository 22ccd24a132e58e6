"""Which training recipe makes the demo's tiny model draw shapes on the data's backgrounds?

Issue 21: after `genforge demo`, the TrainingRun's samples should look like the data — flat
shapes on the synthetic data's plain backgrounds — within the demo's ~4–5 minutes of
training on two CPU cores. This benchmark trains the demo's model (examples/model.yaml)
on the demo's data (``synthetic://shapes``, 512 images, 16 px, seed 0) with the code a
TrainingRun executes (``genforge_trainer.train.run``), once per recipe and seed, and reads
what the evaluation step reports for 64 samples (8 per shape label):

* ``bg``: share of samples on one of the data's backgrounds (border median within 25
  levels, corners plain) — ``samplestats.sample_statistics``' ``onDataBackground``;
* ``mix``: whether the samples use the four backgrounds as often as the data does
  (``backgroundMix``: 1 − total variation distance; 64 fresh data images score 0.85–0.92,
  a model painting everything grey ~0.25);
* ``noise``: mean corner std of the samples (levels); the data's is ~0;
* ``colour``: share of samples whose shape colour is one the data shows with that label;
* ``fid``: random-conv FID against the held-out images; ``train s``: wall time of the run
  (training + evaluation) and its samples/s.

A recipe is a set of GenModel ``config`` and TrainingRun ``training`` fields over the
examples' (``RECIPES`` below); the one the examples ship is ``examples``. Trials run one at
a time, interleaved (recipe A seed 0, recipe B seed 0, …, recipe A seed 1, …), so a slow
minute of the machine does not fall on one recipe only.

Run::

    python benchmarks/bench_demo_recipe.py --workdir /tmp/recipe                  # every recipe, seed 0
    python benchmarks/bench_demo_recipe.py --workdir /tmp/recipe --recipes examples vpred-zsnr --seeds 0 1 2

Each trial's samples.png and metrics.json stay under ``--workdir/<recipe>-s<seed>/``;
results are appended to ``--workdir/results.jsonl`` and a finished trial is not rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer"))

from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.data import synthetic  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402

EXAMPLES = ROOT / "examples"

# The recipe the demo shipped before issue 21 (examples/ at 22cabdc): every recipe below but
# "examples" is a set of overrides of it — GenModel `config` ("model"), TrainingRun `training`
# ("training"); None removes a field. "examples" is what examples/model.yaml and
# examples/trainingrun.yaml say now.
OLD_MODEL = {"blockOutChannels": [32, 64], "layersPerBlock": 1, "inferenceSteps": 25}
OLD_TRAINING = {"steps": 1500, "batchSize": 16, "learningRate": 3.0e-3, "lrWarmupSteps": 100,
                "lrScheduler": "cosine", "mixedPrecision": "no", "gradientAccumulation": 1, "seed": 0}
# min-SNR-γ 20: less down-weighting of the low-noise steps (the last details); what examples/
# shipped from issue 21's first round to its third.
V_SMALL_G20 = {
    "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing",
              "blockOutChannels": [16, 32]},
    "training": {"ema": True, "snrGamma": 20.0, "batchSize": 32, "steps": 2200, "lrWarmupSteps": 100,
                 "learningRate": 5e-3},
}
RECIPES: dict[str, dict] = {
    "examples": {"base": "examples"},
    "eps-old": {},
    "vpred": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": None, "timestepSpacing": None},
        "training": {"ema": False, "snrGamma": None},
    },
    "vpred-zsnr": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": False, "snrGamma": None},
    },
    "vpred-zsnr-minsnr": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": False, "snrGamma": 5.0},
    },
    "vpred-zsnr-minsnr-ema": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": True, "emaDecay": 0.999, "snrGamma": 5.0},
    },
    "vpred-zsnr-minsnr-ema-ddim50": {"sampleFrom": "vpred-zsnr-minsnr-ema", "evaluation": {"inferenceSteps": 50}},
    "vpred-zsnr-minsnr-ema-ddim100": {"sampleFrom": "vpred-zsnr-minsnr-ema", "evaluation": {"inferenceSteps": 100}},
    "vpred-zsnr-minsnr-ema-ddim10": {"sampleFrom": "vpred-zsnr-minsnr-ema", "evaluation": {"inferenceSteps": 10}},
    # Variations of vpred-zsnr-minsnr-ema (the "v" recipe):
    "v-b32-ema995": {  # an EMA window of ~200 steps instead of ~1000 (most of the run)
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": True, "emaDecay": 0.995, "snrGamma": 5.0, "batchSize": 32, "steps": 1100,
                     "lrWarmupSteps": 75},
    },
    "v-b32-ema995-lr5e-3": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": True, "emaDecay": 0.995, "snrGamma": 5.0, "batchSize": 32, "steps": 1100,
                     "lrWarmupSteps": 75, "learningRate": 5e-3},
    },
    "v-small": {  # [16, 32]: a quarter of the parameters, 300 samples/s at batch 32 vs 138: twice the steps
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing",
                  "blockOutChannels": [16, 32]},
        "training": {"ema": True, "snrGamma": 5.0, "batchSize": 32, "steps": 2200, "lrWarmupSteps": 100,
                     "learningRate": 5e-3},
    },
    "v-small-g20": V_SMALL_G20,
    "v-small-no-minsnr": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing",
                  "blockOutChannels": [16, 32]},
        "training": {"ema": True, "batchSize": 32, "steps": 2200, "lrWarmupSteps": 100, "learningRate": 5e-3},
    },
    "v-3level": {  # [32, 64, 64]: a third level at 4x4 with the attention there, as fast as [32, 64]
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing",
                  "blockOutChannels": [32, 64, 64]},
        "training": {"ema": True, "snrGamma": 5.0, "batchSize": 32, "steps": 1100, "lrWarmupSteps": 75,
                     "learningRate": 5e-3},
    },
    "v-lr1e-3": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": True, "emaDecay": 0.999, "snrGamma": 5.0, "learningRate": 1e-3},
    },
    "v-b32": {  # batch 32 runs 156 samples/s on 2 cores vs 114 at 16: 1100 steps take the time of 1500
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": True, "emaDecay": 0.999, "snrGamma": 5.0, "batchSize": 32, "steps": 1100,
                     "lrWarmupSteps": 75},
    },
    "v-attn-both": {
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing",
                  "attention": [True, True]},
        "training": {"ema": True, "emaDecay": 0.999, "snrGamma": 5.0},
    },
    "v-long6000": {  # the ceiling: 4x the demo's training (not a demo recipe: ~15 min)
        "model": {"predictionType": "v_prediction", "rescaleBetasZeroSnr": True, "timestepSpacing": "trailing"},
        "training": {"ema": True, "emaDecay": 0.999, "snrGamma": 5.0, "steps": 6000},
    },
    # Issue 21, part 2: one change each to the shipped recipe (v-small-g20, what examples/ say).
    "ex-x0": {"base": "examples", "model": {"predictionType": "sample"}},  # x0 prediction, same min-SNR-γ 20
    "ex-b64": {"base": "examples", "training": {"batchSize": 64, "steps": 1400}},  # more samples/s, fewer updates
    "ex-lr1e-2": {"base": "examples", "training": {"learningRate": 1.0e-2}},
    "ex-g50": {"base": "examples", "training": {"snrGamma": 50.0}},  # more weight on the low-noise steps
    # Issue 21, part 5: how far is the target? The shipped recipe with 2x and 4x its training
    # (not demo recipes: ~5 and ~10 minutes of training on two cores).
    "ex-s4400": {"base": "examples", "training": {"steps": 4400}},
    "ex-s8800": {"base": "examples", "training": {"steps": 8800}},
    # No self-attention at 8x8 (the profile: ~19 % of a step's CPU time is the attention's
    # four calls): the same steps, is it faster and as good?
    "ex-noattn": {"base": "examples", "model": {"attention": [False, False]}},
    # Issue 21, part 3: stochastic sampling through GenModel `config.ddimEta` (sampler variants
    # of a trained model: seconds each), and v-small-g20 (the recipe the examples shipped
    # before part 3) given more updates.
    "g20-eta1": {"sampleFrom": "v-small-g20", "model": {"ddimEta": 1.0}},
    "g20-eta1-ddim50": {"sampleFrom": "v-small-g20", "model": {"ddimEta": 1.0}, "evaluation": {"inferenceSteps": 50}},
    "g20-s2600": {"model": V_SMALL_G20["model"], "training": {**V_SMALL_G20["training"], "steps": 2600}},
    "g20-s2600-eta1": {"sampleFrom": "g20-s2600", "model": {"ddimEta": 1.0}},
    "g20-s2600-eta1-ddim50": {"sampleFrom": "g20-s2600", "model": {"ddimEta": 1.0},
                              "evaluation": {"inferenceSteps": 50}},
    "g20-s3000": {"model": V_SMALL_G20["model"], "training": {**V_SMALL_G20["training"], "steps": 3000}},
    "g20-s3000-eta1": {"sampleFrom": "g20-s3000", "model": {"ddimEta": 1.0}},
    "g20-s3000-eta1-ddim50": {"sampleFrom": "g20-s3000", "model": {"ddimEta": 1.0},
                              "evaluation": {"inferenceSteps": 50}},
    # Issue 21, part 4: classifier-free guidance. The shipped recipe (examples/) trained with
    # GenModel `config.classDropout` (a null class; each sample's class dropped to it with that
    # probability), then sampled with `config.guidanceScale` w (sampler variants of the trained
    # model: its own evaluation is w = 1).
    "cfg-p10": {"base": "examples", "model": {"classDropout": 0.1, "guidanceScale": 1.0}},
    **{f"cfg-p10-w{w:g}": {"sampleFrom": "cfg-p10", "model": {"guidanceScale": w}} for w in (1.5, 2.0, 3.0, 5.0)},
    "cfg-p20": {"base": "examples", "model": {"classDropout": 0.2, "guidanceScale": 1.0}},
    **{f"cfg-p20-w{w:g}": {"sampleFrom": "cfg-p20", "model": {"guidanceScale": w}} for w in (1.5, 2.0, 3.0, 5.0)},
    "eps-minsnr-ema": {
        "model": {"predictionType": "epsilon", "rescaleBetasZeroSnr": None, "timestepSpacing": None},
        "training": {"ema": True, "emaDecay": 0.999, "snrGamma": 5.0},
    },
}


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())["spec"]


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def write_data(directory: Path) -> str:
    """The demo's dataset (examples/dataset.yaml: 512 images, 16 px, seed 0) as a prepared folder."""
    params = synthetic.parse_uri(example("dataset.yaml")["source"]["uri"])
    if not (directory / "metadata.jsonl").exists():
        (directory / "images").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(params.count):
            item = synthetic.generate(params, i)
            item.image.save(directory / f"images/{i:06d}.png")
            lines.append(json.dumps({"file_name": f"images/{i:06d}.png", "caption": item.caption,
                                     "label": item.label, "license": item.license}))
        (directory / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return f"file://{directory}"


def bases(recipe: dict) -> tuple[dict, dict]:
    """(GenModel config, TrainingRun training) a recipe starts from."""
    if recipe.get("base") == "examples":
        return example("model.yaml")["config"], example("trainingrun.yaml")["training"]
    return OLD_MODEL, OLD_TRAINING


def run_document(out: Path, data_uri: str, recipe: dict, seed: int, samples: int, command: str = "train") -> dict:
    model = example("model.yaml")
    run = example("trainingrun.yaml")
    base_config, base_training = bases(recipe)
    training = merged(base_training, recipe.get("training", {}))
    training["seed"] = seed
    training["logEverySteps"] = 100
    evaluation = {**run.get("evaluation", {}), "samples": samples}
    return {
        "schemaVersion": "genforge.dev/v1alpha1",
        "command": command,
        "run": {"kind": "TrainingRun", "namespace": "bench", "name": out.name, "uid": out.name},
        "output": {"uri": f"file://{out}"},
        "checkpoint": {"everySteps": 0, "keep": 1},
        "model": {
            "name": "shapes",
            "architecture": model["architecture"],
            "resolution": model["resolution"],
            "config": merged(base_config, recipe.get("model", {})),
        },
        "dataset": {"uri": data_uri},
        "training": training,
        "evaluation": evaluation,
    }


def scores(metrics: dict) -> dict:
    return {
        "bg": metrics.get("onDataBackground"), "mix": metrics.get("backgroundMix"),
        "noise": metrics.get("backgroundNoise"), "dataNoise": metrics.get("dataBackgroundNoise"),
        "colour": metrics.get("labelColour"), "fid": metrics.get("fid"), "loss": metrics.get("loss"),
        "samples": metrics.get("statisticsSamples"), "inferenceSteps": metrics.get("inferenceSteps"),
        "ddimEta": metrics.get("ddimEta"), "guidanceScale": metrics.get("guidanceScale"),
    }


def trial(work: Path, data_uri: str, name: str, seed: int, samples: int) -> dict:
    out = work / f"{name}-s{seed}"
    recipe = RECIPES[name]
    if "sampleFrom" in recipe:  # a sampler variant: the model another recipe trained, sampled otherwise
        row = {"recipe": name, "seed": seed, "seconds": None, "samplesPerSecond": None, "overrides": recipe}
        return rescore(work, data_uri, row, samples)
    spec = parse_run_spec(run_document(out, data_uri, recipe, seed, samples))
    start = time.perf_counter()
    result = train.run(spec, ProgressReporter())
    seconds = time.perf_counter() - start
    return {"recipe": name, "seed": seed, "seconds": round(seconds, 1),
            "samplesPerSecond": result.get("samplesPerSecond"), **scores(result["metrics"]),
            "overrides": RECIPES[name]}


def rescore(work: Path, data_uri: str, row: dict, samples: int) -> dict:
    """Evaluate a trial's saved model again (``genforge-trainer evaluate``: the same samples,
    seeds and reference as the run's own evaluation) with the statistics as they are now."""
    from genforge_trainer import evaluation

    out = work / f"{row['recipe']}-s{row['seed']}"
    recipe = row.get("overrides", RECIPES.get(row["recipe"], {}))
    document = run_document(out, data_uri, recipe, row["seed"], samples, command="evaluate")
    if "sampleFrom" in recipe:
        document["model"]["baseUri"] = f"file://{work}/{recipe['sampleFrom']}-s{row['seed']}/model"
        source = RECIPES[recipe["sampleFrom"]]
        document["model"]["config"] = merged(merged(bases(source)[0], source.get("model", {})),
                                             recipe.get("model", {}))
    document["evaluation"].update(recipe.get("evaluation", {}))
    spec = parse_run_spec(document)
    return {**row, **scores(evaluation.run(spec, ProgressReporter())["metrics"])}


def table(rows: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["recipe"], []).append(row)
    lines = ["| recipe | trials | run s | on a data background | background mix | corner noise | colour ≈ label "
             "| FID |", "|---|---|---|---|---|---|---|---|"]

    def spread(values: list[float], fmt: str) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"

    for name, group in by.items():
        lines.append(
            f"| {name} | {len(group)} | {spread([r['seconds'] for r in group], '.0f')} "
            f"| {spread([100 * r['bg'] for r in group if r['bg'] is not None], '.0f')} % "
            f"| {spread([r.get('mix') for r in group], '.2f')} "
            f"| {spread([r['noise'] for r in group], '.1f')} "
            f"| {spread([100 * r['colour'] for r in group if r['colour'] is not None], '.0f')} % "
            f"| {spread([r['fid'] for r in group], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--table", action="store_true", help="only print the table of results so far")
    parser.add_argument("--rescore", action="store_true",
                        help="evaluate every finished trial's model again (after a change to the statistics)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = args.workdir / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if args.rescore:
        data_uri = write_data(args.workdir / "data")
        done = [rescore(args.workdir, data_uri, row, args.samples) for row in done]
        results.write_text("".join(json.dumps(row) + "\n" for row in done))
    elif not args.table:
        data_uri = write_data(args.workdir / "data")
        for seed in args.seeds:
            for name in args.recipes:
                if any(r["recipe"] == name and r["seed"] == seed and r["samples"] == args.samples for r in done):
                    continue
                row = trial(args.workdir, data_uri, name, seed, args.samples)
                done.append(row)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "overrides"}), flush=True)
    print(table([r for r in done if r["recipe"] in args.recipes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
