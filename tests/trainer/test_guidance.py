"""Classifier-free guidance (issue 21, fourth round): class dropout trains a null class
(GenModel ``config.classDropout``), ``config.guidanceScale`` mixes its prediction into every
sample a class-conditional model draws, and a model without a null class refuses guidance.

Tiny models only; run serially with the other torch tests."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import ModelConfig, ModelSpec, parse_run_spec  # noqa: E402
from genforge_trainer.exitcodes import ConfigError  # noqa: E402
from genforge_trainer.generate import generate  # noqa: E402
from genforge_trainer.methods import drop_classes  # noqa: E402
from genforge_trainer.models import (  # noqa: E402
    build_unet2d,
    check_guidance_config,
    load_pretrained,
    save_model,
)
from genforge_trainer.progress import ProgressReporter  # noqa: E402

from .test_sampling import SIZE, Oracle, oracle_model, targets  # noqa: E402
from .test_training import TINY_MODEL, tiny_run  # noqa: E402

pytestmark = pytest.mark.torch

LABELS = ["circle", "square", "star"]


def tiny_spec(**config) -> ModelSpec:
    return ModelSpec("unet2d-ddpm", 16, config=ModelConfig(block_out_channels=(8, 16), **config))


def randomised(model):
    """Random (not zero-initialised) outputs, so that comparisons mean something."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    model.denoiser.eval()
    return model


# --------------------------------------------------------------------------- training: class dropout


