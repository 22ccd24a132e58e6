"""Face detection (BlazeFace on LiteRT, or OpenCV DNN): search passes, the shipped model, small faces."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from genforge_trainer.data import faces, imageops

from .images import photo


@pytest.mark.parametrize(
    "image_size,resolution",
    [
        ((400, 300), 64),
        ((400, 300), 128),
        ((346, 346), 256),
        ((1200, 800), 256),
        ((2000, 1500), 512),
        ((900, 300), 96),
    ],
)
def test_every_face_from_the_minimum_size_up_lies_whole_in_a_window_that_can_find_it(image_size, resolution):
    where = imageops.placement(image_size, resolution, "center")
    x0, y0, x1, y1 = where.box
    per_pixel = resolution / (x1 - x0)
    windows = faces.search_windows((x0, y0, x1, y1), per_pixel)
    rng = np.random.default_rng(0)
    smallest = faces.MIN_FACE_OUTPUT / per_pixel
    for size in np.geomspace(smallest, min(x1 - x0, y1 - y0), 12):
        for fx, fy in zip(rng.uniform(x0, x1 - size, 25), rng.uniform(y0, y1 - size, 25), strict=True):
            assert any(_finds(w, fx, fy, size) for w in windows), (size, fx, fy)


def _finds(w: faces.Window, fx: float, fy: float, size: float) -> bool:
    """The face lies whole in ``w`` and measures, at ``w``'s scale, between the smallest
    face the model finds (1/8 of its native input) and its whole native input."""
    inside = w.x0 <= fx and w.y0 <= fy and fx + size <= w.x0 + w.width and fy + size <= w.y0 + w.height
    model_px = size * w.scale
    smallest = faces.MIN_FACE_FRACTION * faces.INPUT_SIZE
    return inside and smallest - 1e-6 <= model_px <= faces.INPUT_SIZE + 1e-6


@pytest.mark.parametrize("side,resolution", [(400, 224), (400, 256), (346, 256), (1200, 512), (3000, 1024)])
def test_the_finest_pass_shows_the_smallest_face_at_least_as_large_as_the_tiles_did(side, resolution):
    """The 0.6-per-level tiles genforge searched before showed a MIN_FACE_OUTPUT face at
    16.7-20 model pixels; the finest pass shows it at MIN_FACE_MODEL (20) or more."""
    where = imageops.placement((side, side), resolution, "center")
    x0, y0, x1, y1 = where.box
    per_pixel = resolution / (x1 - x0)
    windows = faces.search_windows((x0, y0, x1, y1), per_pixel)
    finest = max(windows, key=lambda w: w.scale)
    assert finest.level > 0
    assert faces.MIN_FACE_OUTPUT / per_pixel * finest.scale >= faces.MIN_FACE_MODEL - 1e-6
    assert all(w.input_width % 16 == 0 and w.input_height % 16 == 0 for w in windows)


def test_pass_counts_stay_small():
    def count(side, resolution):
        return len(
            faces.search_windows(
                (0, 0, side * 1.2, side * 1.2),
                resolution / side,
                (0.1 * side, 0.1 * side, 1.1 * side, 1.1 * side),
            )
        )

    # one pass up to 160 px outputs (a face of 1/8 of the crop and its margin is 24 px
    # there), then the crop at a finer scale too (the 0.6-per-level tiles before: 5
    # windows at 192-320 px, 21 at 512 px)
    assert [count(400, r) for r in (32, 64, 128, 160)] == [1, 1, 1, 1]
    assert count(400, 192) == count(400, 256) == count(400, 320) == 2
    assert count(1200, 512) == 2
    assert count(3000, 1024) == 3


def test_the_shipped_model_is_checked():
    assert hashlib.sha256(faces.MODEL_PATH.read_bytes()).hexdigest() == faces.MODEL_SHA256
    assert faces.MODEL_PATH.stat().st_size < 300_000


def test_a_different_model_file_is_refused(tmp_path):
    other = tmp_path / "model.tflite"
    data = bytearray(faces.MODEL_PATH.read_bytes())
    data[len(data) // 2] ^= 0xFF
    other.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="SHA-256"):
        faces.FaceDetector(other)


def test_overlapping_boxes_are_one_face():
    a = faces.Face((0, 0, 10, 10), 0.9)
    b = faces.Face((1, 1, 11, 11), 0.7)
    c = faces.Face((20, 20, 30, 30), 0.65)
    assert faces.suppress([b, c, a]) == [a, c]


def _head() -> Image.Image:
    """The astronaut's head and some of its surroundings (face about 55 % of the width)."""
    return photo("astronaut").crop((135, 40, 315, 220))


