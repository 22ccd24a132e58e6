"""Statistics a person would check on a generated sample, from its pixels alone.

For images of one object on a plain background (the synthetic shapes, many product shots):
the background colour is the median of the image's border ring; the object is the inner
pixels far from it. ``shape_redness`` says whether the object is red or blue — what a rater
of "👍 red shapes, 👎 blue ones" decides — without letting a reddened background count as a
red shape (a fine-tune that paints backgrounds red and shapes blue must not pass for one
that learned red shapes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Euclidean RGB distance (0–441) from the background colour that makes a pixel the object's.
OBJECT_DISTANCE = 60.0


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """Median RGB of the border ring (``H // 8`` pixels wide, at least 1) of an [H, W, 3] image."""
    ring = max(1, pixels.shape[0] // 8)
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    return np.median(border.astype(np.float64), axis=0)


def object_pixels(pixels: np.ndarray, distance: float = OBJECT_DISTANCE) -> np.ndarray:
    """The inner pixels (the ring excluded) farther than ``distance`` from the background: [K, 3];
    empty when fewer than 1/20 of the inner pixels (and 3) are — no object to speak of."""
    ring = max(1, pixels.shape[0] // 8)
    inner = pixels[ring:-ring, ring:-ring].reshape(-1, 3).astype(np.float64)
    far = np.sqrt(((inner - background_colour(pixels)) ** 2).sum(axis=1)) > distance
    if far.sum() < max(3, inner.shape[0] // 20):
        return inner[:0]
    return inner[far]


def shape_redness(pixels: np.ndarray) -> float | None:
    """Mean red minus mean blue (levels) of the object's pixels; None when there is no object."""
    found = object_pixels(pixels)
    if not len(found):
        return None
    return float(found[:, 0].mean() - found[:, 2].mean())


def nearest_background(pixels: np.ndarray, backgrounds: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    """The data background closest to the sample's own (border median), and the distance: the
    largest per-channel difference in levels (issue 21: "within 25 levels of a data background")."""
    own = background_colour(pixels)
    name, colour = min(backgrounds.items(), key=lambda kv: float(np.abs(own - np.asarray(kv[1])).max()))
    return name, float(np.abs(own - np.asarray(colour)).max())


def background_noise(pixels: np.ndarray) -> float:
    """Standard deviation (levels, mean over channels) of the four corner patches (``H // 8``
    square each): a flat background gives ~0, a noisy sample a large value."""
    k = max(1, pixels.shape[0] // 8)
    corners = np.concatenate([pixels[:k, :k].reshape(-1, 3), pixels[:k, -k:].reshape(-1, 3),
                              pixels[-k:, :k].reshape(-1, 3), pixels[-k:, -k:].reshape(-1, 3)]).astype(np.float64)
    return float(corners.std(axis=0).mean())


def folder_shape_redness(folder: str | Path) -> list[float | None]:
    """``shape_redness`` of each image of a samples folder (``samples.jsonl`` order, as
    `genforge generate` writes it)."""
    from PIL import Image

    folder = Path(folder)
    values = []
    for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        with Image.open(folder / json.loads(line)["file"]) as image:
            values.append(shape_redness(np.asarray(image.convert("RGB"))))
    return values
