"""Every fine-tune method runs on a tiny class-conditional base and leaves its artifact."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.exitcodes import DataError  # noqa: E402
from genforge_trainer.methods import load_lora_adapter, merge_lora  # noqa: E402
from genforge_trainer.models import load_or_build, load_pretrained, merge_adapters  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402

from .datasets import shapes  # noqa: E402
from .test_training import RecordingReporter, tiny_run  # noqa: E402

pytestmark = pytest.mark.torch


def finetune(tmp_path, dataset_uri, base_uri, method, steps=8, reporter=None, adapters=(), training=None, **blocks):
    doc = tiny_run(
        tmp_path,
        dataset_uri,
        steps=steps,
        command="finetune",
        model={"baseUri": base_uri, "baseAdapters": list(adapters)},
        finetune={"method": method, "baseVersion": "v1", **blocks},
        **({"training": training} if training else {}),
    )
    spec = parse_run_spec(doc)
    return spec, train.run(spec, reporter or ProgressReporter())


def _inputs(spec, label_count):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    return x, torch.tensor([10, 500]), torch.tensor([0, label_count - 1])


def test_full_finetune_changes_the_base_weights(tmp_path, dataset_uri, base):
    base_uri, base_spec = base
    spec, result = finetune(tmp_path, dataset_uri, base_uri, "full")
    tuned = load_pretrained(result["artifact"], spec.model).denoiser.state_dict()
    original = load_pretrained(base_uri, base_spec.model).denoiser.state_dict()
    assert result["artifact"].endswith("/out/model")
    assert any(not torch.equal(tuned[k], original[k]) for k in tuned)


def test_lora_writes_a_small_adapter_that_round_trips_and_merges(tmp_path, dataset_uri, base):
    base_uri, base_spec = base
    spec, result = finetune(
        tmp_path, dataset_uri, base_uri, "lora", lora={"rank": 4, "alpha": 8, "merge": True}
    )
    adapter = tmp_path / "out/adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["target_modules"]
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    model_bytes = (tmp_path / "out/model/unet/diffusion_pytorch_model.safetensors").stat().st_size
    assert adapter_bytes < model_bytes / 5
    assert result["adapter"] == f"file://{adapter}" and result["artifact"].endswith("/out/model")

    base_model = load_pretrained(base_uri, base_spec.model)
    x, t, y = _inputs(spec, len(base_model.labels))
    with torch.no_grad():
        plain = base_model.denoiser(x, t, class_labels=y).sample
        adapted_net = load_lora_adapter(
            load_pretrained(base_uri, base_spec.model).denoiser, result["adapter"]
        )
        adapted = adapted_net(x, t, class_labels=y).sample
        merged = load_pretrained(result["artifact"], spec.model).denoiser(x, t, class_labels=y).sample
        merged_here = merge_lora(adapted_net)(x, t, class_labels=y).sample
    assert not torch.allclose(plain, adapted)  # the adapter learned something
    assert torch.allclose(adapted, merged, atol=1e-5) and torch.allclose(adapted, merged_here, atol=1e-5)


def test_finetune_from_a_lora_adapter_version_merges_it_into_its_base_first(tmp_path, dataset_uri, base):
    """A GenModel version that is an adapter (lora without merge) is a valid base: the run spec
    names the model it was trained on (``baseUri``) and the adapters (``baseAdapters``)."""
    base_uri, base_spec = base
    _, first = finetune(tmp_path / "v2", dataset_uri, base_uri, "lora", lora={"rank": 4, "alpha": 8})
    adapter = first["artifact"]
    assert adapter == first["adapter"] and adapter.endswith("/v2/out/adapter")

    # The adapter folder alone is not a model, and says so.
    with pytest.raises(DataError, match="is a LoRA adapter, not a model"):
        load_pretrained(adapter, base_spec.model)

    # baseUri + baseAdapters: the adapted weights, merged (no peft wrappers left).
    spec, second = finetune(
        tmp_path / "v3",
        dataset_uri,
        base_uri,
        "lora",
        steps=4,
        adapters=[adapter],
        lora={"rank": 4, "alpha": 8},
    )
    assert spec.model.base_adapters == (adapter,)
    start = load_or_build(spec.model, [])
    assert not any("lora_" in name for name, _ in start.denoiser.named_parameters())
    plain = load_pretrained(base_uri, base_spec.model)
    x, t, y = _inputs(spec, len(plain.labels))
    with torch.no_grad():
        expected = load_lora_adapter(load_pretrained(base_uri, base_spec.model).denoiser, adapter)(
            x, t, class_labels=y
        ).sample
        assert torch.allclose(start.denoiser(x, t, class_labels=y).sample, expected, atol=1e-5)
        assert not torch.allclose(plain.denoiser(x, t, class_labels=y).sample, expected)

    # The second fine-tune (a LoRA on the adapter version) ran and left its own adapter; a
    # third run can start from it through both adapters, oldest first.
    assert second["artifact"].endswith("/v3/out/adapter") and math.isfinite(second["loss"])
    _, third = finetune(
        tmp_path / "v4", dataset_uri, base_uri, "full", steps=2, adapters=[adapter, second["artifact"]]
    )
    tuned = load_pretrained(third["artifact"], spec.model)
    assert tuned.labels == plain.labels

    # A folder that is not an adapter, given as one, is a data error (exit code 3), not a crash.
    with pytest.raises(DataError, match="is not a LoRA adapter folder"):
        merge_adapters(load_pretrained(base_uri, base_spec.model), [base_uri])


def test_embedding_learns_one_new_class_row_and_nothing_else(tmp_path, dataset_uri, base):
    base_uri, base_spec = base
    spec, result = finetune(
        tmp_path, dataset_uri, base_uri, "embedding", embedding={"concept": "my-shape", "initializer": "star"}
    )
    original = load_pretrained(base_uri, base_spec.model)
    tuned = load_pretrained(result["artifact"], spec.model)
    assert tuned.labels == [*original.labels, "my-shape"]
    before, after = original.denoiser.state_dict(), tuned.denoiser.state_dict()
    n = len(original.labels)
    for key, value in before.items():
        if key == "class_embedding.weight":
            assert torch.equal(after[key][:n], value)  # existing rows bit-identical
            star = original.labels.index("star")
            assert not torch.equal(after[key][n], value[star])  # the new row moved from its initializer
        else:
            assert torch.equal(after[key], value), key

    from safetensors.torch import load_file

    learned = load_file(str(tmp_path / "out/embedding/learned_embeds.safetensors"))
    assert torch.equal(learned["my-shape"], after["class_embedding.weight"][n])


def test_dreambooth_trains_on_instance_and_generated_class_images(tmp_path, dataset_uri, base):
    base_uri, _ = base
    instance = shapes(tmp_path / "instance", count=8, size=16, only=("star",))
    losses = {}
    for snr_gamma in (None, 5.0):  # the same seeds, batches and noise: only the weighting differs
        spec, result = finetune(
            tmp_path / str(snr_gamma),
            instance,
            base_uri,
            "dreambooth",
            steps=6,
            training={"snrGamma": snr_gamma} if snr_gamma else None,
            dreambooth={
                "instancePrompt": "sks-star",
                "classPrompt": "star",
                "priorLossWeight": 1.0,
                "numClassImages": 4,
            },
        )
        tuned = load_pretrained(result["artifact"], spec.model)
        assert "sks-star" in tuned.labels
        assert math.isfinite(result["loss"])
        losses[snr_gamma] = result["loss"]
    assert losses[None] != losses[5.0]  # training.snrGamma reaches DreamBooth's loss


def test_preference_dpo_loss_starts_at_ln2_and_falls(tmp_path, dataset_uri, base):
    base_uri, _ = base
    # Thumbs up for circles, thumbs down for squares, both asked for as "circle".
    data = tmp_path / "feedback"
    circles = shapes(data / "circles", count=8, size=16, only=("circle",)).removeprefix("file://")
    squares = shapes(data / "squares", count=8, size=16, only=("square",)).removeprefix("file://")
    # `shapes(only=…)` keeps the circles (squares) among 64 generated items: up to 8 of each.
    ups = sorted(p.name for p in (data / "circles/images").glob("*.png"))
    downs = sorted(p.name for p in (data / "squares/images").glob("*.png"))
    assert circles and squares and len(ups) >= 4 and len(downs) >= 4
    lines = [{"label": "circle", "image": f"circles/images/{name}", "rating": "up"} for name in ups]
    lines += [{"label": "circle", "image": f"squares/images/{name}", "rating": "down"} for name in downs]
    (data / "feedback.jsonl").write_text("\n".join(json.dumps(line) for line in lines))

    reporter = RecordingReporter()
    doc_blocks = {"preference": {"feedbackUri": f"file://{data}/feedback.jsonl", "beta": 2000.0}}
    spec = parse_run_spec(
        tiny_run(
            tmp_path,
            dataset_uri,
            steps=20,
            command="finetune",
            model={"baseUri": base_uri},
            training={"logEverySteps": 1, "learningRate": 1e-3},
            finetune={"method": "preference", **doc_blocks},
        )
    )
    result = train.run(spec, reporter)
    # Model == reference at the start; beta=2000 amplifies float rounding to ~1e-6.
    assert reporter.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    first, last = sum(reporter.losses[:5]) / 5, sum(reporter.losses[-5:]) / 5
    assert last < first, reporter.losses
    assert result["artifact"].endswith("/out/model")


def test_feedback_journal_folds_per_image_and_rater_and_ignores_a_torn_last_line(tmp_path):
    """The journal `genforge review` writes is the preference method's input (issue 17)."""
    from genforge_operator.review.journal import Journal
    from genforge_trainer.methods import read_feedback

    data = tmp_path / "fb"
    shapes(data / "imgs", count=4, size=16)
    journal = Journal(data / "ratings.jsonl")
    images = [f"imgs/images/{i:06d}.png" for i in range(4)]
    journal.rate(images[0], "up", rater="ann", label="x")
    journal.rate(images[1], "down", rater="ann", label="x")
    journal.rate(images[2], "up", rater="ann", label="x")
    journal.undo(images[2], rater="ann")                     # withdrawn
    journal.rate(images[3], "up", rater="ann", label="x")
    journal.rate(images[3], "down", rater="ann", label="x")  # changed: now a second "down"
    with open(data / "ratings.jsonl", "ab") as f:
        f.write(b'{"image": "imgs/images/000000.png", "rat')   # torn by a crash
    pairs = read_feedback(f"file://{data}/ratings.jsonl", 16)
    assert len(pairs) == 2  # image 0 (up) × images 1 and 3 (down)
    assert pairs.labels == ["x", "x"]
