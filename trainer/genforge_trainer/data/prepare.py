"""``genforge-trainer prepare``: a Dataset's raw source in, a prepared dataset out.

Reads top to bottom: list the source, process items in a process pool (in order, at
most a few chunks in flight), decide duplicates and the ``maxItems`` limit in source
order, stream kept images and ``metadata.jsonl`` into a hidden staging directory, write
``manifest.json`` last, then publish the directory under ``output.uri`` in one step.

Output layout (Hugging Face imagefolder compatible)::

    <output.uri>/images/000001.png ...   fresh PNGs: RGB, resolution², no metadata chunks
    <output.uri>/metadata.jsonl          {"file_name", "caption", "label", "license",
                                          "source", "sha256"} per kept image, in order
    <output.uri>/manifest.json           counts, bytes, contentHash, settings, version

``contentHash`` is ``sha256:`` over the settings and every ``metadata.jsonl`` line (which
carries each image's sha256), so the same input and settings give the same hash, and any
change to an image, caption, licence, order or setting changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from genforge_trainer import storage
from genforge_trainer.data import parallel
from genforge_trainer.data.dedupe import NearDuplicateIndex
from genforge_trainer.data.process import DROP_REASONS, Outcome, Settings, process_chunk
from genforge_trainer.data.redact import PLACEHOLDERS
from genforge_trainer.data.sources import open_source
from genforge_trainer.exitcodes import ConfigError, DataError, StorageError

log = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
METADATA = "metadata.jsonl"
IMAGES = "images"
#: Below this many items the pool's start-up costs more than it saves.
MIN_ITEMS_FOR_POOL = 24


def settings_from_spec(prepare: Any) -> Settings:
    """The worker settings from the run spec's typed ``prepare`` section."""
    prep, privacy, lic = prepare.preparation, prepare.privacy, prepare.license
    return Settings(
        resolution=prep.resolution,
        crop=prep.crop,
        min_resolution=prep.min_resolution,
        dedupe=prep.dedupe,
        max_items=prep.max_items,
        blur_faces=privacy.blur_faces,
        strip_metadata=privacy.strip_metadata,
        redact_captions=privacy.redact_captions,
        allowed_licenses=tuple(lic.allowed),
        require_license=lic.require_license,
    )


def run(spec: Any, reporter: Any = None) -> dict[str, Any]:
    """The CLI entry point: prepare ``spec.prepare`` into ``spec.output.uri``; returns the
    termination-message fields (contract: items, bytes, contentHash, uri, redactions)."""
    if spec.prepare is None:
        raise ConfigError("prepare: is required for command 'prepare'")
    manifest = prepare(
        spec.prepare.source.uri, spec.output.uri, settings_from_spec(spec.prepare), reporter=reporter
    )
    return termination_fields(manifest)


def termination_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest numbers the operator copies into the Dataset's status."""
    return {
        "items": manifest["items"],
        "bytes": manifest["bytes"],
        "contentHash": manifest["contentHash"],
        "uri": manifest["uri"],
        "redactions": manifest["redactions"],
    }


@dataclass
class _Tally:
    total: int = 0
    done: int = 0
    kept: int = 0
    bytes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    faces: int = 0
    images_with_faces: int = 0

    def drop(self, reason: str, detail: str | None = None, count: int = 1) -> None:
        self.dropped[reason] += count
        if detail and detail != reason:
            self.details[detail] += count


