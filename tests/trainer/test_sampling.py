"""The sampler behind every sample grid (``DiffusionModel.sample``): DDIM on the trained DDPM
schedule must invert the forward process exactly when the denoiser is perfect, must pass
class labels through, and must agree with diffusers' own ``DDIMPipeline``.

A model that predicts the true noise (or velocity) of one fixed image is an oracle: DDIM
with eta 0 then returns that image from any starting noise, in any number of steps. Any
mismatch between training and sampling — scheduler config, timesteps, prediction type,
clipping, un-normalisation — would show up here as a wrong image.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from genforge_trainer.config import ModelConfig, ModelSpec  # noqa: E402
from genforge_trainer.imagedata import to_uint8  # noqa: E402
from genforge_trainer.models import DiffusionModel, build_unet2d  # noqa: E402

pytestmark = pytest.mark.torch

SIZE = 8


class Oracle(nn.Module):
    """Predicts the exact noise/velocity/image that turns ``targets[label]`` into ``x`` at ``t``."""

    def __init__(self, targets: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.targets, self.scheduler = targets, scheduler
        self.unused = nn.Parameter(torch.zeros(()))  # the sampler reads device/dtype from parameters
        self.config = SimpleNamespace(in_channels=3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None):
        x0 = self.targets[class_labels] if class_labels is not None else self.targets[:1].expand_as(x)
        alpha_bar = self.scheduler.alphas_cumprod[int(t)]
        eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        if self.scheduler.config.prediction_type == "v_prediction":
            return SimpleNamespace(sample=alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0)
        if self.scheduler.config.prediction_type == "sample":
            return SimpleNamespace(sample=x0)
        return SimpleNamespace(sample=eps)


def targets(count: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand((count, 3, SIZE, SIZE), generator=g) * 1.8 - 0.9


def oracle_model(prediction_type: str, beta_schedule: str, labels: list[str]) -> DiffusionModel:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type
    )
    net = Oracle(targets(max(1, len(labels))), scheduler)
    return DiffusionModel("unet2d-ddpm", SIZE, net, scheduler, labels=labels)


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["ddim", "ddim-eta1"])
@pytest.mark.parametrize("steps", [1, 7, 50])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_a_perfect_denoiser_samples_its_image_exactly(prediction_type, beta_schedule, steps, eta):
    # Stochastic sampling too: the fresh noise of each step is denoised away again, and the
    # last step (to alpha_bar = 1) adds none.
    model = oracle_model(prediction_type, beta_schedule, [])
    images = model.sample(3, steps=steps, generator=torch.Generator().manual_seed(1), eta=eta)
    assert images.shape == (3, 3, SIZE, SIZE)
    assert (images - targets(1)).abs().max() < 1e-4
    # and through the grid's un-normalisation: [-1, 1] -> [0, 255]
    expected = ((targets(1) + 1) * 127.5).round()
    assert (to_uint8(images).float() - expected).abs().max() <= 1


def test_class_labels_reach_the_denoiser_in_order():
    labels = ["circle", "square", "star"]
    model = oracle_model("epsilon", "linear", labels)
    wanted = ["star", "circle", "star", "square"]
    images = model.sample(4, steps=10, generator=torch.Generator().manual_seed(2), labels=wanted)
    for image, label in zip(images, wanted, strict=True):
        assert (image - targets(3)[labels.index(label)]).abs().max() < 1e-4


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_sampler_matches_diffusers_ddim_pipeline(prediction_type, eta):
    """Same weights, same noise (the initial noise, then each step's fresh noise for η > 0,
    from one generator): our grid sampler and ``DDIMPipeline`` give the same images."""
    from diffusers import DDIMPipeline, DDIMScheduler

    spec = ModelSpec(
        architecture="unet2d-ddpm",
        resolution=SIZE,
        config=ModelConfig(block_out_channels=(8, 16), norm_num_groups=4, prediction_type=prediction_type),
    )
    torch.manual_seed(0)
    model = build_unet2d(spec, [])
    with torch.no_grad():  # random, not zero-initialised outputs: the comparison must mean something
        for p in model.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = model.sample(2, steps=5, generator=torch.Generator().manual_seed(3), eta=eta)
    pipe = DDIMPipeline(unet=model.denoiser, scheduler=DDIMScheduler.from_config(model.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=5, eta=eta, output_type="np"
    ).images
    theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1
    assert (ours - theirs).abs().max() < 1e-4
    if eta:  # and η does what it says: the same noise sampled deterministically gives other images
        deterministic = model.sample(2, steps=5, generator=torch.Generator().manual_seed(3))
        assert (ours - deterministic).abs().max() > 1e-2
