"""``genforge_trainer.data.prepare.run`` end to end: a folder of mixed real-world files in, a
prepared dataset with exact counts, no metadata, blurred faces and a reproducible hash out."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genforge_trainer.config import parse_run_spec
from genforge_trainer.data import imageops
from genforge_trainer.data.prepare import prepare, run
from genforge_trainer.data.process import Settings
from genforge_trainer.exitcodes import ConfigError, DataError
from genforge_trainer.progress import ProgressReporter

from .images import (
    encode,
    faces_found,
    gps_exif,
    haar_faces,
    has_metadata,
    jpeg,
    photo,
    png,
    png_header_only,
    textured,
    write,
)

RESOLUTION = 256


def mixed_folder(directory: Path) -> Path:
    """Good photos (one with a face and GPS EXIF, one rotated), and one of every bad kind."""
    astronaut = photo("astronaut")
    coffee = photo("coffee")
    files: dict[str, bytes | str] = {
        "good/astronaut.jpg": jpeg(astronaut, exif=gps_exif(), quality=92),
        "good/astronaut.txt": "Eileen at 10.0.0.7, mail eileen@nasa.example",
        "good/coffee.jpg": jpeg(coffee, exif=gps_exif()),
        "good/chelsea.png": png(photo("chelsea")),
        "good/rocket.webp": encode(photo("rocket"), "WEBP", quality=90),
        "good/hubble.jpg": jpeg(photo("hubble_deep_field")),
        "good/rotated.jpg": jpeg(textured((400, 300), seed=9), exif=gps_exif(orientation=6)),
        "bad/corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
        "bad/truncated.jpg": jpeg(textured((640, 480), seed=1))[:3000],
        "bad/notes.png": "this is not a picture",
        "bad/bomb.png": png_header_only(50000, 50000),
        "bad/anim.gif": encode(textured(seed=2), "GIF"),
        "bad/tiny.png": png(textured((20, 20), seed=3)),
        "more/coffee-small.jpg": jpeg(coffee.resize((300, 200)), quality=60),
        "licence/unlicensed.jpg": jpeg(textured((300, 300), seed=4)),
        "licence/proprietary.jpg": jpeg(textured((300, 300), seed=5)),
        "README.md": "files of all sorts",
    }
    licensed = [n for n in files if n.endswith((".jpg", ".png", ".webp", ".gif")) and "unlicensed" not in n]
    table = [{"file_name": n, "license": "CC-BY-4.0"} for n in licensed]
    for row in table:
        if row["file_name"] == "licence/proprietary.jpg":
            row["license"] = "proprietary"
        if row["file_name"] == "good/coffee.jpg":
            row["caption"] = "coffee, call +1 (555) 123-4567"
    files["metadata.jsonl"] = "".join(json.dumps(r) + "\n" for r in table)
    return write(directory, files)


MIXED_SETTINGS = Settings(
    resolution=RESOLUTION,
    min_resolution=32,
    dedupe=True,
    blur_faces=True,
    strip_metadata=True,
    redact_captions=True,
    allowed_licenses=("cc0-1.0", "cc-by-4.0"),
    require_license=True,
)
EXPECTED_DROPPED = {
    "corrupt": 5,
    "tooSmall": 1,
    "duplicate": 1,
    "unlicensed": 1,
    "licenseNotAllowed": 1,
    "overLimit": 0,
}


def _read_dataset(out: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((out / "manifest.json").read_text())
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return manifest, lines


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    source = mixed_folder(root / "raw")
    out = root / "prepared"
    manifest = prepare(f"file://{source}", f"file://{out}", MIXED_SETTINGS, workers=1, progress_bar=False)
    return source, out, manifest


def test_mixed_folder_exact_counts(mixed):
    _, out, manifest = mixed
    assert manifest["items"] == {"total": 15, "kept": 6, "dropped": EXPECTED_DROPPED}
    assert manifest["dropDetails"] == {
        "decompressionBomb": 1,
        "noLicense": 1,
        "notAnImage": 2,
        "proprietary": 1,
        "truncated": 1,
        "unsupportedFormat": 1,
    }
    assert json.loads((out / "manifest.json").read_text())["items"] == manifest["items"]


KEPT = [
    "good/astronaut.jpg",
    "good/chelsea.png",
    "good/coffee.jpg",
    "good/hubble.jpg",
    "good/rocket.webp",
    "good/rotated.jpg",
]


def test_mixed_folder_layout_and_metadata_lines(mixed):
    source, out, manifest = mixed
    saved, lines = _read_dataset(out)
    assert saved == manifest
    assert [line["file_name"] for line in lines] == [f"images/{i:06d}.png" for i in range(1, 7)]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(1, 7)]
    assert [line["source"] for line in lines] == [f"file://{source}/{name}" for name in KEPT]
    assert all(line["license"] == "cc-by-4.0" for line in lines)
    assert set(lines[0]) == {"file_name", "caption", "label", "license", "source", "sha256"}
    images = sum((out / line["file_name"]).stat().st_size for line in lines)
    assert manifest["bytes"] == images + (out / "metadata.jsonl").stat().st_size
    for line in lines:
        data = (out / line["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == line["sha256"]
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (RESOLUTION, RESOLUTION)
    assert not list(out.parent.glob(".*staging*")) and not list(out.parent.glob(".*old*"))


def test_mixed_folder_captions_redacted_and_counted(mixed):
    _, out, manifest = mixed
    _, lines = _read_dataset(out)
    captions = {line["source"].rsplit("/", 1)[1]: line["caption"] for line in lines}
    assert captions["astronaut.jpg"] == "Eileen at [IP], mail [EMAIL]"
    assert captions["coffee.jpg"] == "coffee, call [PHONE]"
    assert captions["chelsea.png"] is None
    assert manifest["redactions"] == {"email": 1, "ip": 1, "phone": 1}


def test_mixed_folder_outputs_carry_no_metadata(mixed):
    source, out, _ = mixed
    assert "exif" in Image.open(source / "good/astronaut.jpg").info  # the input had GPS EXIF
    for path in sorted((out / "images").iterdir()):
        assert has_metadata(path.read_bytes()) == [], path.name


def test_mixed_folder_rotated_photo_is_upright(mixed):
    source, out, _ = mixed
    # stored landscape 400x300 with orientation 6: shown as portrait; the centre crop of the
    # portrait picture equals the rotated source's centre crop
    shown = Image.open(source / "good/rotated.jpg")
    shown = shown.transpose(Image.Transpose.ROTATE_270).convert("RGB")
    where = imageops.placement(shown.size, RESOLUTION, "center")
    expected = np.asarray(imageops.render(shown, where), dtype=float)
    actual = np.asarray(
        Image.open(out / "images" / f"{KEPT.index('good/rotated.jpg') + 1:06d}.png"), dtype=float
    )
    assert np.abs(expected - actual).mean() < 6


def test_mixed_folder_faces_blurred(mixed, tmp_path):
    source, out, manifest = mixed
    astronaut_out = Image.open(out / "images" / "000001.png").convert("RGB")
    # the same photo prepared without face blurring: the detector finds the face there...
    plain = prepare(
        f"file://{source}/good/astronaut.jpg",
        f"file://{tmp_path}/plain",
        Settings(resolution=RESOLUTION),
        workers=1,
        progress_bar=False,
    )
    assert plain["items"]["kept"] == 1
    unblurred = Image.open(tmp_path / "plain" / "images" / "000001.png").convert("RGB")
    found = faces_found(unblurred)
    assert found
    # ...and not in the prepared dataset, where every face region has changed
    assert faces_found(astronaut_out) == [] and haar_faces(astronaut_out) == []
    for box in found:
        box = tuple(round(v) for v in box)
        before = np.asarray(unblurred.crop(box), dtype=float)
        after = np.asarray(astronaut_out.crop(box), dtype=float)
        assert np.abs(before - after).mean() > 15
    assert manifest["faces"]["imagesWithFaces"] >= 1


def test_content_hash_is_deterministic_across_runs_and_worker_counts(tmp_path):
    source = "synthetic://shapes?count=48&size=32&seed=1"
    settings = Settings(resolution=32)
    one = prepare(source, f"file://{tmp_path}/a", settings, workers=1, progress_bar=False)
    two = prepare(source, f"file://{tmp_path}/b", settings, workers=2, progress_bar=False)
    again = prepare(source, f"file://{tmp_path}/a", settings, workers=1, progress_bar=False)
    assert one["contentHash"] == two["contentHash"] == again["contentHash"]
    assert one["contentHash"].startswith("sha256:") and len(one["contentHash"]) == 71
    assert (tmp_path / "a" / "metadata.jsonl").read_bytes() == (
        tmp_path / "b" / "metadata.jsonl"
    ).read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        {"resolution": 24},
        {"crop": "random"},
        {"redact_captions": False},
        {"allowed_licenses": ("cc0-1.0", "mit")},
    ],
    ids=lambda c: next(iter(c)),
)
def test_content_hash_changes_with_settings(tmp_path, change):
    source = "synthetic://shapes?count=8&size=32"
    base = prepare(source, f"file://{tmp_path}/a", Settings(resolution=32), workers=1, progress_bar=False)
    other = prepare(
        source,
        f"file://{tmp_path}/b",
        Settings(**{"resolution": 32, **change}),
        workers=1,
        progress_bar=False,
    )
    assert base["contentHash"] != other["contentHash"]


def test_content_hash_changes_when_an_input_image_changes(tmp_path):
    write(tmp_path / "raw", {"a.png": png(textured(seed=1)), "b.png": png(textured(seed=2))})
    first = prepare(
        f"file://{tmp_path}/raw", f"file://{tmp_path}/o1", Settings(), workers=1, progress_bar=False
    )
    write(tmp_path / "raw", {"b.png": png(textured(seed=3))})
    second = prepare(
        f"file://{tmp_path}/raw", f"file://{tmp_path}/o2", Settings(), workers=1, progress_bar=False
    )
    assert first["contentHash"] != second["contentHash"]


def test_max_items_counts_the_rest_as_over_limit(tmp_path):
    manifest = prepare(
        "synthetic://shapes?count=40&size=16",
        f"file://{tmp_path}/o",
        Settings(resolution=16, max_items=10),
        workers=2,
        progress_bar=False,
    )
    assert manifest["items"]["kept"] == 10
    assert manifest["items"]["dropped"]["overLimit"] == 30
    assert len(list((tmp_path / "o" / "images").iterdir())) == 10


def test_nothing_left_is_a_data_error_and_leaves_the_previous_dataset(tmp_path):
    write(tmp_path / "raw", {"a.png": png(textured((10, 10)))})
    prepare(
        "synthetic://shapes?count=4&size=16",
        f"file://{tmp_path}/out",
        Settings(resolution=16),
        workers=1,
        progress_bar=False,
    )
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="tooSmall=1"):
        prepare(
            f"file://{tmp_path}/raw",
            f"file://{tmp_path}/out",
            Settings(min_resolution=32),
            workers=1,
            progress_bar=False,
        )
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_empty_source_is_a_data_error(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="no images"):
        prepare(f"file://{tmp_path}/raw", f"file://{tmp_path}/out", Settings(), workers=1, progress_bar=False)


def test_output_replacing_the_source_is_refused(tmp_path):
    write(tmp_path / "raw", {"a.png": png()})
    for output in (tmp_path / "raw", tmp_path):
        with pytest.raises(ConfigError, match="would replace the source"):
            prepare(f"file://{tmp_path}/raw", f"file://{output}", Settings(), workers=1, progress_bar=False)


def test_memory_output(tmp_path):
    manifest = prepare(
        "synthetic://shapes?count=4&size=16",
        "memory://gf-prepare-test/ds",
        Settings(resolution=16),
        workers=1,
        progress_bar=False,
    )
    from genforge_trainer import storage

    assert (
        json.loads(storage.read_bytes("memory://gf-prepare-test/ds/manifest.json"))["contentHash"]
        == (manifest["contentHash"])
    )
    assert storage.exists("memory://gf-prepare-test/ds/images/000004.png")
    storage.remove_tree("memory://gf-prepare-test")


def _spec(source: str, output: str, **preparation):
    return parse_run_spec(
        {
            "schemaVersion": "genforge.dev/v1alpha1",
            "command": "prepare",
            "run": {"kind": "Dataset", "namespace": "default", "name": "shapes", "uid": "u"},
            "output": {"uri": output},
            "prepare": {
                "source": {"uri": source},
                "preparation": {
                    "resolution": 32,
                    "crop": "center",
                    "minResolution": 8,
                    "dedupe": True,
                    **preparation,
                },
                "privacy": {"blurFaces": False, "stripMetadata": True, "redactCaptions": True},
                "license": {"allowed": ["cc0-1.0"], "requireLicense": False},
            },
        }
    )


def test_run_returns_the_termination_fields_and_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_PATH_MAP", json.dumps({"/data": str(tmp_path)}))
    reporter = ProgressReporter(phase="prepare")
    result = run(
        _spec("synthetic://shapes?count=30&size=32", "file:///data/datasets/shapes", maxItems=20), reporter
    )
    assert set(result) == {"items", "bytes", "contentHash", "uri", "redactions"}
    assert result["items"]["total"] == 30 and result["items"]["kept"] == 20
    assert result["items"]["dropped"]["overLimit"] == 10
    assert result["uri"] == "file:///data/datasets/shapes"
    assert (tmp_path / "datasets" / "shapes" / "manifest.json").exists()
    progress = reporter.snapshot()
    assert progress["phase"] == "prepare" and progress["step"] == progress["totalSteps"] == 30
    assert len(json.dumps(result)) < 4096


@pytest.mark.parametrize("crop", ["center", "random", "none"])
def test_every_crop_the_crd_allows_is_accepted_by_the_trainer(tmp_path, crop):
    write(tmp_path / "raw", {"wide.png": png(textured((120, 60)))})
    result = run(_spec(f"file://{tmp_path}/raw", f"file://{tmp_path}/out", crop=crop), None)
    size = Image.open(tmp_path / "out" / "images" / "000001.png").size
    assert result["items"]["kept"] == 1
    assert size == ((64, 32) if crop == "none" else (32, 32))


def test_object_store_source_through_fsspec(tmp_path):
    """The code path s3:// and gs:// take (fsspec listing and reads), on fsspec's memory store."""
    from genforge_trainer import storage

    root = "memory://gf-object-store/bucket/raw"
    for name, data in {
        "a.jpg": jpeg(textured(seed=1)),
        "b/c.png": png(textured(seed=2)),
        "b/c.txt": b"see",
        "d.webp": encode(textured(seed=3), "WEBP"),
    }.items():
        storage.write_bytes(f"{root}/{name}", data)
    storage.write_bytes(
        f"{root}/metadata.jsonl", b'{"file_name": "a.jpg", "caption": "ay", "license": "cc0"}\n'
    )
    try:
        manifest = prepare(
            root, f"file://{tmp_path}/out", Settings(resolution=32), workers=2, progress_bar=False
        )
    finally:
        storage.remove_tree("memory://gf-object-store")
    assert manifest["items"]["kept"] == 3
    _, lines = _read_dataset(tmp_path / "out")
    assert [(line["source"], line["caption"]) for line in lines] == [
        (f"{root}/a.jpg", "ay"),
        (f"{root}/b/c.png", "see"),
        (f"{root}/d.webp", None),
    ]