def prepare(
    source_uri: str,
    output_uri: str,
    settings: Settings,
    *,
    reporter: Any = None,
    workers: int | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Prepare ``source_uri`` into ``output_uri``; return the manifest (also written)."""
    _check_locations(source_uri, output_uri)
    started = time.monotonic()
    with open_source(source_uri) as source:
        refs = source.items
        tally = _Tally(total=len(refs))
        if tally.total == 0:
            raise DataError(f"source {storage.redact_url(source_uri)} contains no images")
        workers = parallel.default_workers() if workers is None else workers
        if tally.total < MIN_ITEMS_FOR_POOL or storage.scheme_of(source_uri) == "memory":
            workers = 1  # (memory:// lives in this process only)
        chunk_size = _chunk_size(tally.total, workers, settings.resolution)
        log.info(
            "preparing %d items from %s into %s with %d worker(s)",
            tally.total,
            storage.redact_url(source_uri),
            storage.redact_url(output_uri),
            workers,
        )
        _report(reporter, tally, started)
        with storage.StagedDirectory(output_uri) as staging:
            manifest = _write_dataset(
                refs,
                settings,
                staging.url,
                output_uri,
                source_uri,
                tally,
                reporter,
                started,
                workers,
                chunk_size,
                progress_bar,
            )
            staging.commit()
    log.info(
        "prepared %s: kept %d of %d (%s), %d bytes, %s",
        storage.redact_url(output_uri),
        tally.kept,
        tally.total,
        ", ".join(f"{k}={v}" for k, v in manifest["items"]["dropped"].items() if v) or "none dropped",
        tally.bytes,
        manifest["contentHash"],
    )
    return manifest


def _write_dataset(
    refs,
    settings: Settings,
    staging_url: str,
    output_uri: str,
    source_uri: str,
    tally: _Tally,
    reporter: Any,
    started: float,
    workers: int,
    chunk_size: int,
    progress_bar: bool,
) -> dict[str, Any]:
    dedupe = NearDuplicateIndex() if settings.dedupe else None
    hasher = hashlib.sha256()
    hasher.update(_canonical({"formatVersion": MANIFEST_FORMAT_VERSION, "settings": settings.as_document()}))
    hasher.update(b"\n")
    bar = tqdm(
        total=tally.total,
        unit="img",
        desc="prepare",
        file=sys.stderr,
        disable=not progress_bar,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
        dynamic_ncols=True,
    )
    _make_local_dir(storage.join(staging_url, IMAGES))
    last_report = 0.0
    try:
        with storage.open_url(storage.join(staging_url, METADATA), "wb") as metadata:
            results = parallel.ordered_map(
                functools.partial(process_chunk, settings=settings),
                refs,
                workers=workers,
                chunk_size=chunk_size,
            )
            try:
                for outcome in results:
                    tally.done += 1
                    bar.update(1)
                    line = _accept(outcome, settings, tally, dedupe, staging_url)
                    if line is not None:
                        metadata.write(line)
                        hasher.update(line)
                        tally.bytes += len(line)
                    if settings.max_items is not None and tally.kept >= settings.max_items:
                        rest = tally.total - tally.done
                        if rest:
                            tally.drop("overLimit", count=rest)
                            tally.done = tally.total
                            bar.update(rest)
                        break
                    now = time.monotonic()
                    if now - last_report >= 0.5:
                        _report(reporter, tally, started)
                        last_report = now
            finally:
                results.close()
    except OSError as exc:
        raise StorageError(f"cannot write the dataset to {storage.redact_url(output_uri)}: {exc}") from exc
    finally:
        bar.close()
    _report(reporter, tally, started)
    if tally.kept == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in tally.dropped.items() if v)
        raise DataError(f"no items left after filtering: all {tally.total} dropped ({reasons})")

    content_hash = "sha256:" + hasher.hexdigest()
    manifest = {
        "schemaVersion": "genforge.dev/v1alpha1",
        "kind": "DatasetManifest",
        "formatVersion": MANIFEST_FORMAT_VERSION,
        "version": content_hash.split(":", 1)[1][:12],
        "generator": {"name": "genforge-trainer", "version": _version()},
        "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": storage.redact_url(source_uri),
        "uri": output_uri,
        "items": {
            "total": tally.total,
            "kept": tally.kept,
            "dropped": {reason: tally.dropped.get(reason, 0) for reason in DROP_REASONS},
        },
        "dropDetails": dict(sorted(tally.details.items())),
        "bytes": tally.bytes,
        "contentHash": content_hash,
        "redactions": {
            kind: tally.redactions.get(kind, 0) for kind in PLACEHOLDERS if tally.redactions.get(kind)
        },
        "faces": {"regionsBlurred": tally.faces, "imagesWithFaces": tally.images_with_faces},
        "labels": dict(sorted(tally.labels.items())),
        "files": {"images": IMAGES + "/", "metadata": METADATA, "format": "png"},
        "settings": settings.as_document(),
        "seconds": round(time.monotonic() - started, 3),
    }
    storage.write_bytes(storage.join(staging_url, MANIFEST), json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest


def _accept(
    outcome: Outcome, settings: Settings, tally: _Tally, dedupe: NearDuplicateIndex | None, staging_url: str
) -> bytes | None:
    """Count one outcome; for a kept one, write its image and return its metadata line."""
    if not outcome.kept:
        tally.drop(outcome.reason or "corrupt", outcome.detail)
        log.debug("dropped %s: %s (%s)", outcome.source, outcome.reason, outcome.message)
        return None
    if dedupe is not None:
        duplicate_of = dedupe.check_and_add(outcome.phash, outcome.layout, outcome.source)
        if duplicate_of is not None:
            tally.drop("duplicate")
            log.debug("dropped %s: near-duplicate of %s", outcome.source, duplicate_of)
            return None
    assert outcome.png is not None and outcome.sha256 is not None
    tally.kept += 1
    file_name = f"{IMAGES}/{tally.kept:06d}.png"
    storage.write_file(storage.join(staging_url, file_name), outcome.png)
    tally.bytes += len(outcome.png)
    tally.redactions.update(outcome.redactions)
    if outcome.label is not None:
        tally.labels[outcome.label] += 1
    if outcome.faces:
        tally.faces += outcome.faces
        tally.images_with_faces += 1
    record: dict[str, Any] = {
        "file_name": file_name,
        "caption": outcome.caption,
        "label": outcome.label,
        "license": outcome.license,
        "source": outcome.source,
        "sha256": outcome.sha256,
    }
    if outcome.attribution:
        record["attribution"] = outcome.attribution
    return json.dumps(record, ensure_ascii=False, sort_keys=False).encode() + b"\n"


def _chunk_size(total: int, workers: int, resolution: int) -> int:
    """Items per pool task: enough to amortise the hand-off, few enough that every worker
    gets several tasks, and about 4 MiB of encoded output at most (PNG ≈ 1.5 bytes/pixel)."""
    by_balance = total // (max(workers, 1) * 8)
    by_memory = (4 << 20) // max(1, int(1.5 * resolution * resolution))
    return max(1, min(16, by_balance, by_memory))


def _report(reporter: Any, tally: _Tally, started: float) -> None:
    if reporter is None:
        return
    elapsed = time.monotonic() - started
    reporter.update(
        step=tally.done,
        totalSteps=tally.total,
        samplesPerSecond=round(tally.done / elapsed, 2) if elapsed > 0 and tally.done else None,
        kept=tally.kept,
        dropped=sum(tally.dropped.values()),
    )


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _make_local_dir(url: str) -> None:
    path = storage.local_path(url)
    if path is not None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc}") from exc


def _check_locations(source_uri: str, output_uri: str) -> None:
    """Refuse an output that would replace the source (publishing removes the old output)."""
    source = storage.local_path(source_uri) if not source_uri.startswith("synthetic:") else None
    output = storage.local_path(output_uri)
    if source is None or output is None:
        return
    source, output = os.path.realpath(source), os.path.realpath(output)
    if source == output or source.startswith(output.rstrip("/") + "/"):
        raise ConfigError(
            f"output.uri {output_uri!r} would replace the source {source_uri!r}; choose another location"
        )


@functools.cache
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("genforge")
    except Exception:
        return "0+unknown"
