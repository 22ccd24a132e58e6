"""Reading a prepared dataset for training and evaluation.

A prepared dataset (what ``genforge-trainer prepare`` writes) is ``<uri>/metadata.jsonl``,
one JSON object per line::

    {"file_name": "images/000001.png", "caption": "...", "label": "circle",
     "license": "cc0-1.0", "source": "...", "sha256": "..."}

plus the image files it names, relative to ``<uri>``. Only ``file_name`` is required.

The data pipeline decodes every image once (in a thread pool) into one ``uint8`` tensor
(N×3×H×W) kept in memory; a batch is an index gather, moved to the device as uint8 and
normalised there, so the training loop never waits for JPEG/PNG decoding or Python
collation. Batch order is a pure function of ``(seed, position)``: every rank draws its
own slice of an endless sequence of seeded permutations, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genforge_trainer import storage
from genforge_trainer.exitcodes import DataError

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
#: Decoded datasets above this size are refused (the in-memory pipeline's limit).
MAX_DECODED_BYTES = 8 * 2**30


@dataclass(frozen=True)
class Record:
    file_name: str
    caption: str = ""
    label: str | None = None


@dataclass
class ImageSet:
    """Decoded images with their captions and labels."""

    pixels: torch.Tensor  # uint8 [N, 3, H, W]
    captions: list[str]
    labels: list[str | None]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def subset(self, indices: list[int] | np.ndarray) -> ImageSet:
        idx = [int(i) for i in indices]
        return ImageSet(self.pixels[idx], [self.captions[i] for i in idx], [self.labels[i] for i in idx])

    @property
    def label_names(self) -> list[str]:
        """Distinct labels, sorted; empty when the dataset is unlabelled."""
        if any(label is None for label in self.labels):
            return []
        return sorted(set(self.labels))  # type: ignore[arg-type]


def read_metadata(uri: str) -> list[Record]:
    url = storage.join(uri, METADATA)
    try:
        with storage.open_url(url, "rb") as handle:
            text = handle.read().decode("utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"prepared dataset has no {METADATA}: {storage.redact_url(url)}") from exc
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            records.append(Record(str(raw["file_name"]), str(raw.get("caption") or ""), raw.get("label")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(
                f"{storage.redact_url(url)} line {number}: not a metadata record ({exc})"
            ) from exc
    if not records:
        raise DataError(f"prepared dataset {storage.redact_url(uri)} is empty")
    return records


def decode_image(data: bytes, resolution: int) -> np.ndarray:
    """RGB uint8 HxWx3 at ``resolution`` (centre-cropped and resized if the file differs)."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if image.size != (resolution, resolution):
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize(
                (resolution, resolution), Image.Resampling.BICUBIC
            )
        return np.array(image, dtype=np.uint8)


def load_images(uri: str, resolution: int, *, max_items: int | None = None, workers: int = 8) -> ImageSet:
    """Read and decode a prepared dataset (all of it, or its first ``max_items``)."""
    records = read_metadata(uri)[:max_items]
    needed = len(records) * 3 * resolution * resolution
    if needed > MAX_DECODED_BYTES:
        raise DataError(
            f"dataset needs {needed / 2**30:.1f} GiB decoded at {resolution}px; the in-memory pipeline "
            f"holds at most {MAX_DECODED_BYTES / 2**30:.0f} GiB"
        )

    def load(record: Record) -> np.ndarray:
        url = storage.join(uri, record.file_name)
        try:
            return decode_image(storage.read_bytes(url), resolution)
        except FileNotFoundError as exc:
            raise DataError(f"image listed in {METADATA} is missing: {storage.redact_url(url)}") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot decode {storage.redact_url(url)}: {exc}") from exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(load, records))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    log.info("loaded %d images at %dpx from %s", len(records), resolution, storage.redact_url(uri))
    return ImageSet(pixels, [r.caption for r in records], [r.label for r in records])


def split_held_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded, deterministic split; at least one item each
    when ``fraction > 0`` and ``n >= 2``."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    held = min(max(1, round(n * fraction)), n - 1)
    return np.sort(order[held:]), np.sort(order[:held])


def to_model_input(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (on whatever device the tensor is)."""
    return pixels_uint8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class BatchSampler:
    """Indices of the batch at any position, for any rank, without state.

    The sample stream is an endless concatenation of permutations of ``range(n)``, epoch
    ``e`` shuffled by ``(seed, e)``; micro-batch ``k`` of rank ``r`` (of ``world``) takes
    stream items ``[(k*world + r) * B, (k*world + r + 1) * B)``.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise DataError("no training images")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[e] = np.random.default_rng([self.seed, e]).permutation(self.n)
        return self._cache[e]

    def indices(self, micro_batch: int) -> np.ndarray:
        start = (micro_batch * self.world + self.rank) * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        epochs, offsets = np.divmod(positions, self.n)
        return np.array([self._epoch(int(e))[int(o)] for e, o in zip(epochs, offsets, strict=True)])