@pytest.mark.parametrize("probability", [0.1, 0.5])
def test_class_dropout_replaces_that_share_of_the_classes_by_the_null_class(probability):
    ids = torch.randint(1, 9, (20000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_classes(ids, probability, torch.Generator().manual_seed(1))
    null = dropped == 0
    assert abs(null.float().mean().item() - probability) < 0.01
    assert torch.equal(dropped[~null], ids[~null])  # the others keep their class
    # the step's generator decides: the same seed drops the same samples
    assert torch.equal(dropped, drop_classes(ids, probability, torch.Generator().manual_seed(1)))


def test_class_dropout_zero_changes_nothing():
    ids = torch.arange(1, 9)
    assert torch.equal(drop_classes(ids, 0.0, torch.Generator().manual_seed(1)), ids)


def test_a_model_with_class_dropout_has_the_null_class_as_row_zero_and_keeps_it_when_saved(tmp_path):
    model = build_unet2d(tiny_spec(class_dropout=0.1), LABELS)
    assert model.null_class and model.denoiser.config.num_class_embeds == len(LABELS) + 1
    assert model.label_ids(["circle", "star"], torch.device("cpu")).tolist() == [1, 3]
    plain = build_unet2d(tiny_spec(), LABELS)
    assert not plain.null_class and plain.denoiser.config.num_class_embeds == len(LABELS)
    assert plain.label_ids(["circle", "star"], torch.device("cpu")).tolist() == [0, 2]

    save_model(model, f"file://{tmp_path}/model")
    assert json.loads((tmp_path / "model/genforge.json").read_text())["nullClass"] is True
    loaded = load_pretrained(f"file://{tmp_path}/model", tiny_spec())
    assert loaded.null_class and loaded.labels == LABELS
    save_model(plain, f"file://{tmp_path}/plain")
    assert "nullClass" not in json.loads((tmp_path / "plain/genforge.json").read_text())
    assert not load_pretrained(f"file://{tmp_path}/plain", tiny_spec()).null_class


GUIDED = {**TINY_MODEL["config"], "classDropout": 0.5, "guidanceScale": 3.0}


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory, dataset_uri):
    """(spec, result) of a tiny run trained with class dropout and evaluated with guidance."""
    doc = tiny_run(tmp_path_factory.mktemp("guided"), dataset_uri, steps=6, model={"config": GUIDED},
                   evaluation={"samples": 4, "metrics": ["loss"]})
    spec = parse_run_spec(doc)
    return spec, train.run(spec, ProgressReporter())


def test_a_training_run_with_class_dropout_trains_the_null_class_and_samples_with_guidance(guided_run):
    spec, result = guided_run
    assert result["metrics"]["guidanceScale"] == 3.0
    model = load_pretrained(result["artifact"], spec.model)
    assert model.null_class
    untrained = build_unet2d(spec.model, model.labels)
    # the null row learned (Adam moves every row that gets a gradient)
    assert not torch.equal(model.denoiser.class_embedding.weight[0], untrained.denoiser.class_embedding.weight[0])


def test_an_embedding_on_a_base_with_a_null_class_keeps_the_null_class_and_every_label_row(tmp_path, dataset_uri,
                                                                                          guided_run):
    """The new concept's row goes after the labels; the null class stays row 0 and unchanged."""
    spec, result = guided_run
    doc = tiny_run(tmp_path, dataset_uri, steps=4, command="finetune",
                   model={"baseUri": result["artifact"], "config": GUIDED},
                   finetune={"method": "embedding", "baseVersion": "v1",
                             "embedding": {"concept": "my-shape", "initializer": "star"}},
                   evaluation={"samples": 2, "metrics": ["loss"]})
    tuned_spec = parse_run_spec(doc)
    tuned = load_pretrained(train.run(tuned_spec, ProgressReporter())["artifact"], tuned_spec.model)
    base = load_pretrained(result["artifact"], spec.model)
    assert tuned.null_class and tuned.labels == [*base.labels, "my-shape"]
    rows = len(base.labels) + 1
    before, after = base.denoiser.class_embedding.weight, tuned.denoiser.class_embedding.weight
    assert after.shape[0] == rows + 1 and torch.equal(after[:rows], before)
    assert tuned.label_row("my-shape") == rows


# --------------------------------------------------------------------------- sampling: the guided prediction


class CountingNet(torch.nn.Module):
    """Wraps a denoiser; records the batch size of every call."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net, self.batches = net, []
        self.config = net.config

    def forward(self, x, t, **kwargs):
        self.batches.append(x.shape[0])
        return self.net(x, t, **kwargs)


def test_guidance_one_is_the_conditional_prediction_and_others_extrapolate_from_the_null_class():
    model = randomised(build_unet2d(tiny_spec(class_dropout=0.1), LABELS))
    net = CountingNet(model.denoiser)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(500)
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        cond = model.denoiser(x, t, class_labels=labels).sample
        uncond = model.denoiser(x, t, class_labels=torch.zeros_like(labels)).sample
        assert (cond - uncond).abs().max() > 1e-3  # the null class predicts something else
        for scale in (1.0, 0.0, 2.5):
            guided = model.guided(net, x, t, labels, scale)
            assert guided.shape == x.shape
            assert torch.allclose(guided, uncond + scale * (cond - uncond), atol=1e-5)
    assert net.batches == [6, 6, 6]  # one forward of twice the batch each


def test_sampling_with_guidance_runs_one_double_batch_per_step_and_guidance_one_changes_nothing():
    model = randomised(build_unet2d(tiny_spec(class_dropout=0.1), LABELS))
    net = CountingNet(model.denoiser)
    labels = ["circle", "square", "star", "circle", "star"]
    guided = model.sample(5, steps=3, generator=torch.Generator().manual_seed(4), labels=labels, denoiser=net,
                          batch_size=4, guidance_scale=2.0)
    assert guided.shape == (5, 3, 16, 16)
    assert net.batches == [8, 8, 8, 2, 2, 2]  # batches of 4 and 1, each doubled, 3 steps
    plain = model.sample(5, steps=3, generator=torch.Generator().manual_seed(4), labels=labels)
    same = model.sample(5, steps=3, generator=torch.Generator().manual_seed(4), labels=labels, guidance_scale=1.0)
    assert torch.equal(plain, same)
    assert (guided - plain).abs().max() > 1e-3


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_perfect_denoiser_with_guidance_samples_the_extrapolated_image(prediction_type):
    """Guidance is linear in the prediction: with an oracle for each class (row 0 the null
    class), DDIM returns ``null + w · (class − null)`` exactly, for every prediction type."""
    model = oracle_model(prediction_type, "linear", LABELS)
    images = targets(len(LABELS) + 1) * 0.25  # |null + 2.5 (class - null)| <= 4 * 0.9 * 0.25 < 1: no clipping
    model.denoiser = Oracle(images, model.noise_scheduler)
    model.null_class = True
    sampled = model.sample(3, steps=7, generator=torch.Generator().manual_seed(1), labels=LABELS,
                           guidance_scale=2.5)
    expected = images[0] + 2.5 * (images[1:] - images[0])
    assert sampled.shape == (3, 3, SIZE, SIZE)
    assert (sampled - expected).abs().max() < 1e-4


# --------------------------------------------------------------------------- refusals


def test_a_model_without_a_null_class_refuses_guidance_with_a_clear_error():
    plain = build_unet2d(tiny_spec(), LABELS)
    with pytest.raises(ConfigError, match="guidanceScale 2 needs a model trained with classDropout > 0"):
        plain.sample(1, steps=2, generator=torch.Generator(), labels=["circle"], guidance_scale=2.0)
    unconditional = build_unet2d(tiny_spec(), [])
    with pytest.raises(ConfigError, match="needs a class-conditional unet2d-ddpm model"):
        unconditional.sample(1, steps=2, generator=torch.Generator(), guidance_scale=2.0)
    with pytest.raises(ConfigError, match="classDropout 0.1 needs a class-conditional model with a null class"):
        check_guidance_config(plain, ModelConfig(class_dropout=0.1))
    with pytest.raises(ConfigError, match="classDropout 0.1 needs a class-conditional model, and this dataset "
                                          "has no labels"):
        build_unet2d(tiny_spec(class_dropout=0.1), [])


def test_a_run_that_asks_guidance_of_a_base_without_a_null_class_fails_before_training(tmp_path, dataset_uri,
                                                                                        base_model):
    config = {**TINY_MODEL["config"], "classDropout": 0.1, "guidanceScale": 2.0}
    doc = tiny_run(tmp_path, dataset_uri, steps=1000, command="finetune",
                   model={"baseUri": base_model, "config": config}, finetune={"method": "full"})
    with pytest.raises(ConfigError, match="needs a class-conditional model with a null class"):
        train.run(parse_run_spec(doc), ProgressReporter())  # 1000 steps would take minutes: it fails first


def test_generate_refuses_guidance_for_a_model_without_a_null_class(tmp_path, base_model):
    with pytest.raises(ConfigError, match="needs a model trained with classDropout > 0"):
        generate(base_model, tmp_path / "out", count=1, steps=2, guidance_scale=2.0, progress=False, device="cpu")
    assert not (tmp_path / "out" / "samples.jsonl").exists()
    with pytest.raises(ConfigError, match=r"--guidance-scale must be in \[1, 20\]"):
        generate(base_model, tmp_path / "out", count=1, steps=2, guidance_scale=0.5, progress=False, device="cpu")


def test_genforge_generate_takes_a_guidance_scale_and_says_why_a_model_cannot_use_it(tmp_path, base_model,
                                                                                     guided_run, capsys):
    from genforge_operator.cli import main

    args = ["-n", "2", "--steps", "2", "--device", "cpu", "--guidance-scale", "2"]
    assert main(["generate", "--uri", base_model, *args, "-o", str(tmp_path / "plain")]) == 1
    assert "--guidance-scale 1" in capsys.readouterr().err
    assert main(["generate", "--uri", guided_run[1]["artifact"], *args, "-o", str(tmp_path / "guided")]) == 0
    records = [json.loads(line) for line in (tmp_path / "guided/samples.jsonl").read_text().splitlines()]
    assert [r["guidanceScale"] for r in records] == [2.0, 2.0]
