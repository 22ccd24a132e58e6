"""``synthetic://shapes`` — a built-in, deterministic generator of labelled shape images.

``synthetic://shapes?count=N&size=S&seed=K`` yields ``N`` images of ``S``×``S`` pixels,
each one shape (circle, square, triangle, diamond, pentagon, hexagon, star, cross) in one
colour on a plain background, with a caption ("a large red star on a white background"),
the shape name as its label and the licence ``cc0-1.0``. Item ``i`` depends only on
``(seed, i, size)``, so any prefix of a dataset is the same whatever ``count`` says and
any worker can draw any item.

Used by the examples, the demo and tests: training on it needs no download.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageDraw

LICENSE = "cc0-1.0"
SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "beige": (235, 225, 200),
}
_SUPERSAMPLE = 4
MAX_COUNT = 10_000_000
MAX_SIZE = 4096


@dataclass(frozen=True)
class ShapesParams:
    count: int = 512
    size: int = 64
    seed: int = 0

    @property
    def uri(self) -> str:
        return f"synthetic://shapes?count={self.count}&size={self.size}&seed={self.seed}"


@dataclass(frozen=True)
class SyntheticItem:
    image: Image.Image
    caption: str
    label: str
    license: str = LICENSE


def parse_uri(uri: str) -> ShapesParams:
    """Parse ``synthetic://shapes?...``; ``ValueError`` names what is wrong."""
    parts = urlsplit(uri)
    if parts.scheme != "synthetic":
        raise ValueError(f"not a synthetic:// URI: {uri!r}")
    kind = (parts.netloc or parts.path.strip("/")) or ""
    if kind != "shapes":
        raise ValueError(f"unknown synthetic generator {kind!r}; available: shapes")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"count", "size", "seed"})
    if unknown:
        raise ValueError(
            f"unknown synthetic://shapes parameter(s) {', '.join(unknown)} (allowed: count, size, seed)"
        )
    values: dict[str, int] = {}
    for key, bounds in (("count", (1, MAX_COUNT)), ("size", (8, MAX_SIZE)), ("seed", (0, 2**63 - 1))):
        if key not in query:
            continue
        raw = query[key][-1]
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"synthetic://shapes {key} must be an integer, got {raw!r}") from None
        if not bounds[0] <= value <= bounds[1]:
            raise ValueError(f"synthetic://shapes {key} must be in [{bounds[0]}, {bounds[1]}], got {value}")
        values[key] = value
    return ShapesParams(**values)


def _polygon(cx: float, cy: float, radius: float, sides: int, rotation: float) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(rotation + 2 * math.pi * k / sides),
            cy + radius * math.sin(rotation + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _star(cx: float, cy: float, radius: float, rotation: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = rotation + math.pi * k / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _cross(cx: float, cy: float, radius: float, rotation: float) -> list[tuple[float, float]]:
    arm = radius * 0.35
    outline = [
        (arm, radius),
        (arm, arm),
        (radius, arm),
        (radius, -arm),
        (arm, -arm),
        (arm, -radius),
        (-arm, -radius),
        (-arm, -arm),
        (-radius, -arm),
        (-radius, arm),
        (-arm, arm),
        (-arm, radius),
    ]
    cos, sin = math.cos(rotation), math.sin(rotation)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in outline]


def draw_shape(
    shape: str,
    colour: tuple[int, int, int],
    background: tuple[int, int, int],
    size: int,
    centre: tuple[float, float],
    radius: float,
    rotation: float,
) -> Image.Image:
    """Draw one anti-aliased shape; ``centre`` and ``radius`` are fractions of ``size``."""
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    cx, cy, r = centre[0] * big, centre[1] * big, radius * big
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * math.sqrt(2) * 0.85, 4, rotation + math.pi / 4), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rotation - math.pi / 2), fill=colour)
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)]
        draw.polygon(pts, fill=colour)
    elif shape == "pentagon":
        draw.polygon(_polygon(cx, cy, r, 5, rotation - math.pi / 2), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rotation), fill=colour)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r, rotation - math.pi / 2), fill=colour)
    elif shape == "cross":
        draw.polygon(_cross(cx, cy, r, rotation), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image.resize((size, size), Image.Resampling.BOX)


def _size_word(radius: float) -> str:
    return "small" if radius < 0.22 else "large" if radius > 0.32 else "medium"


@dataclass(frozen=True)
class _Draw:
    shape: str
    colour: str
    background: str
    radius: float
    centre: tuple[float, float]
    rotation: float

    @property
    def caption(self) -> str:
        return f"a {_size_word(self.radius)} {self.colour} {self.shape} on a {self.background} background"


def _draw_params(params: ShapesParams, index: int) -> _Draw:
    if not 0 <= index < params.count:
        raise IndexError(f"synthetic item {index} out of range [0, {params.count})")
    rng = np.random.default_rng([params.seed, index, params.size])
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    radius = float(rng.uniform(0.16, 0.38))
    margin = radius + 0.04
    centre = (float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin)))
    rotation = float(rng.uniform(0, 2 * math.pi))
    return _Draw(shape, colour, background, radius, centre, rotation)


def describe(params: ShapesParams, index: int) -> tuple[str, str]:
    """Caption and label of item ``index``, without drawing it."""
    d = _draw_params(params, index)
    return d.caption, d.shape


def generate(params: ShapesParams, index: int) -> SyntheticItem:
    """Item ``index`` of the dataset ``params`` describes (``0 <= index < count``)."""
    d = _draw_params(params, index)
    image = draw_shape(
        d.shape, COLOURS[d.colour], BACKGROUNDS[d.background], params.size, d.centre, d.radius, d.rotation
    )
    return SyntheticItem(image=image, caption=d.caption, label=d.shape)
