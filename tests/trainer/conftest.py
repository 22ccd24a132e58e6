"""Shared fixtures for trainer tests: one tiny labelled dataset and one base model per session."""

from __future__ import annotations

import pytest

from .datasets import shapes


@pytest.fixture(scope="session")
def dataset_uri(tmp_path_factory) -> str:
    return shapes(tmp_path_factory.mktemp("shapes"), count=32, size=16)


@pytest.fixture(scope="session")
def base(tmp_path_factory, dataset_uri):
    """(artifact URI, spec) of a class-conditional unet2d-ddpm base trained briefly."""
    from genforge_trainer import train
    from genforge_trainer.config import parse_run_spec
    from genforge_trainer.progress import ProgressReporter

    from .test_training import tiny_run

    spec = parse_run_spec(tiny_run(tmp_path_factory.mktemp("base"), dataset_uri, steps=20))
    return train.run(spec, ProgressReporter())["artifact"], spec


@pytest.fixture(scope="session")
def base_model(base) -> str:
    return base[0]
