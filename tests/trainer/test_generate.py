"""`genforge generate --uri` (issue 17 item 1, the offline half): PNGs + samples.jsonl from a
trained model folder, image i reproducible from seed+i, clear errors for wrong inputs."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from genforge_operator.cli import main  # noqa: E402


def _generate(*args: str) -> int:
    return main(["generate", *args, "--steps", "2", "--device", "cpu"])


def test_generate_writes_images_and_records_and_is_reproducible_per_image(tmp_path, base_model, capsys):
    assert _generate("--uri", base_model, "-n", "3", "--seed", "7", "-o", str(tmp_path / "a")) == 0
    records = [json.loads(line) for line in (tmp_path / "a/samples.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["sample-0000.png", "sample-0001.png", "sample-0002.png"]
    assert [r["seed"] for r in records] == [7, 8, 9] and all(r["steps"] == 2 for r in records)
    labels = [r["label"] for r in records]
    assert all(labels) and len(set(labels)) > 1  # a class-conditional model: its labels in turn
    with Image.open(tmp_path / "a/sample-0001.png") as image:
        assert image.size == (16, 16)
        first = image.tobytes()
    # Image 1 alone, from its own seed and label: the same pixels.
    assert _generate("--uri", base_model, "-n", "1", "--seed", "8", "--label", labels[1],
                     "-o", str(tmp_path / "b")) == 0
    with Image.open(tmp_path / "b/sample-0000.png") as image:
        assert image.tobytes() == first
    assert "wrote 1 images" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--label", "no-such-label"], "is not one the model knows"),
    (["--prompt", "a red square"], "takes --label, not --prompt"),
])
def test_wrong_inputs_fail_with_a_clear_message(tmp_path, base_model, capsys, args, message):
    assert _generate("--uri", base_model, "-n", "1", *args, "-o", str(tmp_path)) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "samples.jsonl").exists()


def test_a_missing_folder_and_a_missing_choice_are_refused(tmp_path, capsys):
    assert _generate("--uri", f"file://{tmp_path}/nothing", "-o", str(tmp_path / "o")) == 1
    assert "model folder not found" in capsys.readouterr().err
    assert _generate("-o", str(tmp_path / "o")) == 2
    assert "give MODEL[:VERSION] or --uri" in capsys.readouterr().err


def test_a_model_version_is_resolved_in_the_cluster_like_a_finetunes_base(tmp_path, monkeypatch):
    """MODEL[:VERSION]: pinned, else promoted, else latest; an adapter version → its full model + adapters."""
    import genforge_trainer.generate as trainer_generate
    from genforge_operator import kube

    versions = [
        {"name": "v1", "source": {"kind": "TrainingRun", "name": "r"}, "uri": "file:///data/v1/model",
         "createdAt": "2026-01-01T00:00:00Z", "format": "model"},
        {"name": "v2", "source": {"kind": "FineTune", "name": "f"}, "uri": "file:///data/v2/adapter",
         "createdAt": "2026-01-02T00:00:00Z", "format": "lora-adapter", "method": "lora", "baseVersion": "v1"},
    ]
    body = {"apiVersion": "genforge.dev/v1alpha1", "kind": "GenModel",
            "metadata": {"name": "shapes", "namespace": "team-a", "uid": "u", "generation": 1},
            "spec": {"architecture": "unet2d-ddpm"}, "status": {"versions": versions, "latest": "v2", "promoted": "v1"}}

    class FakeKube:
        def get(self, kind, namespace, name):
            return body if (kind, namespace, name) == ("GenModel", "team-a", "shapes") else None

    calls = []
    monkeypatch.setattr(kube.Kube, "from_env", classmethod(lambda cls: FakeKube()))
    monkeypatch.setattr(trainer_generate, "generate", lambda uri, out, **kw: calls.append((uri, kw)) or [])
    assert main(["generate", "shapes", "-N", "team-a", "-o", str(tmp_path)]) == 0           # promoted: v1
    assert main(["generate", "shapes:v2", "-N", "team-a", "-o", str(tmp_path)]) == 0        # an adapter
    assert [(uri, kw["adapters"], kw["version"]) for uri, kw in calls] == [
        ("file:///data/v1/model", (), "v1"), ("file:///data/v1/model", ("file:///data/v2/adapter",), "v2")]
    assert main(["generate", "shapes:v9", "-N", "team-a", "-o", str(tmp_path)]) == 1
    assert main(["generate", "other", "-N", "team-a", "-o", str(tmp_path)]) == 1


def test_a_stable_diffusion_folder_generates_from_prompts(tmp_path, capsys):
    """stable-diffusion artifacts take --prompt (text-conditioned), and refuse --label."""
    from .tiny_sd import build_tiny_stable_diffusion

    sd = build_tiny_stable_diffusion(tmp_path / "sd")
    assert _generate("--uri", sd, "-n", "2", "--prompt", "a red circle", "--seed", "3",
                     "-o", str(tmp_path / "a")) == 0
    records = [json.loads(line) for line in (tmp_path / "a/samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a red circle", "a red circle"] and records[0]["label"] is None
    assert [r["seed"] for r in records] == [3, 4]
    with Image.open(tmp_path / "a/sample-0001.png") as image:
        assert image.size == (16, 16)
        first = image.tobytes()
    assert _generate("--uri", sd, "-n", "1", "--prompt", "a red circle", "--seed", "4",
                     "-o", str(tmp_path / "b")) == 0
    with Image.open(tmp_path / "b/sample-0000.png") as image:
        assert image.tobytes() == first  # image i from seed+i, alone
    assert _generate("--uri", sd, "-n", "1", "--label", "circle", "-o", str(tmp_path / "c")) == 1
    assert "takes --prompt, not --label" in capsys.readouterr().err
