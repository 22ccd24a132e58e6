"""Face detection for ``blurFaces``: MediaPipe's BlazeFace (short range), searched over the
part of the image that becomes the output, at two or three scales, each in one forward pass.

Why this detector: on real faces pasted into photographs it finds many more faces than
OpenCV's Haar cascade (which genforge used before) at every size — at 128 px output, 100 %
of 24 px faces against 10 % — for a fraction of its CPU time; ``benchmarks/bench_faces.py``,
figures in docs/benchmarks.md. The model (229 KB, Apache-2.0, from MediaPipe) ships inside
the package, so nothing is downloaded and the Dataset Job needs no network; its SHA-256 is
checked when it is loaded.

How it runs: the network is fully convolutional, so it takes any input whose sides are
multiples of 16 (its anchor grid grows with the input). LiteRT (``ai-edge-litert``, the
TensorFlow Lite runtime, with its XNNPACK kernels) runs it at ≈ 1.5 ms per 128×128 on one
core, against ≈ 2.6 ms for OpenCV's DNN module, which is the fallback when LiteRT is not
installed (same outputs to 1e-4). One forward pass over a whole scaled region replaces the
grid of overlapping 128×128 tiles genforge searched before (5 per image at 256 px output,
21 at 512 px): fewer pixels (no overlaps) and one call instead of many.

Where and at which scales faces are searched: only faces that end up in the output matter.

* The **coarse pass** sees the output's crop box grown by a margin (a face cut by the crop
  edge still shows enough of itself to be found), its short side scaled to the model's
  native 128 px: it finds faces from 1/8 of that side up to all of it.
* When faces of :data:`MIN_FACE_OUTPUT` output pixels are smaller than that, **finer
  passes** see the crop itself, each at most :data:`MAX_STEP` times the previous scale,
  the last one at the scale where a face of ``MIN_FACE_OUTPUT`` output pixels measures
  :data:`MIN_FACE_MODEL` model pixels. With the defaults: one pass up to 160 px outputs,
  two up to 512 px (614 px where the image edge leaves no margin), three beyond.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: The model: MediaPipe's face_detection_short_range.tflite (BlazeFace), Apache-2.0.
MODEL_PATH = Path(__file__).with_name("models") / "face_detection_short_range.tflite"
MODEL_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
#: The model's native square input, in pixels, and its SSD anchor layout (MediaPipe's
#: face_detection_short_range.pbtxt: 4 layers, strides 8/16/16/16, 2 anchors per cell).
INPUT_SIZE = 128
ANCHOR_STRIDES = (8, 16, 16, 16)
#: Input sides must be multiples of the coarsest stride.
INPUT_MULTIPLE = 16
#: Smallest face the model finds reliably, as a fraction of its native input (16 of 128
#: pixels: measured recall ≥ 95 % on real faces at this size, falling fast below it).
MIN_FACE_FRACTION = 1 / 8
#: Every face at least this many pixels wide in the output is inside the searched range.
MIN_FACE_OUTPUT = 24
#: ... and measures at least this many model pixels in the finest pass. The 5×5 tile grid
#: genforge used before showed a 24 px face at 20 model pixels at 128–320 px outputs
#: (16.7 at 512 px): 20 keeps every output's small faces at least as large to the model.
MIN_FACE_MODEL = 20
#: Scale ratio between consecutive passes: each finer pass covers faces from
#: MIN_FACE_MODEL model pixels up to this many times that, well inside what the model
#: finds in its native 128 px input.
MAX_STEP = 4.0
#: A detection counts from this score. MediaPipe's default (0.5) flagged a third of 102
#: photographs without people (textures, a cat); 0.6 flags 10 % of them and still finds
#: every real face of >= 16 px at 128 px output — privacy prefers a blurred false positive
#: to a missed face, within reason. Finer passes magnify texture into face-like patterns,
#: so they need more: at 0.75 they flag none of those photographs and still find every
#: real face of >= 20 output pixels at 256 px (docs/benchmarks.md, "Face detection").
SCORE_THRESHOLD = 0.6
TILE_SCORE_THRESHOLD = 0.75
#: Boxes overlapping more than this (IoU) are one face (passes overlap, and so do anchors).
NMS_IOU = 0.3
#: The searched region is the output's crop box grown by this fraction of its short side.
MARGIN = 0.1


@dataclass(frozen=True)
class Face:
    """A face: its box in source-image pixels and the model's score."""

    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class Window:
    """A rectangle of the source image (``x0, y0, width, height``) that the model sees in
    one pass, resampled to ``input_width``×``input_height`` (multiples of 16), and the
    pass it belongs to (0: the coarse pass over the crop and its margin; 1, 2, …: finer
    passes over the crop)."""

    x0: float
    y0: float
    width: float
    height: float
    level: int
    input_width: int = INPUT_SIZE
    input_height: int = INPUT_SIZE

    @property
    def scale(self) -> float:
        """Model pixels per source pixel (the smaller of the two axes: stretching to a
        multiple of 16 makes them differ by a few per cent at most)."""
        return min(self.input_width / self.width, self.input_height / self.height)


