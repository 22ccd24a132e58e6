"""Human feedback, the whole loop, shown to move the model (issue 17 item 3).

Train a tiny class-conditional model; generate 64 samples; rate them through the review
page's HTTP API as a person would — 👍 every sample whose shape is clearly red (its
pixels' mean red exceeds their mean blue by 20 levels), 👎 every clearly blue shape, the rest
skipped — decided from the pixels (samplestats: the shape, not the background); create the FineTune with the page's button;
run that FineTune's preference training (the FineTune's own `training` and `preference`
blocks) on the stored ratings; generate again with the same seeds, and with 64 other seeds
the ratings never saw. The share of red-over-blue samples must rise by far more than
seed-to-seed noise (the binomial standard error of a 64-sample share, and the difference
between the base's two seed sets). Sized for 2 CPU cores: about a minute.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainer.datasets import shapes  # noqa: E402
from trainer.test_training import tiny_run  # noqa: E402

from genforge_operator.review.server import ReviewApp  # noqa: E402

from .helpers import ThreadServer, call  # noqa: E402
from .test_server import FakeFineTunes  # noqa: E402

pytestmark = pytest.mark.torch

SAMPLES_PER_LABEL = 8  # × the 8 shapes: 64 samples
SAMPLING_STEPS = 10
RATED_SEED, HELD_OUT_SEED = 0, 10_000
CLEAR = 20.0  # levels of the shape's mean red − mean blue that make it clearly red (or, negative, blue)


def redness(folder: Path) -> np.ndarray:
    """Each sample's shape colour (samplestats: the object's pixels); NaN without a shape."""
    from genforge_trainer.samplestats import folder_shape_redness

    return np.array([math.nan if v is None else v for v in folder_shape_redness(folder)])


def share(values: np.ndarray) -> float:
    """Share of all samples that show a red-over-blue shape (no shape: not red)."""
    return float((np.nan_to_num(values, nan=-1.0) > 0).mean())


def test_rating_red_shapes_up_and_blue_down_makes_the_model_draw_more_red_shapes(tmp_path):
    from genforge_trainer import train
    from genforge_trainer.config import parse_run_spec
    from genforge_trainer.generate import generate
    from genforge_trainer.progress import ProgressReporter

    torch.set_num_threads(1)
    data = shapes(tmp_path / "data", count=32, size=16)
    base_spec = parse_run_spec(tiny_run(tmp_path / "base", data, steps=300))
    base = train.run(base_spec, ProgressReporter())["artifact"]

    def sample(uri: str, out: Path, seed: int) -> np.ndarray:
        generate(uri, out, per_label=SAMPLES_PER_LABEL, seed=seed, steps=SAMPLING_STEPS, model_name="shapes",
                 version="v1" if uri == base else "v2", progress=False, device="cpu")
        return redness(out)

    folder = tmp_path / "review"
    before = sample(base, folder, RATED_SEED)
    before_held_out = sample(base, tmp_path / "base-held-out", HELD_OUT_SEED)
    n = len(before)
    assert n == 64

    # Rate through the page's API, as a person would: red 👍, blue 👎.
    fake = FakeFineTunes()
    from genforge_operator.review.finetune import FineTuneRequest

    offer = FineTuneRequest(namespace="default", model="shapes", version="v1", dataset="shapes",
                            feedback_uri=f"file://{folder}/ratings.jsonl")
    server = ThreadServer(ReviewApp(folder, finetune=offer, cluster=lambda: fake, default_rater="tester"))
    try:
        state = call(server.url + "/api/state")[1]
        rated = 0
        for item, value in zip(state["samples"], before, strict=True):
            if math.isnan(value) or abs(value) < CLEAR:
                continue  # no shape, or neither clearly red nor clearly blue: a person would skip it
            status, _ = call(server.url + "/api/rate", "POST",
                             {"image": item["file"], "rating": "up" if value > 0 else "down"})
            assert status == 200
            rated += 1
        assert rated >= n // 3
        status, created = call(server.url + "/api/finetune", "POST", {})
        assert status == 200, created
    finally:
        server.close()
    finetune = fake.created[0]["spec"]
    assert finetune["method"] == "preference"

    # The FineTune's trainer: its training and preference blocks, on the stored ratings.
    spec = parse_run_spec(tiny_run(tmp_path / "tuned", data, steps=finetune["training"]["steps"],
                                   command="finetune", model={"baseUri": base},
                                   training={**finetune["training"], "logEverySteps": 10},
                                   finetune={"method": "preference", "preference": finetune["preference"]}))
    tuned = train.run(spec, ProgressReporter())["artifact"]

    after = sample(tuned, tmp_path / "after", RATED_SEED)
    after_held_out = sample(tuned, tmp_path / "after-held-out", HELD_OUT_SEED)

    p0, p1 = share(before), share(after)
    h0, h1 = share(before_held_out), share(after_held_out)
    standard_error = math.sqrt(max(p0 * (1 - p0), 1 / n) / n)
    seed_noise = abs(p0 - h0)  # the base's share on two seed sets
    noise = max(standard_error, seed_noise)
    report = (f"{rated} of {n} samples rated; red-over-blue share: rated seeds {p0:.0%} → {p1:.0%}, held-out seeds {h0:.0%} → "
              f"{h1:.0%}; shapes' mean red−blue {np.nanmean(before):+.1f} → {np.nanmean(after):+.1f} levels; noise: standard error "
              f"{standard_error:.1%}, base seed sets differ by {seed_noise:.1%}")
    print(report)
    assert p1 - p0 >= max(0.25, 4 * noise), report
    assert h1 - h0 >= max(0.2, 3 * noise), report  # it generalises to seeds nobody rated
    assert np.nanmean(after) - np.nanmean(before) > 2 * np.nanstd(before) / math.sqrt(n), report
