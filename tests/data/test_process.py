"""One item through the worker: each filter and each drop reason, as a table."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from genforge_trainer.data.process import Settings, process_item
from genforge_trainer.data.sources import open_source

from .images import encode, gps_exif, jpeg, png, png_header_only, textured, write

GOOD = jpeg(textured((120, 90)))
LICENSED = json.dumps({"license": "CC-BY-4.0", "caption": "a picture"})


def _one(tmp_path: Path, name: str, data: bytes | str, settings: Settings, sidecar: str | None = LICENSED):
    files: dict[str, bytes | str] = {name: data}
    if sidecar is not None:
        files[Path(name).stem + ".json"] = sidecar
    write(tmp_path, files)
    with open_source(f"file://{tmp_path}") as source:
        (ref,) = source.items
        return process_item(ref, settings)


CASES = [
    # id, file name, bytes, settings, sidecar, (reason, detail)
    ("good-jpeg", "a.jpg", GOOD, Settings(), LICENSED, (None, None)),
    ("good-png", "a.png", png(textured((70, 70))), Settings(), LICENSED, (None, None)),
    ("good-webp", "a.webp", encode(textured(), "WEBP"), Settings(), LICENSED, (None, None)),
    (
        "corrupt-bytes",
        "a.jpg",
        b"\xff\xd8\xff\xe0" + b"\x13" * 500,
        Settings(),
        LICENSED,
        ("corrupt", "unreadable"),
    ),
    ("truncated", "a.jpg", GOOD[: len(GOOD) // 2], Settings(), LICENSED, ("corrupt", "truncated")),
    ("not-an-image", "a.png", "just some text", Settings(), LICENSED, ("corrupt", "notAnImage")),
    ("empty-file", "a.jpg", b"", Settings(), LICENSED, ("corrupt", "empty")),
    ("gif", "a.gif", encode(textured(), "GIF"), Settings(), LICENSED, ("corrupt", "unsupportedFormat")),
    (
        "decompression-bomb",
        "a.png",
        png_header_only(40000, 40000),
        Settings(),
        LICENSED,
        ("corrupt", "decompressionBomb"),
    ),
    (
        "bomb-under-a-lower-limit",
        "a.png",
        png(textured((300, 300))),
        Settings(max_image_pixels=50_000),
        LICENSED,
        ("corrupt", "decompressionBomb"),
    ),
    (
        "tiny",
        "a.png",
        png(textured((16, 16))),
        Settings(min_resolution=32),
        LICENSED,
        ("tooSmall", "tooSmall"),
    ),
    (
        "small-side-counts",
        "a.png",
        png(textured((400, 20))),
        Settings(min_resolution=32),
        LICENSED,
        ("tooSmall", "tooSmall"),
    ),
    ("exactly-min", "a.png", png(textured((32, 32))), Settings(min_resolution=32), LICENSED, (None, None)),
    ("unlicensed", "a.jpg", GOOD, Settings(require_license=True), None, ("unlicensed", "noLicense")),
    (
        "licence-unknown",
        "a.jpg",
        GOOD,
        Settings(require_license=True),
        json.dumps({"license": "unknown"}),
        ("unlicensed", "noLicense"),
    ),
    ("unlicensed-allowed-when-not-required", "a.jpg", GOOD, Settings(), None, (None, None)),
    (
        "licence-not-allowed",
        "a.jpg",
        GOOD,
        Settings(allowed_licenses=("cc0-1.0",)),
        json.dumps({"license": "all-rights-reserved"}),
        ("licenseNotAllowed", "all-rights-reserved"),
    ),
    (
        "licence-normalised",
        "a.jpg",
        GOOD,
        Settings(allowed_licenses=("cc-by-4.0",)),
        json.dumps({"license": "CC BY 4.0"}),
        (None, None),
    ),
    (
        "licence-checked-before-bytes",
        "a.jpg",
        b"garbage",
        Settings(require_license=True),
        None,
        ("unlicensed", "noLicense"),
    ),
]


@pytest.mark.parametrize(
    "name,data,settings,sidecar,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_drop_reasons(tmp_path, name, data, settings, sidecar, expected):
    outcome = _one(tmp_path, name, data, settings, sidecar)
    assert (outcome.reason, outcome.detail) == expected, outcome.message
    if expected[0] is None:
        image = Image.open(io.BytesIO(outcome.png))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (settings.resolution,) * 2
    else:
        assert outcome.png is None


def test_kept_item_carries_licence_source_caption_and_hash(tmp_path):
    sidecar = json.dumps(
        {
            "license": "CC0",
            "caption": "by jo@example.com",
            "label": "cat",
            "source": "https://photos.example/1?token=abc",
            "author": "Jo",
        }
    )
    outcome = _one(tmp_path, "cat.jpg", GOOD, Settings(), sidecar)
    assert outcome.kept
    assert outcome.license == "cc0-1.0" and outcome.label == "cat" and outcome.attribution == "Jo"
    assert outcome.caption == "by [EMAIL]" and outcome.redactions == {"email": 1}
    assert outcome.source == "https://photos.example/1?REDACTED"
    assert len(outcome.sha256) == 64


def test_metadata_is_stripped_by_default_and_kept_on_request(tmp_path):
    data = jpeg(textured((100, 80)), exif=gps_exif())
    stripped = _one(tmp_path / "a", "a.jpg", data, Settings())
    kept = _one(tmp_path / "b", "a.jpg", data, Settings(strip_metadata=False))
    assert not Image.open(io.BytesIO(stripped.png)).getexif()
    assert b"TestCam" not in stripped.png
    assert Image.open(io.BytesIO(kept.png)).getexif().get(0x010F) == "TestCam"


def test_crop_none_keeps_the_aspect_ratio(tmp_path):
    outcome = _one(tmp_path, "wide.png", png(textured((200, 100))), Settings(resolution=32, crop="none"))
    assert (outcome.width, outcome.height) == (64, 32)


def test_random_crop_is_a_function_of_the_item(tmp_path):
    data = png(textured((300, 100), seed=5))
    first = _one(tmp_path / "a", "x.png", data, Settings(resolution=32, crop="random"))
    second = _one(tmp_path / "b", "x.png", data, Settings(resolution=32, crop="random"))
    assert first.sha256 == second.sha256


def test_an_unexpected_error_drops_only_that_item(tmp_path, monkeypatch):
    from genforge_trainer.data import imageops

    def broken(*args, **kwargs):
        raise ValueError("a codec bug")

    monkeypatch.setattr(imageops, "render", broken)
    outcome = _one(tmp_path, "a.jpg", GOOD, Settings())
    assert (outcome.reason, outcome.detail) == ("corrupt", "processingError")
    assert "a codec bug" in outcome.message


@pytest.mark.parametrize("strip_metadata", [True, False], ids=["metadata-stripped", "metadata-kept"])
def test_a_sideways_stored_portrait_comes_out_upright_with_its_face_blurred(tmp_path, strip_metadata):
    """A phone portrait stored sideways with EXIF orientation 6: the output is upright and the face
    blurred whether metadata is stripped or kept (keeping it once skipped the rotation: the
    orientation tag was popped from the image's own EXIF before decoding applied it)."""
    import numpy as np

    from .images import faces_found, photo

    upright = photo("astronaut").crop((96, 0, 416, 480))  # 320x480 portrait, her face near the top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways sensor wrote; tag 6 undoes it
    data = jpeg(stored, exif=gps_exif(orientation=6), quality=95)
    settings = Settings(resolution=128, blur_faces=True, strip_metadata=strip_metadata)
    outcome = _one(tmp_path, "portrait.jpg", data, settings)
    assert outcome.kept, outcome
    output = Image.open(io.BytesIO(outcome.png)).convert("RGB")
    reference = _one(tmp_path / "upright", "portrait.jpg", jpeg(upright, quality=95),
                     Settings(resolution=128, blur_faces=False))
    upright_out = np.asarray(Image.open(io.BytesIO(reference.png)).convert("RGB"), dtype=float)
    got = np.asarray(output, dtype=float)
    bottom = slice(80, 128)  # below the face: untouched by the blur, so it must match the upright image
    assert np.abs(got[bottom] - upright_out[bottom]).mean() < 12, "the output is not upright"
    assert faces_found(output) == [], "the face was not blurred"
    assert faces_found(Image.fromarray(upright_out.astype(np.uint8))), "the reference shows the face"
    kept_exif = Image.open(io.BytesIO(outcome.png)).getexif()
    if strip_metadata:
        assert not kept_exif
    else:
        assert kept_exif.get(0x010F) == "TestCam" and 0x0112 not in kept_exif
