"""``genforge-trainer prepare --config`` in a subprocess, as the Dataset's Job runs it
(local mode: pod paths mapped through GENFORGE_PATH_MAP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .images import png, textured, write


def _run_cli(tmp_path, source: str, **prepare_overrides):
    document = {
        "schemaVersion": "genforge.dev/v1alpha1",
        "command": "prepare",
        "run": {"kind": "Dataset", "namespace": "default", "name": "shapes", "uid": "u-1"},
        "output": {"uri": "file:///data/datasets/default/shapes"},
        "prepare": {
            "source": {"uri": source},
            "preparation": {
                "resolution": 32,
                "crop": "center",
                "minResolution": 16,
                "dedupe": True,
                "maxItems": 1000,
            },
            "privacy": {"blurFaces": True, "stripMetadata": True, "redactCaptions": True},
            "license": {"allowed": [], "requireLicense": False},
            **prepare_overrides,
        },
    }
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "run.json").write_text(json.dumps(document))
    termination = tmp_path / "termination-log"
    env = {
        **os.environ,
        "GENFORGE_PATH_MAP": json.dumps(
            {"/etc/genforge": str(tmp_path / "config"), "/data": str(tmp_path / "data")}
        ),
        "GENFORGE_TERMINATION_LOG": str(termination),
        "GENFORGE_PREPARE_WORKERS": "2",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "genforge_trainer.cli",
            "prepare",
            "--config",
            "/etc/genforge/run.json",
            "--no-serve",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    message = json.loads(termination.read_text()) if termination.exists() else None
    return proc, message


def test_cli_prepare_synthetic(tmp_path):
    proc, message = _run_cli(tmp_path, "synthetic://shapes?count=64&size=32&seed=0")
    assert proc.returncode == 0, proc.stderr
    assert message["outcome"] == "Succeeded"
    assert message["items"]["total"] == 64
    assert message["items"]["kept"] + sum(message["items"]["dropped"].values()) == 64
    assert set(message["items"]["dropped"]) == {
        "corrupt",
        "tooSmall",
        "duplicate",
        "unlicensed",
        "licenseNotAllowed",
        "overLimit",
    }
    assert message["uri"] == "file:///data/datasets/default/shapes"
    assert message["contentHash"].startswith("sha256:") and message["bytes"] > 0
    manifest = json.loads((tmp_path / "data/datasets/default/shapes/manifest.json").read_text())
    assert manifest["contentHash"] == message["contentHash"]
    assert "prepare" in proc.stderr  # the progress bar and log lines go to the log


def test_cli_prepare_nothing_left_exits_with_data_error(tmp_path):
    write(tmp_path / "data" / "raw", {"tiny.png": png(textured((8, 8)))})
    proc, message = _run_cli(tmp_path, "file:///data/raw")
    assert proc.returncode == 3, proc.stderr
    assert message["outcome"] == "Failed" and message["reason"] == "DataError"
    assert "tooSmall=1" in message["message"]
    assert not (tmp_path / "data" / "datasets").exists() or not any(
        (tmp_path / "data" / "datasets").rglob("*.png")
    )


def test_cli_prepare_unwritable_output_exits_with_storage_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datasets").write_text("a file where the output directory should go")
    proc, message = _run_cli(tmp_path, "synthetic://shapes?count=4&size=32")
    assert proc.returncode == 4, proc.stderr
    assert message["reason"] == "StorageError"
