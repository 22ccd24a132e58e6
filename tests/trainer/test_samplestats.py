"""The sample statistics (genforge_trainer.samplestats) on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from genforge_trainer.data import synthetic
from genforge_trainer.samplestats import background_colour, shape_redness


@pytest.mark.parametrize("colour", ["red", "blue", "green", "pink"])
def test_the_shape_colour_of_real_data_images_is_read_from_the_object_not_the_background(colour):
    params = synthetic.ShapesParams(count=400, size=32, seed=5)
    items = [synthetic.generate(params, i) for i in range(params.count)]
    picked = [item for item in items if f" {colour} " in item.caption][:12]
    assert len(picked) >= 6
    for item in picked:
        pixels = np.asarray(item.image.convert("RGB"))
        redness = shape_redness(pixels)
        assert redness is not None, item.caption
        r, g, b = synthetic.COLOURS[colour]
        assert redness == pytest.approx(r - b, abs=40), item.caption
        background = next(name for name in synthetic.BACKGROUNDS if f"{name} background" in item.caption)
        assert np.abs(background_colour(pixels) - synthetic.BACKGROUNDS[background]).max() <= 2


def test_a_red_background_does_not_make_a_blue_shape_red():
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:] = (230, 60, 40)           # red background
    pixels[5:11, 5:11] = (40, 80, 220)  # blue square
    assert shape_redness(pixels) == pytest.approx(40 - 220)
    assert pixels.reshape(-1, 3).astype(float).mean(0)[0] > pixels.reshape(-1, 3).astype(float).mean(0)[2]


def test_plain_images_and_noise_have_no_object():
    assert shape_redness(np.full((16, 16, 3), 128, np.uint8)) is None
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(128, 12, (16, 16, 3)), 0, 255).astype(np.uint8)  # mild sensor-like noise
    assert shape_redness(noise) is None
