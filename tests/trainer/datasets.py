"""Small prepared datasets in the contract's format, written by the tests themselves."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from genforge_trainer.data import synthetic


def write_prepared(
    directory: Path, images: list[Image.Image], captions: list[str], labels: list[str | None]
) -> str:
    """``directory/metadata.jsonl`` + ``images/NNNNNN.png``; returns the ``file://`` URI."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, caption, label) in enumerate(zip(images, captions, labels, strict=True)):
        name = f"images/{i:06d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        (directory / name).write_bytes(buffer.getvalue())
        record = {
            "file_name": name,
            "caption": caption,
            "license": "cc0-1.0",
            "source": "test",
            "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        }
        if label is not None:
            record["label"] = label
        lines.append(json.dumps(record))
    (directory / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return f"file://{directory}"


def shapes(
    directory: Path,
    count: int = 32,
    size: int = 16,
    *,
    labelled: bool = True,
    seed: int = 0,
    only: tuple[str, ...] | None = None,
) -> str:
    """A prepared synthetic-shapes dataset (optionally only some shapes)."""
    params = synthetic.ShapesParams(count=count * (8 if only else 1), size=size, seed=seed)
    items = [synthetic.generate(params, i) for i in range(params.count)]
    if only:
        items = [it for it in items if it.label in only][:count]
    return write_prepared(
        directory,
        [it.image for it in items],
        [it.caption for it in items],
        [it.label if labelled else None for it in items],
    )


def noise_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
