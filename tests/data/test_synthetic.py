"""``synthetic://shapes``: deterministic, labelled, captioned, CC0."""

from __future__ import annotations

import numpy as np
import pytest

from genforge_trainer.data import synthetic


def test_items_are_deterministic_and_independent_of_count():
    a = synthetic.generate(synthetic.parse_uri("synthetic://shapes?count=10&size=32&seed=3"), 7)
    b = synthetic.generate(synthetic.parse_uri("synthetic://shapes?count=500&size=32&seed=3"), 7)
    assert a.caption == b.caption and a.label == b.label
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_seed_changes_the_dataset():
    one = [synthetic.describe(synthetic.ShapesParams(count=20, seed=0), i) for i in range(20)]
    two = [synthetic.describe(synthetic.ShapesParams(count=20, seed=1), i) for i in range(20)]
    assert one != two


def test_items_are_labelled_captioned_rgb_and_cc0():
    params = synthetic.ShapesParams(count=64, size=48)
    labels = set()
    for i in range(params.count):
        item = synthetic.generate(params, i)
        assert item.image.mode == "RGB" and item.image.size == (48, 48)
        assert item.label in synthetic.SHAPES and item.label in item.caption
        assert item.license == "cc0-1.0"
        labels.add(item.label)
    assert len(labels) >= 6  # every shape shows up in a modest dataset


def test_the_shape_is_drawn_in_its_colour():
    params = synthetic.ShapesParams(count=30, size=64)
    for i in range(params.count):
        item = synthetic.generate(params, i)
        colour = next(name for name in synthetic.COLOURS if f" {name} " in item.caption)
        pixels = np.asarray(item.image).reshape(-1, 3).astype(int)
        distance = np.abs(pixels - np.array(synthetic.COLOURS[colour])).sum(axis=1)
        assert (distance < 30).sum() > 30, item.caption


@pytest.mark.parametrize(
    "uri,message",
    [
        ("synthetic://faces?count=3", "unknown synthetic generator"),
        ("synthetic://shapes?count=0", "count must be in"),
        ("synthetic://shapes?size=4", "size must be in"),
        ("synthetic://shapes?count=ten", "count must be an integer"),
        ("synthetic://shapes?colour=red", "unknown synthetic://shapes parameter"),
    ],
)
def test_bad_uris_are_explained(uri, message):
    with pytest.raises(ValueError, match=message):
        synthetic.parse_uri(uri)


def test_defaults():
    assert synthetic.parse_uri("synthetic://shapes") == synthetic.ShapesParams(count=512, size=64, seed=0)
