"""The one reader of raw dataset sources.

:func:`open_source` turns a ``source.uri`` into an ordered list of :class:`ItemRef` — small,
picklable references that a worker process turns into pixels with :func:`load_item`.
Listing is cheap and happens once, up front (so progress has a total); reading, decoding
and sidecar parsing happen in the workers.

Supported sources:

* a **directory** at any storage URL (``file://``, plain path, ``s3://``, ``gs://``,
  ``memory://``): every ``.jpg .jpeg .png .webp`` (and other image extensions, which are
  then dropped as unsupported) below it, sorted by path. Captions and licences come from,
  in increasing precedence: ``metadata.jsonl`` / ``metadata.csv`` rows (Hugging Face
  imagefolder style, ``file_name`` relative to the metadata file's directory), a
  ``<stem>.json`` sidecar, a ``<stem>.txt`` sidecar (caption only).
* an **archive** (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``) at any URL, ``https://``
  included: downloaded and unpacked (safely: no absolute paths, no ``..``, no links,
  bounded size) into a temporary directory, then read like a directory.
* a **list** of image URLs at any URL (``.txt``: one URL per line, ``#`` comments;
  ``.jsonl``: objects with ``url`` and optional ``caption``, ``license``, ``label``,
  ``attribution``); relative URLs resolve against the list's own URL.
* a **single image** URL.
* ``synthetic://shapes?count=N&size=S&seed=K`` (see :mod:`synthetic`).

Metadata keys (JSON): ``caption`` (or ``text``), ``license`` (or ``licence``; a string
or ``{"id": ...}``), ``label``, ``source`` (or ``url``: where the item originally came
from, for attribution), ``attribution`` (or ``author``/``creator``).

Errors reading the *source* are :class:`DataError` (exit code 3).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from PIL import Image

from genforge_trainer import storage
from genforge_trainer.data import synthetic
from genforge_trainer.exitcodes import DataError, StorageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp")
#: Image files that are counted (as corrupt: unsupported format) rather than ignored.
OTHER_IMAGE_EXTENSIONS = (".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".ico")
ARCHIVE_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".zip")
LIST_EXTENSIONS = (".txt", ".jsonl", ".ndjson", ".csv")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
MAX_SIDECAR_BYTES = 1 << 20
MAX_LIST_BYTES = 256 << 20
#: Unpacked archives larger than this are refused (zip/tar bombs).
MAX_ARCHIVE_UNPACKED_BYTES = 64 << 30

_NO_LICENSE = {"", "unknown", "none", "null", "n/a", "na", "noassertion", "unlicensed", "?"}


def normalize_license(value: Any) -> str | None:
    """A licence id in canonical form (lower case, ``-`` separated), or ``None`` if absent.

    ``"CC BY 4.0"`` → ``cc-by-4.0``; ``"CC0"`` → ``cc0-1.0``; ``"unknown"``/``""`` → ``None``.
    """
    if isinstance(value, dict):
        value = value.get("id") or value.get("spdx") or value.get("name")
    if value is None:
        return None
    text = "-".join(str(value).strip().lower().replace("_", " ").split())
    if text in _NO_LICENSE:
        return None
    if text in ("cc0", "cc-0", "cc0-1", "cc-zero", "public-domain-cc0"):
        return "cc0-1.0"
    return text


@dataclass(frozen=True, slots=True)
class Metadata:
    caption: str | None = None
    license: str | None = None
    label: str | None = None
    origin: str | None = None  # where the item originally came from (attribution URL)
    attribution: str | None = None

    def merged(self, raw: dict[str, Any] | None) -> Metadata:
        """These values overridden by the ones present in a JSON object."""
        if not raw:
            return self
        updates: dict[str, Any] = {}
        caption = _first(raw, "caption", "text", "prompt")
        if caption is not None:
            updates["caption"] = str(caption)
        if any(k in raw for k in ("license", "licence")):
            updates["license"] = normalize_license(_first(raw, "license", "licence"))
        label = _first(raw, "label", "class")
        if label is not None:
            updates["label"] = str(label)
        origin = _first(raw, "source", "url", "source_url")
        if origin is not None:
            updates["origin"] = str(origin)
        attribution = _first(raw, "attribution", "author", "creator")
        if attribution is not None:
            updates["attribution"] = str(attribution)
        return replace(self, **updates)


def _first(raw: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    return None


@dataclass(frozen=True, slots=True)
class ItemRef:
    """One raw item: where to read it and what is known about it before reading.

    ``key`` is stable across runs (relative path, URL, synthetic index) and seeds the
    item's random crop; ``source`` is the attribution URL recorded in the output
    (credentials removed).
    """

    index: int
    key: str
    source: str
    url: str | None = None  # image bytes to read (worker side)
    sidecars: tuple[str, ...] = ()  # .json / .txt sidecar URLs, applied in order
    metadata: Metadata = field(default_factory=Metadata)
    synthetic: tuple[synthetic.ShapesParams, int] | None = None
    unsupported: bool = False  # an image format the dataset does not accept


def read_metadata(ref: ItemRef) -> Metadata:
    """An item's final metadata: listing-time values overridden by its sidecars (worker
    side). A broken sidecar only loses its own metadata (logged)."""
    meta = ref.metadata
    for sidecar in ref.sidecars:
        meta = _apply_sidecar(meta, sidecar)
    if ref.synthetic is not None:
        params, index = ref.synthetic
        caption, label = synthetic.describe(params, index)
        meta = replace(meta, caption=caption, license=synthetic.LICENSE, label=label)
    return meta


def read_image(ref: ItemRef) -> bytes | Image.Image:
    """An item's encoded bytes, or for generated items the image itself (worker side).
    ``OSError``/``StorageError`` propagate."""
    if ref.synthetic is not None:
        params, index = ref.synthetic
        return synthetic.generate(params, index).image
    assert ref.url is not None
    return storage.read_bytes(ref.url, max_bytes=_max_file_bytes())


def _max_file_bytes() -> int:
    from genforge_trainer.data.imageops import MAX_FILE_BYTES

    return MAX_FILE_BYTES


def _apply_sidecar(meta: Metadata, url: str) -> Metadata:
    try:
        raw = storage.read_bytes(url, max_bytes=MAX_SIDECAR_BYTES)
        text = raw.decode("utf-8-sig")
    except (OSError, StorageError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable sidecar %s: %s", storage.redact_url(url), exc)
        return meta
    if url.lower().endswith(".txt"):
        return replace(meta, caption=text.strip())
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        log.warning("ignoring sidecar %s: not JSON (%s)", storage.redact_url(url), exc)
        return meta
    return meta.merged(obj if isinstance(obj, dict) else None)


# --------------------------------------------------------------------------- listing


class Source(contextlib.AbstractContextManager):
    """An opened source: ``items`` in deterministic order; ``close()`` drops temp files."""

    def __init__(self, uri: str, items: list[ItemRef], tempdir: str | None = None) -> None:
        self.uri = uri
        self.items = items
        self._tempdir = tempdir

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None


def _suffix(url: str) -> str:
    path = urlsplit(url).path.lower() if "://" in url else url.lower()
    for ext in (".tar.gz",):
        if path.endswith(ext):
            return ext
    return posixpath.splitext(path)[1]


def open_source(uri: str) -> Source:
    """List the items of ``uri`` (see the module docstring for what is understood)."""
    try:
        if uri.startswith("synthetic:"):
            return _open_synthetic(uri)
        suffix = _suffix(uri)
        scheme = storage.scheme_of(uri)
        if suffix in ARCHIVE_EXTENSIONS:
            return _open_archive(uri)
        if scheme not in ("http", "https") and storage.is_dir(uri):
            return Source(uri, _list_directory(uri, storage.list_files(uri)))
        if suffix in IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS:
            return Source(uri, [_file_item(0, uri, uri, (), Metadata(), suffix)])
        if suffix in LIST_EXTENSIONS or scheme in ("http", "https"):
            return Source(uri, _read_url_list(uri))
        if not storage.exists(uri):
            raise DataError(f"source {storage.redact_url(uri)} does not exist")
        raise DataError(
            f"source {storage.redact_url(uri)}: not a directory, archive ({', '.join(ARCHIVE_EXTENSIONS)}), "
            f"URL list ({', '.join(LIST_EXTENSIONS)}) or image"
        )
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"source {storage.redact_url(uri)} not found: {exc}") from exc
    except (OSError, StorageError, ValueError) as exc:
        raise DataError(f"cannot read source {storage.redact_url(uri)}: {exc}") from exc


def _open_synthetic(uri: str) -> Source:
    params = synthetic.parse_uri(uri)
    items = [
        ItemRef(index=i, key=f"{params.uri}#{i}", source=f"{params.uri}#{i}", synthetic=(params, i))
        for i in range(params.count)
    ]
    return Source(uri, items)


def _file_item(
    index: int,
    key: str,
    url: str,
    sidecars: tuple[str, ...],
    meta: Metadata,
    suffix: str,
    source: str | None = None,
) -> ItemRef:
    return ItemRef(
        index=index,
        key=key,
        source=storage.redact_url(source or url),
        url=url,
        sidecars=sidecars,
        metadata=meta,
        unsupported=suffix in OTHER_IMAGE_EXTENSIONS,
    )


def _list_directory(
    root_uri: str, entries: list[storage.Entry], source_prefix: str | None = None
) -> list[ItemRef]:
    """Items of a listed directory; ``source_prefix`` replaces ``root_uri`` in attribution
    (used for unpacked archives: ``https://host/a.tar#dir/x.jpg``)."""
    by_path = {e.relpath: e for e in entries}
    table = _read_metadata_tables(entries)
    items: list[ItemRef] = []
    for entry in entries:
        suffix = posixpath.splitext(entry.relpath.lower())[1]
        if suffix not in IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS:
            continue
        stem = posixpath.splitext(entry.relpath)[0]
        sidecars = tuple(by_path[stem + ext].url for ext in (".json", ".txt") if stem + ext in by_path)
        meta = table.get(entry.relpath, Metadata())
        source = f"{source_prefix}#{entry.relpath}" if source_prefix else entry.url
        items.append(_file_item(len(items), entry.relpath, entry.url, sidecars, meta, suffix, source))
    return items


def _read_metadata_tables(entries: list[storage.Entry]) -> dict[str, Metadata]:
    """``metadata.jsonl``/``.csv`` rows by image path relative to the listed root."""
    table: dict[str, Metadata] = {}
    for entry in entries:
        directory, name = posixpath.split(entry.relpath)
        if name not in METADATA_FILES:
            continue
        text = storage.read_bytes(entry.url, max_bytes=MAX_LIST_BYTES).decode("utf-8-sig")
        if name.endswith(".jsonl"):
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{storage.redact_url(entry.url)} line {number}: not JSON ({exc})"
                    ) from exc
                if isinstance(row, dict):
                    rows.append(row)
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
        for row in rows:
            file_name = row.get("file_name")
            if not file_name:
                continue
            rel = posixpath.normpath(posixpath.join(directory, str(file_name)))
            table[rel] = table.get(rel, Metadata()).merged(row)
    return table


