"""Face detection for ``blurFaces``: MediaPipe's BlazeFace (short range) run by OpenCV's DNN
module, searched over the part of the image that becomes the output.

Why this detector: on real faces pasted into photographs it finds many more faces than
OpenCV's Haar cascade (which genforge used before) at every size — at 128 px output, 100 %
of 24 px faces against 10 % — for a third of the CPU time (≈ 4.5 ms per 128×128 window
on one core; the cascade took 15 ms per image at 64–128 px and 75 ms at 256 px);
``benchmarks/bench_faces.py``, figures in docs/benchmarks.md. The model (229 KB,
Apache-2.0, from MediaPipe) ships inside the package, so nothing is downloaded and the
Dataset Job needs no network; its SHA-256 is checked when it is loaded.

Where faces are searched: only faces that end up in the output matter, so the detector
sees the output's crop box grown by a margin (a face cut by the crop edge still shows
enough of itself to be found), stretched to the model's square input. That window covers
faces from ~1/8 of its side up to all of it; when the output is large enough that faces
smaller than that still measure :data:`MIN_FACE_OUTPUT` output pixels or more, finer
levels of overlapping square tiles (each 0.6 of the previous level's side, overlapping by
a third, so any face up to the overlap lies whole in one tile) are added until every face
of ``MIN_FACE_OUTPUT`` output pixels is inside the searched range.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: The model: MediaPipe's face_detection_short_range.tflite (BlazeFace), Apache-2.0.
MODEL_PATH = Path(__file__).with_name("models") / "face_detection_short_range.tflite"
MODEL_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
#: The model's square input, in pixels, and its SSD anchor layout (MediaPipe's
#: face_detection_short_range.pbtxt: 4 layers, strides 8/16/16/16, 2 anchors per cell).
INPUT_SIZE = 128
ANCHOR_STRIDES = (8, 16, 16, 16)
#: Smallest face the model finds reliably, as a fraction of its window (16 of 128 pixels:
#: measured recall ≥ 95 % on real faces at this size, falling fast below it).
MIN_FACE_FRACTION = 1 / 8
#: Every face at least this many pixels wide in the output is inside the searched range.
MIN_FACE_OUTPUT = 24
#: A detection counts from this score. MediaPipe's default (0.5) flagged a third of 102
#: photographs without people (textures, a cat); 0.6 flags 10 % of them and still finds
#: every real face of >= 16 px at 128 px output — privacy prefers a blurred false positive
#: to a missed face, within reason. Finer tiles magnify texture into face-like patterns,
#: so they need more: at 0.75 they flag none of those photographs and still find every
#: real face of >= 20 output pixels at 256 px (docs/benchmarks.md, "Face detection").
SCORE_THRESHOLD = 0.6
TILE_SCORE_THRESHOLD = 0.75
#: Boxes overlapping more than this (IoU) are one face (windows overlap, and so do anchors).
NMS_IOU = 0.3
#: The searched region is the output's crop box grown by this fraction of its short side.
MARGIN = 0.1
#: Each finer window level has tiles this fraction of the previous level's side.
LEVEL_SHRINK = 0.6
#: A region at most this much longer than wide is one window, stretched to the model's
#: square input (a square crop whose margin is cut by the image edge on two sides: faces
#: keep their full resolution along the other axis); longer regions get sliding squares.
MAX_STRETCH = 4 / 3


@dataclass(frozen=True)
class Face:
    """A face: its box in source-image pixels and the model's score."""

    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class Window:
    """A rectangle of the source image (``x0, y0, width, height``) that the model sees,
    scaled to its square input, and the search level it belongs to (0: the whole region;
    1, 2, …: finer tiles)."""

    x0: float
    y0: float
    width: float
    height: float
    level: int


def search_windows(
    region: tuple[float, float, float, float],
    output_per_pixel: float,
    crop: tuple[float, float, float, float] | None = None,
) -> list[Window]:
    """Windows such that every face from ``MIN_FACE_OUTPUT`` output pixels up to the
    region's short side lies whole inside a window where the model can find it.

    ``region``: where large faces are searched (source pixels: the crop and its margin);
    ``crop``: where the finer levels search for small faces (default: the region) — a
    small face cut by the crop edge leaves too little of itself in the output to matter.
    ``output_per_pixel``: output pixels per source pixel (the resize factor of the crop).
    Level 0 is the region itself when it is nearly square (a margin around a square
    crop), else squares of its short side sliding along it; each finer level tiles the
    crop with squares :data:`LEVEL_SHRINK` times smaller, overlapping by a third.
    """
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    if width <= 0 or height <= 0:
        return []
    side = min(width, height)
    smallest = MIN_FACE_OUTPUT / max(output_per_pixel, 1e-9)  # in source pixels
    if max(width, height) <= side * MAX_STRETCH:
        windows = [Window(x0, y0, width, height, 0)]
        fit = max(width, height)  # the stretched window's worse axis
    else:
        windows = [Window(x, y, side, side, 0) for x, y in _tile(x0, y0, width, height, side)]
        fit = side
    cx0, cy0, cx1, cy1 = crop if crop is not None else region
    side = min(cx1 - cx0, cy1 - cy0)
    level = 0
    while fit * MIN_FACE_FRACTION > smallest * (1 + 1e-9) and side * LEVEL_SHRINK >= 8:
        level += 1
        side *= LEVEL_SHRINK
        fit = side
        windows.extend(
            Window(x, y, side, side, level) for x, y in _tile(cx0, cy0, cx1 - cx0, cy1 - cy0, side)
        )
    return windows


