"""stable-diffusion from a local base: train, LoRA and textual inversion on a tiny pipeline."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from genforge_trainer import train  # noqa: E402
from genforge_trainer.config import parse_run_spec  # noqa: E402
from genforge_trainer.models import load_pretrained  # noqa: E402
from genforge_trainer.progress import ProgressReporter  # noqa: E402

from .datasets import shapes  # noqa: E402
from .test_training import tiny_run  # noqa: E402
from .tiny_sd import build_tiny_stable_diffusion  # noqa: E402

pytestmark = pytest.mark.torch

SD_MODEL = {"architecture": "stable-diffusion", "resolution": 16, "config": {"inferenceSteps": 3}}


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory) -> str:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> str:
    return shapes(tmp_path_factory.mktemp("captioned"), count=16, size=16)


def sd_run(tmp_path, data, base, steps=6, **overrides):
    return parse_run_spec(
        tiny_run(
            tmp_path,
            data,
            steps=steps,
            model={**SD_MODEL, "baseUri": base},
            training={"batchSize": 4},
            **overrides,
        )
    )


@pytest.mark.slow
def test_train_from_a_local_base_saves_a_pipeline_that_loads_offline(tmp_path, sd_base, captioned):
    from diffusers import StableDiffusionPipeline

    spec = sd_run(
        tmp_path,
        captioned,
        sd_base,
        evaluation={"samples": 2, "metrics": ["loss", "fid"], "heldOutFraction": 0.25},
    )
    result = train.run(spec, ProgressReporter())
    pipe = StableDiffusionPipeline.from_pretrained(
        result["artifact"].removeprefix("file://"), local_files_only=True
    )
    images = pipe("a red circle", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    assert {"loss", "fid", "featureExtractor"} <= set(result["metrics"])


def test_lora_on_stable_diffusion_writes_an_adapter(tmp_path, sd_base, captioned):
    spec = sd_run(
        tmp_path,
        captioned,
        sd_base,
        command="finetune",
        finetune={"method": "lora", "lora": {"rank": 2, "alpha": 2}},
    )
    result = train.run(spec, ProgressReporter())
    assert (tmp_path / "out/adapter/adapter_model.safetensors").exists()
    assert result["artifact"] == result["adapter"]


def test_textual_inversion_learns_only_the_new_token(tmp_path, sd_base, captioned):
    from safetensors.torch import load_file

    spec = sd_run(
        tmp_path,
        captioned,
        sd_base,
        command="finetune",
        finetune={"method": "embedding", "embedding": {"concept": "<my-shape>", "initializer": "star"}},
    )
    base = load_pretrained(sd_base, spec.model)
    table_before = base.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = {k: v.clone() for k, v in base.denoiser.state_dict().items()}
    result = train.run(spec, ProgressReporter())
    learned = load_file(str(tmp_path / "out/embedding/learned_embeds.safetensors"))
    assert set(learned) == {"<my-shape>"} and learned["<my-shape>"].shape == (32,)
    assert result["artifact"].endswith("/out/embedding")
    # The base on disk is untouched, and the learned row differs from its initializer.
    again = load_pretrained(sd_base, spec.model)
    assert torch.equal(again.text_encoder.get_input_embeddings().weight, table_before)
    assert all(torch.equal(again.denoiser.state_dict()[k], v) for k, v in unet_before.items())
    star = base.tokenizer.encode("star", add_special_tokens=False)[0]
    assert not torch.equal(learned["<my-shape>"], table_before[star])