def _read_url_list(uri: str) -> list[ItemRef]:
    text = storage.read_bytes(uri, max_bytes=MAX_LIST_BYTES).decode("utf-8-sig", errors="replace")
    if text.lstrip().startswith("<"):
        raise DataError(
            f"source {storage.redact_url(uri)} is an HTML page, not a list of image URLs; point at a "
            f"list ({', '.join(LIST_EXTENSIONS)}) or an archive ({', '.join(ARCHIVE_EXTENSIONS)})"
        )
    suffix = _suffix(uri)
    rows: list[tuple[str, dict[str, Any] | None]] = []
    if suffix == ".csv":
        rows = [(str(r.get("url") or r.get("file_name") or ""), r) for r in csv.DictReader(io.StringIO(text))]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{storage.redact_url(uri)} line {number}: not JSON ({exc})") from exc
                rows.append((str(obj.get("url") or obj.get("file_name") or ""), obj))
            else:
                rows.append((line, None))
    items = []
    for target, raw in rows:
        if not target:
            continue
        url = _relative_to(uri, target)
        meta = Metadata().merged(raw) if raw else Metadata()
        items.append(_file_item(len(items), url, url, (), meta, _suffix(url), source=meta.origin or url))
    if not items:
        raise DataError(f"source list {storage.redact_url(uri)} names no images")
    return items


