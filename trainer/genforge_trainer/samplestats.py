"""Statistics a person would check on a generated sample, from its pixels alone.

For images of one object on a plain background (the synthetic shapes, many product shots):
the background colour is the median of the image's border ring; the object is the inner
pixels far from it. ``shape_redness`` says whether the object is red or blue — what a rater
of "👍 red shapes, 👎 blue ones" decides — without letting a reddened background count as a
red shape (a fine-tune that paints backgrounds red and shapes blue must not pass for one
that learned red shapes).

``sample_statistics`` puts these together for a set of generated samples against the data
they should look like — what the evaluation step reports for every run on data with plain
backgrounds (issue 21): the share of samples on one of the data's backgrounds, how noisy
their backgrounds are next to the data's, and (class-conditional models) whether the
object's colour is one the data shows with that label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Euclidean RGB distance (0–441) from the background colour that makes a pixel the object's.
OBJECT_DISTANCE = 60.0
#: A sample is "on a data background" when its border median is within this many levels
#: (largest channel difference) of one of the data's backgrounds…
BACKGROUND_MATCH = 25.0
#: …and its corners are plain: their std (levels) at most this. Uniform noise has a
#: mid-grey border median — close to a grey background — but corner std > 50.
PLAIN_NOISE = 12.0
#: Data images with corner std at most this count as plain-background images; the
#: statistics are computed only when at least half of the reference images are.
FLAT_NOISE = 4.0
#: Data backgrounds closer than this (levels) are one background.
BACKGROUND_MERGE = 12.0
#: A sample's object colour agrees with its label when it is within this many levels
#: (largest channel difference) of the object colour of a data image with that label.
COLOUR_MATCH = 40.0
#: The evaluation compares with at most this many data images (a seeded random subset).
MAX_REFERENCE = 2000


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """Median RGB of the border ring (``H // 8`` pixels wide, at least 1) of an [H, W, 3] image."""
    ring = max(1, pixels.shape[0] // 8)
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    return np.median(border.astype(np.float64), axis=0)


def _object(pixels: np.ndarray, distance: float = OBJECT_DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels ([K, 3]) and their distances from the background (see
    ``object_pixels``); both empty when there is no object."""
    ring = max(1, pixels.shape[0] // 8)
    inner = pixels[ring:-ring, ring:-ring].reshape(-1, 3).astype(np.float64)
    away = np.sqrt(((inner - background_colour(pixels)) ** 2).sum(axis=1))
    far = away > distance
    if far.sum() < max(3, inner.shape[0] // 20):
        return inner[:0], away[:0]
    return inner[far], away[far]


def object_pixels(pixels: np.ndarray, distance: float = OBJECT_DISTANCE) -> np.ndarray:
    """The inner pixels (the ring excluded) farther than ``distance`` from the background: [K, 3];
    empty when fewer than 1/20 of the inner pixels (and 3) are — no object to speak of."""
    return _object(pixels, distance)[0]


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


def object_colour(pixels: np.ndarray) -> np.ndarray | None:
    """The colour a person names for the object: the median RGB of its core — the quarter
    of its pixels (at least 3) farthest from the background; None when there is no object.
    The core, not all of the object's pixels: at 16 px a soft edge is most of a small
    shape, and a slightly blurred red blob is still red (Gaussian blur of σ 0.8 px moves
    the median of all its pixels off the palette for ~45 % of the data's shapes, the
    core's for ~5 %)."""
    found, distance = _object(pixels)
    if not len(found):
        return None
    core = found[np.argsort(distance)[-max(3, len(found) // 4):]]
    return np.median(core, axis=0)


def plain_backgrounds(images: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """The distinct plain backgrounds of a set of data images (border medians of the images
    with flat corners, merged within ``BACKGROUND_MERGE`` levels); None when fewer than half
    of the images have a plain background — a photo dataset, where these statistics mean
    nothing."""
    flat = [background_colour(im) for im in images if background_noise(im) <= FLAT_NOISE]
    if not images or 2 * len(flat) < len(images):
        return None
    found: list[np.ndarray] = []
    for colour in flat:
        if not any(np.abs(colour - known).max() <= BACKGROUND_MERGE for known in found):
            found.append(colour)
    return found


def which_background(pixels: np.ndarray, backgrounds: Sequence[np.ndarray]) -> int | None:
    """The index of the background in ``backgrounds`` a sample sits on — border median within
    ``BACKGROUND_MATCH`` levels of it, corners plain (std <= ``PLAIN_NOISE``) — or None."""
    own = background_colour(pixels)
    distances = [float(np.abs(own - b).max()) for b in backgrounds]
    nearest = int(np.argmin(distances))
    if distances[nearest] <= BACKGROUND_MATCH and background_noise(pixels) <= PLAIN_NOISE:
        return nearest
    return None


def on_background(pixels: np.ndarray, backgrounds: Sequence[np.ndarray]) -> bool:
    """Whether a sample sits on one of ``backgrounds`` (``which_background``)."""
    return which_background(pixels, backgrounds) is not None


def background_mix(samples_on: Sequence[int | None], data_on: Sequence[int | None]) -> float:
    """1 − the total variation distance between the samples' and the data's shares of each
    background (and of "none"): 1 when the samples use the backgrounds as often as the data
    does, ~0.25 when a model paints every sample on one of four equally common backgrounds
    (e.g. the grey one, the mean of them all)."""
    keys = set(samples_on) | set(data_on)
    share = lambda found, key: sum(1 for k in found if k == key) / len(found)  # noqa: E731
    return 1.0 - 0.5 * sum(abs(share(samples_on, k) - share(data_on, k)) for k in keys)


def sample_statistics(
    samples: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    sample_labels: Sequence[str | None] | None = None,
    reference_labels: Sequence[str | None] | None = None,
) -> dict[str, float] | None:
    """Statistics of generated ``samples`` ([H, W, 3] uint8 each) against data images
    ``reference``; None when the data has no plain backgrounds. Keys (numbers, for a run's
    ``status.metrics``):

    * ``statisticsSamples``: how many samples the figures rest on;
    * ``dataBackgrounds``: distinct plain backgrounds found in the data;
    * ``onDataBackground``: share of samples on one of them (``which_background``);
    * ``backgroundMix``: whether they use those backgrounds as often as the data does
      (``background_mix``; a model that puts every sample on the grey background — the mean
      of white, black, grey and beige — has most samples "on a data background" but a mix
      of ~0.25);
    * ``backgroundNoise`` / ``dataBackgroundNoise``: mean corner std (levels) of the
      samples / of the data images;
    * ``labelColour`` (with labels on both sides): share of samples whose object colour is
      within ``COLOUR_MATCH`` of the object colour of a data image with the same label
      (a sample without an object disagrees).
    """
    backgrounds = plain_backgrounds(reference)
    if backgrounds is None or not samples:
        return None
    samples_on = [which_background(s, backgrounds) for s in samples]
    out = {
        "statisticsSamples": float(len(samples)),
        "dataBackgrounds": float(len(backgrounds)),
        "onDataBackground": round(sum(k is not None for k in samples_on) / len(samples), 4),
        "backgroundMix": round(background_mix(samples_on, [which_background(r, backgrounds) for r in reference]), 4),
        "backgroundNoise": round(float(np.mean([background_noise(s) for s in samples])), 3),
        "dataBackgroundNoise": round(float(np.mean([background_noise(r) for r in reference])), 3),
    }
    if sample_labels is not None and reference_labels is not None and any(sample_labels):
        colours: dict[str, list[np.ndarray]] = {}
        for image, label in zip(reference, reference_labels, strict=True):
            colour = object_colour(image) if label is not None else None
            if colour is not None:
                colours.setdefault(label, []).append(colour)
        agree = 0
        for image, label in zip(samples, sample_labels, strict=True):
            colour = object_colour(image)
            known = colours.get(label) if label is not None else None
            if colour is not None and known:
                agree += float(np.abs(np.asarray(known) - colour).max(axis=1).min()) <= COLOUR_MATCH
        out["labelColour"] = round(agree / len(samples), 4)
    return out
