"""A Dataset across the operator ↔ trainer contract: the operator renders the run spec for a
Dataset over a folder of mixed real-world files, ``genforge-trainer prepare`` runs it as the
Job would (pod paths through GENFORGE_PATH_MAP), and the operator turns the termination
message into a ``Ready`` status with the exact counts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from PIL import Image

from genforge_operator.api import parse_resource
from genforge_operator.config import OperatorConfig
from genforge_operator.plan import Catalog
from genforge_operator.reconcile import ANNOTATION_GENERATION, Observed, reconcile_dataset
from genforge_operator.runspec import build_dataset_spec

from .images import faces_found, haar_faces, has_metadata
from .test_prepare import EXPECTED_DROPPED, mixed_folder

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CPU_POOL = {
    "apiVersion": "genforge.dev/v1alpha1",
    "kind": "AcceleratorPool",
    "metadata": {"name": "cpu"},
    "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "0.10", "relativeThroughput": 1.0},
}


def _dataset(spec: dict) -> dict:
    return {
        "apiVersion": "genforge.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "photos", "namespace": "team-a", "uid": "uid-photos", "generation": 1},
        "spec": spec,
    }


def _run_job(tmp_path: Path, body: dict) -> tuple[int, dict, dict]:
    """What the Job's pod does, locally: returns (exit code, termination message, run spec)."""
    document = build_dataset_spec(parse_resource(body), OperatorConfig())
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "run.json").write_text(json.dumps(document))
    termination = tmp_path / "termination-log"
    env = {
        "PATH": "/usr/bin:/bin",
        "GENFORGE_PATH_MAP": json.dumps(
            {"/etc/genforge": str(tmp_path / "etc"), "/data": str(tmp_path / "data")}
        ),
        "GENFORGE_TERMINATION_LOG": str(termination),
        "GENFORGE_PREPARE_WORKERS": "2",
        "PYTHONPATH": ":".join(sys.path),
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
    assert termination.exists(), proc.stderr
    return proc.returncode, json.loads(termination.read_text()), document


def _reconcile(body: dict, exit_code: int, message: dict) -> dict:
    dataset = parse_resource(body)
    job = {
        "metadata": {"name": "gf-ds-photos", "annotations": {ANNOTATION_GENERATION: "1"}},
        "spec": {"suspend": False},
        "status": {
            "conditions": [
                {
                    "type": "Complete" if exit_code == 0 else "Failed",
                    "status": "True",
                    "reason": "",
                    "message": "",
                }
            ]
        },
    }
    pod = {
        "metadata": {"name": "gf-ds-photos-x"},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "startedAt": "2026-11-27T11:59:00Z",
                            "finishedAt": "2026-11-27T11:59:30Z",
                            "message": json.dumps(message),
                        }
                    },
                }
            ],
        },
    }
    observed = Observed(
        resource=dataset,
        body_status={"phase": "Running", "job": "gf-ds-photos"},
        catalog=Catalog(pools={"cpu": parse_resource(CPU_POOL)}),
        job=job,
        pods=[pod],
        now=NOW,
    )
    return reconcile_dataset(observed, OperatorConfig()).status


def test_mixed_real_world_folder_ends_ready_with_exact_counts(tmp_path):
    mixed_folder(tmp_path / "data" / "raw" / "photos")
    body = _dataset(
        {
            "source": {"uri": "file:///data/raw/photos"},
            "preparation": {"resolution": 256, "crop": "center", "minResolution": 32, "dedupe": True},
            "privacy": {"blurFaces": True, "stripMetadata": True, "redactCaptions": True},
            "license": {"allowed": ["cc0-1.0", "cc-by-4.0"], "requireLicense": True},
        }
    )
    code, message, document = _run_job(tmp_path, body)
    assert code == 0, message
    assert message["items"] == {"total": 15, "kept": 6, "dropped": EXPECTED_DROPPED}
    assert message["redactions"] == {"email": 1, "ip": 1, "phone": 1}

    status = _reconcile(body, code, message)
    assert status["phase"] == "Ready"
    assert status["items"] == message["items"]
    assert status["contentHash"] == message["contentHash"] and status["bytes"] == message["bytes"]
    assert status["uri"] == document["output"]["uri"]

    # the prepared dataset, where the pod wrote it (mapped): no metadata, the face blurred
    out = tmp_path / "data" / document["output"]["uri"].removeprefix("file:///data/")
    images = sorted((out / "images").iterdir())
    assert len(images) == 6
    assert all(has_metadata(p.read_bytes()) == [] for p in images)
    for path in images:  # the astronaut's face was found and blurred; none is left to find
        picture = Image.open(path).convert("RGB")
        assert faces_found(picture) == [] and haar_faces(picture) == [], path.name


def test_all_dropped_ends_failed_with_the_trainers_reason(tmp_path):
    (tmp_path / "data" / "raw" / "empty").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "empty" / "x.jpg").write_bytes(b"not a jpeg")
    body = _dataset({"source": {"uri": "file:///data/raw/empty"}, "preparation": {"resolution": 32}})
    code, message, _ = _run_job(tmp_path, body)
    assert code == 3 and message["reason"] == "DataError"
    status = _reconcile(body, code, message)
    assert status["phase"] == "Failed"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DataError" and "corrupt=1" in ready["message"]


@pytest.mark.parametrize("example", ["dataset.yaml"])
def test_example_dataset_prepares(tmp_path, example):
    body = yaml.safe_load((ROOT / "examples" / example).read_text())
    body["metadata"].update({"namespace": "default", "uid": "uid-example", "generation": 1})
    code, message, _ = _run_job(tmp_path, body)
    assert code == 0, message
    assert message["items"]["total"] == message["items"]["kept"] + sum(message["items"]["dropped"].values())
    assert _reconcile(body, code, message)["phase"] == "Ready"