def _input_side(length: float) -> int:
    """The multiple of 16 at or above ``length`` (never a coarser scale than asked for)."""
    return max(INPUT_MULTIPLE, math.ceil(length / INPUT_MULTIPLE - 1e-6) * INPUT_MULTIPLE)


def _window(rect: tuple[float, float, float, float], scale: float, level: int) -> Window:
    x0, y0, x1, y1 = rect
    width, height = x1 - x0, y1 - y0
    return Window(x0, y0, width, height, level, _input_side(width * scale), _input_side(height * scale))


def search_windows(
    region: tuple[float, float, float, float],
    output_per_pixel: float,
    crop: tuple[float, float, float, float] | None = None,
) -> list[Window]:
    """The passes such that every face from ``MIN_FACE_OUTPUT`` output pixels up to the
    region's short side is in range of one of them.

    ``region``: where large faces are searched (source pixels: the crop and its margin);
    ``crop``: where the finer passes search for small faces (default: the region) — a
    small face cut by the crop edge leaves too little of itself in the output to matter.
    ``output_per_pixel``: output pixels per source pixel (the resize factor of the crop).
    """
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    if width <= 0 or height <= 0:
        return []
    coarse = _window(region, INPUT_SIZE / min(width, height), 0)
    windows = [coarse]
    # the smallest face the coarse pass finds, in source pixels, against the one required
    smallest_found = INPUT_SIZE * MIN_FACE_FRACTION / coarse.scale
    smallest = MIN_FACE_OUTPUT / max(output_per_pixel, 1e-9)
    if smallest_found <= smallest * (1 + 1e-9):
        return windows
    finest = MIN_FACE_MODEL / smallest  # model pixels per source pixel
    steps = math.ceil(math.log(finest / coarse.scale) / math.log(MAX_STEP) - 1e-9)
    cx0, cy0, cx1, cy1 = crop if crop is not None else region
    for level in range(1, steps + 1):
        scale = coarse.scale * (finest / coarse.scale) ** (level / steps)
        windows.append(_window((cx0, cy0, cx1, cy1), scale, level))
    return windows


def _anchors(width: int, height: int) -> np.ndarray:
    """SSD anchor centres (x, y) in input pixels, in the model's output order, for an input
    of ``width``×``height`` (MediaPipe's ssd_anchors_calculator with fixed anchor size:
    only the centres matter; layers of equal stride share one grid)."""
    grids: list[np.ndarray] = []
    layer = 0
    while layer < len(ANCHOR_STRIDES):
        stride = ANCHOR_STRIDES[layer]
        repeats = 0
        while layer < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[layer] == stride:
            repeats += 2  # two aspect ratios (1.0 and the interpolated scale) per layer
            layer += 1
        ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
        grids.append(np.repeat(centres, repeats, axis=0))
    return np.concatenate(grids).astype(np.float32)