@pytest.mark.parametrize(
    "resolution,face_px",
    [(64, 16), (128, 24), (256, 24), (256, 40), (512, 32)],
)
def test_small_faces_are_found_anywhere_in_the_output(resolution, face_px):
    """A real face pasted at ``face_px`` output pixels into a photograph without people,
    at several positions (some only the finer tiles can see): found every time."""
    background = ImageOps.fit(photo("coffee"), (resolution * 2, resolution * 2))
    head = _head()
    paste = round(face_px * 2 / 0.55)  # source pixels for a face of face_px output pixels
    head = head.resize((paste, paste), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(1)
    for _ in range(6):
        picture = background.copy()
        x, y = (int(v) for v in rng.integers(0, picture.width - paste, size=2))
        picture.paste(head, (x, y))
        where = imageops.placement(picture.size, resolution, "center")
        found = faces.detector().detect(picture, where.box, resolution / picture.width)
        centre = (x + paste / 2, y + paste / 2)
        assert any(f.box[0] <= centre[0] <= f.box[2] and f.box[1] <= centre[1] <= f.box[3] for f in found), (
            x,
            y,
        )


def test_a_face_cut_by_the_crop_edge_is_still_found():
    astronaut = photo("astronaut")  # face at x 175-275: a crop whose left edge cuts it in half
    crop = (225.0, 0.0, 512.0, 287.0)
    found = faces.detector().detect(astronaut, crop, 128 / 287)
    assert found and found[0].box[0] < 225 < found[0].box[2]


def test_the_model_takes_any_input_of_multiples_of_16():
    """One anchor per output row whatever the input's shape (the anchor grid grows with it)."""
    detector = faces.detector()
    for width, height in [(128, 128), (208, 144), (96, 432)]:
        pixels = np.zeros((1, height, width, 3), dtype=np.float32)
        scores, boxes = detector._run(pixels)
        assert len(scores) == len(boxes) == len(faces._anchors(width, height))
    with pytest.raises(ValueError, match="multiples of 16"):
        detector.detect_window(Image.new("RGB", (100, 128)))


@pytest.mark.parametrize("resolution", [128, 256, 512])
def test_litert_and_opencv_find_the_same_faces(resolution):
    pytest.importorskip("ai_edge_litert")
    astronaut = photo("astronaut")
    crop = (0.0, 0.0, 512.0, 512.0)
    litert = faces.FaceDetector(backend="litert")
    opencv = faces.FaceDetector(backend="opencv")
    assert (litert.backend, opencv.backend) == ("litert", "opencv")
    found = litert.detect(astronaut, crop, resolution / 512)
    again = opencv.detect(astronaut, crop, resolution / 512)
    assert len(found) == len(again) >= 1
    for a, b in zip(found, again, strict=True):
        assert np.allclose(a.box, b.box, atol=0.05) and abs(a.score - b.score) < 1e-3


@pytest.mark.parametrize("resolution", [256, 512])
def test_finer_passes_read_from_the_rendered_output_find_the_same_faces(resolution):
    """Resampling the finer pass from the output (already at about its scale) instead of
    the source changes pixels by rounding only: the same faces, boxes within a few pixels."""
    picture = ImageOps.fit(photo("coffee"), (resolution * 2, resolution * 2))
    head = _head().resize((110, 110), Image.Resampling.LANCZOS)  # a face of ~30 output px at 256
    picture.paste(head, (resolution - 40, resolution - 70))
    where = imageops.placement(picture.size, resolution, "center")
    per_pixel = resolution / (where.box[2] - where.box[0])
    output = imageops.render(picture, where)
    plain = faces.detector().detect(picture, where.box, per_pixel)
    reused = faces.detector().detect(picture, where.box, per_pixel, output=output)
    assert len(plain) == len(reused) >= 1
    for a, b in zip(plain, reused, strict=True):
        assert np.allclose(a.box, b.box, atol=3.0)


def test_without_litert_the_detector_falls_back_to_opencv(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    fallback = faces.FaceDetector()
    assert fallback.backend == "opencv"
    assert fallback.detect(photo("astronaut"), (0.0, 0.0, 512.0, 512.0), 0.25)
    with pytest.raises(ImportError):
        faces.FaceDetector(backend="litert")
