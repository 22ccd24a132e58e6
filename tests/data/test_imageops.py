"""Image operations: safe decoding, orientation, colour modes, geometry, faces, hashing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from genforge_trainer.data import faces, imageops
from genforge_trainer.data.dedupe import NearDuplicateIndex
from genforge_trainer.data.imageops import Rejected

from .images import encode, faces_found, gps_exif, haar_faces, jpeg, photo, png, png_header_only, textured


@pytest.mark.parametrize(
    "data,detail",
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 50, "notAnImage"),
        (b"hello, this is a text file\n", "notAnImage"),
        (encode(textured(), "GIF"), "notAnImage"),  # a real image, but not an accepted format
        (encode(textured(), "BMP"), "notAnImage"),
        (png_header_only(30000, 30000), "decompressionBomb"),
        (png_header_only(10000, 9000), "decompressionBomb"),
    ],
    ids=["empty", "garbage", "text", "gif", "bmp", "bomb-huge", "bomb-over-limit"],
)
def test_open_rejects_as_corrupt(data, detail):
    with pytest.raises(Rejected) as caught:
        imageops.open_image(data)
    assert (caught.value.reason, caught.value.detail) == ("corrupt", detail)


def test_truncated_jpeg_is_rejected_when_decoding():
    data = jpeg(textured((200, 150)))
    opened = imageops.open_image(data[: len(data) // 2])
    with pytest.raises(Rejected) as caught:
        imageops.decode(opened, 64)
    assert caught.value.reason == "corrupt" and caught.value.detail == "truncated"


@pytest.mark.parametrize(
    "orientation,expected", [(1, (120, 80)), (3, (120, 80)), (6, (80, 120)), (8, (80, 120))]
)
def test_exif_orientation_is_applied(orientation, expected):
    image = Image.new("RGB", (120, 80), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # a red top-left corner as stored
    data = jpeg(image, exif=gps_exif(orientation))
    opened = imageops.open_image(data)
    assert imageops.oriented_size(opened) == expected
    decoded = imageops.decode(opened, 80)
    assert decoded.size == expected and decoded.mode == "RGB"
    corners = {
        1: (0, 0),
        3: (expected[0] - 1, expected[1] - 1),
        6: (expected[0] - 1, 0),
        8: (0, expected[1] - 1),
    }
    r, g, b = decoded.getpixel(
        (
            max(2, min(corners[orientation][0], expected[0] - 3)),
            max(2, min(corners[orientation][1], expected[1] - 3)),
        )
    )
    assert r > 200 and g < 80 and b < 80


def test_jpeg_draft_decodes_at_reduced_size_but_never_below_need():
    big = textured((1600, 1200))
    opened = imageops.open_image(jpeg(big))
    decoded = imageops.decode(opened, 256)
    assert min(decoded.size) >= 256 and decoded.size[0] <= 800  # 1/2 or smaller DCT scale


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda: textured().convert("L")),
        ("RGBA", lambda: Image.new("RGBA", (40, 40), (0, 0, 0, 0))),  # transparent → white
        ("P", lambda: textured().convert("P")),
        ("CMYK", lambda: textured().convert("CMYK")),
        ("I;16", lambda: Image.fromarray(np.full((30, 30), 65535, dtype=np.uint16))),
    ],
)
def test_to_rgb(mode, make):
    image = make()
    out = imageops.to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    if mode in ("RGBA", "I;16"):
        assert out.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    "size,crop,box,out",
    [
        ((200, 100), "center", (50, 0, 150, 100), (64, 64)),
        ((100, 200), "center", (0, 50, 100, 150), (64, 64)),
        ((100, 100), "center", (0, 0, 100, 100), (64, 64)),
        ((200, 100), "none", (0, 0, 200, 100), (128, 64)),
        ((40, 30), "center", (5, 0, 35, 30), (64, 64)),  # upscaled
    ],
)
def test_placement(size, crop, box, out):
    where = imageops.placement(size, 64, crop)
    assert where.box == tuple(float(v) for v in box) and where.size == out


def test_random_crop_is_seeded():
    picks = {imageops.placement((300, 100), 64, "random", np.random.default_rng(s)).box for s in range(20)}
    assert len(picks) > 5
    again = imageops.placement((300, 100), 64, "random", np.random.default_rng(3)).box
    assert again == imageops.placement((300, 100), 64, "random", np.random.default_rng(3)).box


def test_faces_found_in_a_real_photograph_and_anonymised():
    astronaut = photo("astronaut")  # 512x512; her face spans about x 175-275, y 75-180
    where = imageops.placement(astronaut.size, 256, "center")
    found = faces.detector().detect(astronaut, where.box, 256 / 512)
    assert len(found) == 1, found
    x0, y0, x1, y1 = found[0].box
    assert 160 < x0 < 195 and 255 < x1 < 290 and 55 < y0 < 95 and 160 < y1 < 195
    output = imageops.render(astronaut, where)
    regions = [where.to_output(imageops.grow(f.box, 0.25)) for f in found]
    blurred = imageops.anonymise(output, regions)
    assert faces_found(output) and haar_faces(output)
    assert faces_found(blurred) == [] and haar_faces(blurred) == []
    before = np.asarray(output.crop(regions[0]), dtype=float)
    after = np.asarray(blurred.crop(regions[0]), dtype=float)
    assert np.abs(before - after).mean() > 10
    # irreversible: the region's fine detail (Laplacian energy) is gone, not just dimmed
    assert _detail(after) < _detail(before) / 20
    outside = (0, 0, 40, 40)
    assert np.array_equal(np.asarray(output.crop(outside)), np.asarray(blurred.crop(outside)))


def _detail(pixels: np.ndarray) -> float:
    import cv2

    grey = pixels.mean(axis=2).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket", "hubble_deep_field"])
def test_no_faces_in_photographs_without_people(name):
    assert faces_found(photo(name)) == []


@pytest.mark.parametrize(
    "variant",
    [
        lambda im: Image.open(io.BytesIO(encode(im, "JPEG", quality=40))).convert("RGB"),
        lambda im: im.resize((im.width // 2, im.height // 2)),
        lambda im: Image.open(io.BytesIO(encode(im, "WEBP", quality=60))).convert("RGB"),
    ],
    ids=["jpeg-q40", "half-size", "webp"],
)
def test_perceptual_hash_matches_near_duplicates(variant):
    image = photo("coffee")
    index = NearDuplicateIndex()
    index.add(*imageops.perceptual_hash(image), "original")
    assert index.find(*imageops.perceptual_hash(variant(image))) == "original"


@pytest.mark.parametrize("other", ["chelsea", "astronaut", "rocket"])
def test_perceptual_hash_keeps_different_photos_apart(other):
    index = NearDuplicateIndex()
    index.add(*imageops.perceptual_hash(photo("coffee")), "coffee")
    assert index.find(*imageops.perceptual_hash(photo(other))) is None


def test_same_shape_in_another_colour_is_not_a_duplicate():
    red = Image.new("RGB", (64, 64), (250, 250, 250))
    blue = red.copy()
    red.paste((220, 40, 40), (16, 16, 48, 48))
    blue.paste((40, 80, 220), (16, 16, 48, 48))
    index = NearDuplicateIndex()
    index.add(*imageops.perceptual_hash(red), "red")
    assert index.find(*imageops.perceptual_hash(blue)) is None


def test_encoded_png_has_no_metadata():
    data = imageops.encode_png(imageops.to_rgb(Image.open(io.BytesIO(jpeg(exif=gps_exif())))))
    reopened = Image.open(io.BytesIO(data))
    assert reopened.format == "PNG" and not reopened.getexif() and "exif" not in reopened.info


def _chunks(data: bytes) -> list[bytes]:
    import struct

    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append(data[at + 4 : at + 8])
        at += 12 + length
    return chunks


@pytest.mark.parametrize("keep_exif", [False, True], ids=["fresh", "kept-exif"])
def test_encoded_png_is_lossless_deterministic_and_only_image_chunks(keep_exif):
    image = photo("coffee").resize((96, 64))
    exif = gps_exif() if keep_exif else None
    data = imageops.encode_png(image, exif=exif)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), np.asarray(image))
    assert set(_chunks(data)) == ({b"IHDR", b"IDAT", b"IEND"} | ({b"eXIf"} if keep_exif else set()))
    assert data == imageops.encode_png(image, exif=exif)


def test_png_round_trip_sizes():
    assert Image.open(io.BytesIO(png(textured((33, 17))))).size == (33, 17)