class _LiteRT:
    """The model on LiteRT (XNNPACK kernels), one interpreter per input shape."""

    name = "litert"

    def __init__(self, data: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter
        self._data = data
        self._by_shape: dict[tuple[int, int, int], object] = {}

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = batch.shape[:3]
        interpreter = self._by_shape.get(shape)
        if interpreter is None:
            if len(self._by_shape) >= 32:  # odd aspect ratios: keep the cache bounded
                self._by_shape.pop(next(iter(self._by_shape)))
            interpreter = self._interpreter(model_content=self._data, num_threads=1)
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(batch.shape))
            interpreter.allocate_tensors()
            self._by_shape[shape] = interpreter
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
        interpreter.invoke()
        outputs = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
        return _split(outputs)


class _OpenCV:
    """The model on OpenCV's DNN module (the fallback: ~1.7× LiteRT's CPU time)."""

    name = "opencv"

    def __init__(self, path: Path) -> None:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the process pool
        self._net = cv2.dnn.readNetFromTFLite(str(path))
        self._outputs = self._net.getUnconnectedOutLayersNames()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._net.setInput(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))  # NCHW
        return _split(list(self._net.forward(self._outputs)))


def _split(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(raw scores, raw boxes) of one image from the model's two outputs, whatever their order."""
    raw_scores = next(o for o in outputs if o.shape[-1] == 1).reshape(-1)
    raw_boxes = next(o for o in outputs if o.shape[-1] == 16).reshape(-1, 16)
    return raw_scores, raw_boxes


def _runtime(data: bytes, path: Path, backend: str | None):
    if backend in (None, "litert"):
        try:
            return _LiteRT(data)
        except ImportError:
            if backend == "litert":
                raise
    return _OpenCV(path)


class FaceDetector:
    """BlazeFace on LiteRT (or OpenCV DNN); one per process (see :func:`detector`).

    ``backend``: ``"litert"``, ``"opencv"`` or None (LiteRT when installed)."""

    def __init__(
        self, path: Path = MODEL_PATH, sha256: str | None = MODEL_SHA256, backend: str | None = None
    ) -> None:
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise RuntimeError(
                f"the face detection model at {path} is not the one genforge ships (SHA-256 mismatch)"
            )
        self._run = _runtime(data, path, backend)
        self.backend: str = self._run.name
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    def detect_window(self, window: Image.Image, threshold: float = SCORE_THRESHOLD) -> list[Face]:
        """Faces in an RGB image whose sides are multiples of 16, as boxes in its pixels."""
        if window.width % INPUT_MULTIPLE or window.height % INPUT_MULTIPLE:
            raise ValueError(
                f"the face model takes inputs whose sides are multiples of {INPUT_MULTIPLE}, "
                f"got {window.width}x{window.height}"
            )
        pixels = np.asarray(window, dtype=np.float32)[np.newaxis]
        pixels *= 1 / 127.5
        pixels -= 1.0  # [-1, 1]
        raw_scores, raw_boxes = self._run(pixels)
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -80.0, 80.0)))
        keep = scores >= threshold
        if not keep.any():
            return []
        anchors = self._anchors.get(window.size)
        if anchors is None:
            anchors = self._anchors[window.size] = _anchors(*window.size)
        boxes = raw_boxes[keep, :4]
        centres = anchors[keep]
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
        self,
        image: Image.Image,
        crop: tuple[float, float, float, float],
        output_per_pixel: float,
        output: Image.Image | None = None,
    ) -> list[Face]:
        """Faces in ``image`` that can reach the output cropped at ``crop`` (source pixels).

        ``output``: the output already rendered from ``crop`` (optional): a finer pass whose
        scale is no more than the output's is resampled from it, a few times fewer pixels
        to read than the source."""
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
            sx, sy = w.input_width / w.width, w.input_height / w.height  # model pixels per source pixel
            size = (w.input_width, w.input_height)
            if output is not None and w.level > 0 and w.scale <= output_per_pixel * (1 + 1e-6):
                source, box = output, (0.0, 0.0, float(output.width), float(output.height))
            else:
                source, box = image, (w.x0, w.y0, w.x0 + w.width, w.y0 + w.height)
            # area averaging: the cheapest filter that does not alias
            pixels = source.resize(size, Image.Resampling.BOX, box=box, reducing_gap=2.0)
            threshold = SCORE_THRESHOLD if w.level == 0 else TILE_SCORE_THRESHOLD
            for face in self.detect_window(pixels, threshold):
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