def _relative_to(list_uri: str, target: str) -> str:
    """A list entry as a URL: absolute ones as they are, relative ones against the list."""
    if "://" in target:
        return target
    if storage.scheme_of(list_uri) in ("http", "https"):
        return urljoin(list_uri, target)
    if target.startswith("/"):
        return ("file://" + target) if list_uri.startswith("file:") else target
    head, _, _ = list_uri.rpartition("/")
    if "://" in list_uri:
        scheme, _, rest = head.partition("://")
        return f"{scheme}://{posixpath.normpath(rest + '/' + target)}" if rest else f"{scheme}://{target}"
    return posixpath.normpath(posixpath.join(head, target)) if head else target


# --------------------------------------------------------------------------- archives


def _open_archive(uri: str) -> Source:
    tempdir = tempfile.mkdtemp(prefix="genforge-source-")
    try:
        suffix = _suffix(uri)
        local = storage.local_path(uri)
        if local is None:
            local = os.path.join(tempdir, "archive" + suffix)
            with open(local, "wb") as out:
                for chunk in storage.iter_chunks(uri):
                    out.write(chunk)
        unpacked = os.path.join(tempdir, "unpacked")
        os.makedirs(unpacked)
        if suffix == ".zip":
            _unzip(local, unpacked)
        else:
            _untar(local, unpacked)
        entries = storage.list_files(unpacked)
        items = _list_directory(unpacked, entries, source_prefix=storage.redact_url(uri))
        # Keys are member paths, stable across runs (not the temp dir).
        items = [replace(item, key=f"{uri}#{item.key}") for item in items]
        return Source(uri, items, tempdir)
    except BaseException:
        shutil.rmtree(tempdir, ignore_errors=True)
        raise


def _untar(path: str, dest: str) -> None:
    try:
        with tarfile.open(path, "r:*") as archive:
            total = 0
            members = []
            for member in archive:
                if not member.isfile():
                    continue  # no links, devices or fifos from strangers
                total += member.size
                if total > MAX_ARCHIVE_UNPACKED_BYTES:
                    raise DataError(f"archive unpacks to more than {MAX_ARCHIVE_UNPACKED_BYTES} bytes")
                members.append(member)
            archive.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"not a readable tar archive: {exc}") from exc


def _unzip(path: str, dest: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            if sum(i.file_size for i in infos) > MAX_ARCHIVE_UNPACKED_BYTES:
                raise DataError(f"archive unpacks to more than {MAX_ARCHIVE_UNPACKED_BYTES} bytes")
            for info in infos:
                name = posixpath.normpath(info.filename)
                if name.startswith(("/", "../")) or name == ".." or "\\" in info.filename:
                    log.warning("skipping unsafe archive member %r", info.filename)
                    continue
                archive.extract(info, dest)
    except zipfile.BadZipFile as exc:
        raise DataError(f"not a readable zip archive: {exc}") from exc