def _tile(x0: float, y0: float, width: float, height: float, side: float) -> Iterator[tuple[float, float]]:
    """Top-left corners of squares of ``side`` over a ``width``×``height`` rectangle,
    evenly spaced and overlapping by at least a third."""
    stride = side * 2 / 3
    for y in _positions(height, side, stride):
        for x in _positions(width, side, stride):
            yield (x0 + x, y0 + y)


def _positions(length: float, side: float, stride: float) -> list[float]:
    if length <= side:
        return [0.0]
    count = math.ceil((length - side) / stride - 1e-9) + 1
    step = (length - side) / (count - 1)
    return [i * step for i in range(count)]


def _anchors() -> np.ndarray:
    """SSD anchor centres (x, y) in [0, 1], in the model's output order (MediaPipe's
    ssd_anchors_calculator with fixed anchor size: only the centres matter)."""
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(ANCHOR_STRIDES):
        stride = ANCHOR_STRIDES[layer]
        repeats = 0
        while layer < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[layer] == stride:
            repeats += 2  # two aspect ratios (1.0 and the interpolated scale) per layer
            layer += 1
        cells = INPUT_SIZE // stride
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * repeats)
    return np.array(centres, dtype=np.float32)


class FaceDetector:
    """BlazeFace on OpenCV DNN; one per process (see :func:`detector`)."""

    def __init__(self, path: Path = MODEL_PATH, sha256: str | None = MODEL_SHA256) -> None:
        import cv2

        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(
                f"the face detection model at {path} is not the one genforge ships (SHA-256 mismatch)"
            )
        cv2.setNumThreads(1)  # parallelism comes from the process pool
        self._net = cv2.dnn.readNetFromTFLite(str(path))
        self._outputs = self._net.getUnconnectedOutLayersNames()
        self._anchors = _anchors()

    def detect_window(self, window: Image.Image, threshold: float = SCORE_THRESHOLD) -> list[Face]:
        """Faces in an RGB image of the model's input size, as boxes in its pixels."""
        if window.size != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"the face model takes {INPUT_SIZE}x{INPUT_SIZE} windows, got {window.width}x{window.height}"
            )
        pixels = (np.asarray(window, dtype=np.float32) - 127.5) / 127.5  # [-1, 1]
        self._net.setInput(np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis]))  # NCHW
        outputs = self._net.forward(self._outputs)
        raw_scores = next(o for o in outputs if o.shape[-1] == 1).reshape(-1)
        raw_boxes = next(o for o in outputs if o.shape[-1] == 16).reshape(-1, 16)
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -80.0, 80.0)))
        keep = scores >= threshold
        if not keep.any():
            return []
        boxes = raw_boxes[keep, :4]
        centres = self._anchors[keep] * INPUT_SIZE
        cx, cy = boxes[:, 0] + centres[:, 0], boxes[:, 1] + centres[:, 1]
        half_w, half_h = boxes[:, 2] / 2, boxes[:, 3] / 2
        return [
            Face((float(a), float(b), float(c), float(d)), float(s))
            for a, b, c, d, s in zip(
                cx - half_w, cy - half_h, cx + half_w, cy + half_h, scores[keep], strict=True
            )
            if c > a and d > b
        ]

    def detect(
        self, image: Image.Image, crop: tuple[float, float, float, float], output_per_pixel: float
    ) -> list[Face]:
        """Faces in ``image`` that can reach the output cropped at ``crop`` (source pixels)."""
        x0, y0, x1, y1 = crop
        margin = MARGIN * min(x1 - x0, y1 - y0)
        region = (
            max(0.0, x0 - margin),
            max(0.0, y0 - margin),
            min(float(image.width), x1 + margin),
            min(float(image.height), y1 + margin),
        )
        found: list[Face] = []
        for w in search_windows(region, output_per_pixel, crop):
            # the window fills the model's input: a slightly oblong window (a crop and its
            # margin) is stretched, at most MAX_STRETCH, rather than letterboxed
            sx, sy = INPUT_SIZE / w.width, INPUT_SIZE / w.height  # model pixels per source pixel
            crop = image.resize(  # area averaging: the cheapest filter that does not alias
                (INPUT_SIZE, INPUT_SIZE),
                Image.Resampling.BOX,
                box=(w.x0, w.y0, w.x0 + w.width, w.y0 + w.height),
                reducing_gap=2.0,
            )
            threshold = SCORE_THRESHOLD if w.level == 0 else TILE_SCORE_THRESHOLD
            for face in self.detect_window(crop, threshold):
                a, b, c, d = face.box
                found.append(Face((w.x0 + a / sx, w.y0 + b / sy, w.x0 + c / sx, w.y0 + d / sy), face.score))
        return suppress(found)


def suppress(faces: list[Face]) -> list[Face]:
    """Non-maximum suppression: of boxes overlapping more than ``NMS_IOU``, the best-scored."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(face.box, other.box) <= NMS_IOU for other in kept):
            kept.append(face)
    return kept


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


_DETECTOR: FaceDetector | None = None


def detector() -> FaceDetector:
    """The process's detector, loaded on first use."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = FaceDetector()
    return _DETECTOR
