"""Do the demo's samples draw their label's shape? A rough check of issue 21's trials.

Classifier-free guidance can only sharpen what the label changes in the model's prediction;
in ``synthetic://shapes`` that is the shape (the colour is drawn independently of it). This
reads each trial's ``samples.png`` (``bench_demo_recipe.py``'s grid: 64 tiles, tile ``i``
sampled with the model's label ``i mod 8``) and classifies each tile's foreground — pixels
more than 40 levels from the median of its border — by its nearest neighbour among the
data's images in the first four Hu moments (invariant to position, size and rotation;
L1 distance over the data's standard deviations). The same classifier on the data itself,
leave-one-out, says how much to trust it. Chance is 1 in 8.

Run::

    python benchmarks/bench_demo_shapes.py --workdir /tmp/cfg/recipe cfg-p10-s0 cfg-p10-w2-s0
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TILE, BORDER, COLUMNS, SAMPLES = 16, 2, 8, 64


def foreground(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(np.int32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return (np.abs(pixels - np.median(border, axis=0)).max(axis=2) > 40).astype(np.float64)


def hu_moments(mask: np.ndarray) -> np.ndarray | None:
    """The first four Hu moments of a mask; None for (almost) no foreground."""
    mass = mask.sum()
    if mass < 3:
        return None
    y, x = np.mgrid[: mask.shape[0], : mask.shape[1]]
    xc, yc = (x * mask).sum() / mass, (y * mask).sum() / mass

    def eta(p: int, q: int) -> float:
        return (((x - xc) ** p) * ((y - yc) ** q) * mask).sum() / mass ** (1 + (p + q) / 2)

    n20, n02, n11, n30, n03, n21, n12 = eta(2, 0), eta(0, 2), eta(1, 1), eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
    return np.array([n20 + n02, (n20 - n02) ** 2 + 4 * n11 ** 2, (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2,
                     (n30 + n12) ** 2 + (n21 + n03) ** 2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="bench_demo_recipe.py's --workdir")
    parser.add_argument("trials", nargs="+", help="trial folders, e.g. cfg-p10-s0")
    args = parser.parse_args(argv)
    meta = [json.loads(line) for line in (args.workdir / "data/metadata.jsonl").read_text().splitlines()]
    labels = sorted({m["label"] for m in meta})  # the model's label order (train_data.label_names)
    known = [(hu_moments(foreground(np.asarray(Image.open(args.workdir / "data" / m["file_name"]).convert("RGB")))),
              m["label"]) for m in meta]
    known = [(f, label) for f, label in known if f is not None]
    features, names = np.stack([f for f, _ in known]), np.array([label for _, label in known])
    spread = features.std(axis=0)

    def nearest(f: np.ndarray, exclude: int | None = None) -> str:
        distance = np.abs((features - f) / spread).sum(axis=1)
        if exclude is not None:
            distance[exclude] = np.inf
        return str(names[int(np.argmin(distance))])

    own = np.mean([nearest(features[i], exclude=i) == names[i] for i in range(len(names))])
    print(f"data, leave-one-out: {100 * own:.0f} % of {len(names)} (chance {100 / len(labels):.1f} %)")
    for trial in args.trials:
        grid = np.asarray(Image.open(args.workdir / trial / "samples.png").convert("RGB"))
        said: collections.Counter = collections.Counter()
        hits = 0
        for i in range(SAMPLES):
            row, column = divmod(i, COLUMNS)
            top, left = BORDER + row * (TILE + BORDER), BORDER + column * (TILE + BORDER)
            f = hu_moments(foreground(grid[top: top + TILE, left: left + TILE]))
            guess = nearest(f) if f is not None else "no shape"
            said[guess] += 1
            hits += guess == labels[i % len(labels)]
        print(f"{trial}: {hits}/{SAMPLES} ({100 * hits / SAMPLES:.0f} %) drawn as their label; "
              f"read as {dict(said.most_common(3))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
