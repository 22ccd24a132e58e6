"""Hostile dataset files: generated damage on real images (hypothesis) and a folder of
huge files and bombs prepared with bounded memory.

tests/data covers each drop reason once; this adds what only volume and randomness find:
every damaged file is either kept as a valid image at the output resolution or dropped
with a reason and a detail (never an exception, never a hang), and files too large to be
images are refused from their size, without being read into memory.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from data.images import encode, jpeg, png, png_header_only, textured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genforge_trainer.data.imageops import MAX_FILE_BYTES
from genforge_trainer.data.process import DROP_REASONS, Settings, process_item
from genforge_trainer.data.sources import open_source

RESOLUTION = 32
SETTINGS = Settings(resolution=RESOLUTION, min_resolution=16, dedupe=False)
ORIGINALS = {"jpg": jpeg(textured((96, 72))), "png": png(textured((64, 80))), "webp": encode(textured(), "WEBP")}
TALLY: Counter = Counter()


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(ORIGINALS)))
    data = bytearray(ORIGINALS[suffix])
    damage = draw(st.sampled_from(["truncate", "flip", "splice", "garbage", "header-claims", "none"]))
    if damage == "truncate":
        data = data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]
    elif damage == "flip":
        for _ in range(draw(st.integers(min_value=1, max_value=20))):
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[at] = draw(st.integers(min_value=0, max_value=255))
    elif damage == "splice":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=200))
    elif damage == "garbage":
        data = bytearray(data[:8]) + draw(st.binary(max_size=2000))
    elif damage == "header-claims":
        data = bytearray(png_header_only(draw(st.integers(min_value=0, max_value=2**31 - 1)),
                                         draw(st.integers(min_value=0, max_value=2**31 - 1))))
        suffix = "png"
    TALLY[f"damage {damage}"] += 1
    return suffix, bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=damaged())
def test_a_damaged_image_is_kept_whole_or_dropped_with_a_reason(item):
    suffix, data = item
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"item.{suffix}").write_bytes(data)
        with open_source(f"file://{folder}") as source:
            (ref,) = source.items
            outcome = process_item(ref, SETTINGS)
    if outcome.kept:
        image = Image.open(io.BytesIO(outcome.png))
        assert image.size == (RESOLUTION, RESOLUTION) and image.format == "PNG"
        TALLY["kept"] += 1
    else:
        assert outcome.reason in DROP_REASONS and outcome.detail and outcome.png is None, outcome
        assert outcome.detail != "processingError", f"an unexpected error, not a known drop: {outcome.message}"
        TALLY[f"dropped {outcome.reason}/{outcome.detail}"] += 1


def test_tally_shows_every_kind_of_damage_was_tried_and_both_outcomes_seen(capsys):
    """Run after the property test (pytest runs a file top to bottom): it must have exercised
    every kind of damage and seen files kept and files dropped, or it proved less than it says."""
    if not TALLY:
        pytest.skip("run together with test_a_damaged_image_is_kept_whole_or_dropped_with_a_reason")
    with capsys.disabled():
        print(f"\ndamaged-file tally: {dict(sorted(TALLY.items()))}")
    kinds = {"truncate", "flip", "splice", "garbage", "header-claims", "none"}
    assert {k.removeprefix("damage ") for k in TALLY if k.startswith("damage ")} == kinds, TALLY
    assert TALLY["kept"] > 0 and any(k.startswith("dropped ") for k in TALLY), TALLY


PREPARE = textwrap.dedent("""
    import json, resource, sys
    from genforge_trainer.data.prepare import prepare
    from genforge_trainer.data.process import Settings
    manifest = prepare(sys.argv[1], sys.argv[2], Settings(resolution=32, dedupe=False), workers=2,
                       progress_bar=False)
    # This process's own peak (VmHWM restarts at exec; ru_maxrss would carry the forking
    # parent's), and its workers' (their ru_maxrss, in KiB like VmHWM).
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"items": manifest["items"], "details": manifest.get("droppedDetails"),
                      "rss": max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)}))
""")


def test_huge_files_and_bombs_are_dropped_and_counted_with_bounded_memory(tmp_path):
    """Sparse files past the size limit are refused from their size; a pixel bomb from its header.

    Peak RSS of the preparation (its workers included) stays far below what reading one of
    the huge files would take.
    """
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):
        (raw / f"good-{i}.jpg").write_bytes(jpeg(textured((96, 72), seed=i)))
    for i in range(3):
        with open(raw / f"huge-{i}.jpg", "wb") as handle:  # sparse: no disk used
            handle.truncate(MAX_FILE_BYTES + 1 + i)
    (raw / "bomb.png").write_bytes(png_header_only(50000, 50000))
    (raw / "text.png").write_text("not an image")
    (raw / "truncated.jpg").write_bytes(jpeg(textured((96, 72), seed=9))[:500])
    result = subprocess.run([sys.executable, "-c", PREPARE, f"file://{raw}", f"file://{tmp_path}/out"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    peak_mib = report["rss"] / 1024  # the preparation and its workers
    items = report["items"]
    assert items["total"] == 10 and items["kept"] == 4 and items["dropped"]["corrupt"] == 6, report
    print(f"\n10 files (3 of {MAX_FILE_BYTES / 2**20:.0f}+ MiB, a 2.5-gigapixel bomb): kept 4, dropped 6; "
          f"peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < MAX_FILE_BYTES / 2**20, f"peak RSS {peak_mib:.0f} MiB: a huge file was read"
