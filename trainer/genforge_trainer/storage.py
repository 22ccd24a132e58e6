"""The trainer's one storage abstraction: fsspec URLs.

Every byte the trainer reads or writes goes through this module, addressed by a URL:

* ``file:///data/x`` (a PVC or emptyDir path inside the pod; a plain path means the same),
* ``s3://bucket/key`` and ``gs://bucket/key`` (optional packages ``s3fs`` / ``gcsfs``),
* ``https://host/path`` (read-only),
* ``memory://x`` (tests).

Credentials are never passed in code: the operator sets the usual environment variables
from the Dataset's Secret (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``) and the
fsspec backends pick them up. Nothing here logs them; :func:`redact_url` removes any
credentials embedded in a URL before it is shown to anyone.

In ``genforge local`` the executor sets ``GENFORGE_PATH_MAP`` (a JSON object
``{"<mountPath>": "<local dir>"}``); ``file://`` URLs and plain paths are resolved through
it, longest prefix first, so the pod's view (``/data/...``) lands in a laptop directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from genforge_trainer.exitcodes import StorageError

__all__ = [
    "StorageError",
    "PATH_MAP_ENV",
    "resolve",
    "local_path",
    "filesystem",
    "open_url",
    "read_bytes",
    "write_bytes",
    "write_file",
    "list_files",
    "StagedDirectory",
    "redact_url",
    "join",
]

PATH_MAP_ENV = "GENFORGE_PATH_MAP"

#: Optional fsspec backends, by URL scheme: the package a user has to install.
_BACKEND_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "http": "aiohttp",
    "https": "aiohttp",
}


# --------------------------------------------------------------------------- URLs and paths


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` and query-string secrets removed, fit for logs."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = parts.query
    if query and any(k in query.lower() for k in ("signature", "token", "key", "credential", "secret")):
        query = "REDACTED"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def path_map() -> dict[str, str]:
    """The ``GENFORGE_PATH_MAP`` environment variable, parsed (empty when unset)."""
    raw = os.environ.get(PATH_MAP_ENV, "").strip()
    if not raw:
        return {}
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{PATH_MAP_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise StorageError(f'{PATH_MAP_ENV} must be a JSON object {{"<mountPath>": "<local dir>"}}')
    return {str(k): v for k, v in mapping.items()}


def map_local_path(path: str, mapping: dict[str, str] | None = None) -> str:
    """A pod path resolved through the path map (longest matching prefix wins).

    A prefix matches whole path components only: ``/data`` maps ``/data/x`` but not
    ``/database``.
    """
    mapping = path_map() if mapping is None else mapping
    best = None
    for mount in mapping:
        norm = mount.rstrip("/") or "/"
        if path == norm or path.startswith(norm if norm.endswith("/") else norm + "/"):
            if best is None or len(norm) > len(best[0]):
                best = (norm, mapping[mount])
    if best is None:
        return path
    mount, local = best
    rest = path[len(mount) :].lstrip("/")
    return os.path.join(local, rest) if rest else local


def scheme_of(url: str) -> str:
    """The URL's scheme; ``file`` for plain paths."""
    scheme = urlsplit(url).scheme
    return scheme.lower() if len(scheme) > 1 else "file"  # "C:" is a drive, not a scheme


def resolve(url: str) -> str:
    """The URL fsspec should open: plain paths and ``file://`` go through the path map."""
    if scheme_of(url) != "file":
        return url
    path = urlsplit(url).path if url.startswith("file:") else url
    return "file://" + map_local_path(path)


def local_path(url: str) -> str | None:
    """The local filesystem path of a ``file://`` URL or plain path (mapped); else ``None``."""
    if scheme_of(url) != "file":
        return None
    return resolve(url)[len("file://") :]


def join(url: str, *parts: str) -> str:
    """``url`` with path components appended (``/``-separated, whatever the scheme)."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not clean:
        return url
    return url.rstrip("/") + "/" + "/".join(clean)


# --------------------------------------------------------------------------- filesystems


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for ``url``.

    A missing optional backend (``s3fs``, ``gcsfs``) becomes a :class:`StorageError`
    that names the package to install.
    """
    target = resolve(url)
    try:
        return fsspec.core.url_to_fs(target)
    except ImportError as exc:
        scheme = scheme_of(url)
        package = _BACKEND_PACKAGES.get(scheme, "the fsspec backend for this scheme")
        raise StorageError(
            f"{scheme}:// URLs need the optional package {package} (pip install {package}): {exc}"
        ) from exc
    except ValueError as exc:
        raise StorageError(f"unsupported storage URL {redact_url(url)}: {exc}") from exc


def open_url(url: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """Open one object for reading or writing (not atomic; see :func:`write_bytes`)."""
    fs, path = filesystem(url)
    try:
        return fs.open(path, mode, **kwargs)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot open {redact_url(url)}: {exc}") from exc


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """The whole object; with ``max_bytes``, a longer object raises :class:`StorageError`
    (refused from its size when the store reports one, so it is never read into memory)."""
    if max_bytes is not None:
        fs, path = filesystem(url)
        try:
            size = fs.size(path)
        except (OSError, NotImplementedError, ValueError):  # the read below reports a missing file
            size = None
        if size is not None and size > max_bytes:
            raise StorageError(f"{redact_url(url)} is larger than {max_bytes} bytes ({size})")
    with open_url(url, "rb") as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise StorageError(f"{redact_url(url)} is larger than {max_bytes} bytes")
    return data


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def is_dir(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.isdir(path))


@dataclass(frozen=True)
class Entry:
    """One file found under a directory URL."""

    relpath: str  # "/"-separated, relative to the listed directory
    url: str  # the logical URL (the caller's spelling, before path mapping)
    size: int | None


def list_files(url: str) -> list[Entry]:
    """Every file under the directory ``url``, recursively, sorted by relative path.

    Hidden files and directories (a component starting with ``.``) are skipped.
    """
    fs, root = filesystem(url)
    if not fs.isdir(root):
        raise FileNotFoundError(f"{redact_url(url)} is not a directory")
    found = fs.find(root, detail=True)
    root_norm = root.rstrip("/")
    entries = []
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = posixpath.relpath(path, root_norm) if root_norm else path
        rel = rel.replace(os.sep, "/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        entries.append(Entry(relpath=rel, url=join(url, rel), size=info.get("size")))
    entries.sort(key=lambda e: e.relpath)
    return entries


def write_bytes(url: str, data: bytes) -> None:
    """Write one object atomically: readers see the old content or the new, never half.

    Local files go to a temporary sibling and are renamed over the target; object stores
    commit a PUT atomically by themselves.
    """
    path = local_path(url)
    try:
        if path is not None:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{secrets.token_hex(4)}"
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        fs, fpath = filesystem(url)
        parent = posixpath.dirname(fpath)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(fpath, data)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write {redact_url(url)}: {exc}") from exc


def write_file(url: str, data: bytes) -> None:
    """Write one object plainly (no temporary file, no fsync): for files inside a
    :class:`StagedDirectory`, which is published as a whole."""
    path = local_path(url)
    try:
        if path is not None:
            try:
                handle = open(path, "wb")
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                handle = open(path, "wb")
            with handle:
                handle.write(data)
            return
        fs, fpath = filesystem(url)
        fs.pipe_file(fpath, data)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write {redact_url(url)}: {exc}") from exc


def remove_tree(url: str) -> None:
    """Delete a directory and everything under it; missing is fine."""
    path = local_path(url)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, fpath = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(fpath):
            fs.rm(fpath, recursive=True)


# --------------------------------------------------------------------------- staged output


class StagedDirectory:
    """Build a directory out of sight, then publish it under its final URL in one step.

    Everything is written below :attr:`url`, a hidden sibling of the target. ``commit()``
    swaps it in: locally by two renames (old target aside, staging into place), on object
    stores by a recursive move (object stores cannot rename a prefix atomically, so
    writers there put their completion marker, e.g. ``manifest.json``, last). Leaving
    the ``with`` block without ``commit()`` — an exception, SIGTERM — removes the staging
    directory and leaves any previous content of the target untouched.
    """

    def __init__(self, final_url: str) -> None:
        self.final_url = final_url.rstrip("/")
        parent, name = posixpath.split(self.final_url)
        if not name:
            raise StorageError(f"output URL {redact_url(final_url)} has no directory name")
        self._parent = parent
        self._name = name
        self.url = f"{parent}/.{name}.staging-{secrets.token_hex(6)}"
        self.committed = False

    def __enter__(self) -> StagedDirectory:
        path = local_path(self.url)
        try:
            if path is not None:
                os.makedirs(path)
            else:
                fs, fpath = filesystem(self.url)
                fs.makedirs(fpath, exist_ok=True)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(
                f"cannot create the output directory next to {redact_url(self.final_url)}: {exc}"
            ) from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.committed:
            remove_tree(self.url)

    def commit(self) -> None:
        try:
            path = local_path(self.url)
            if path is not None:
                self._commit_local(path, local_path(self.final_url) or "")
            else:
                fs, staging = filesystem(self.url)
                _, final = filesystem(self.final_url)
                if fs.exists(final):
                    fs.rm(final, recursive=True)
                fs.mv(staging, final, recursive=True)
                if fs.exists(staging):  # some stores leave the emptied prefix behind
                    fs.rm(staging, recursive=True)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot publish {redact_url(self.final_url)}: {exc}") from exc
        self.committed = True

    def _commit_local(self, staging: str, final: str) -> None:
        old = None
        if os.path.lexists(final):
            old = os.path.join(os.path.dirname(final), f".{self._name}.old-{secrets.token_hex(6)}")
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except OSError:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(os.path.dirname(final))


def fsync_dir(path: str) -> None:
    """Make a rename durable (best effort; not every filesystem supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_chunks(url: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Stream an object in chunks (for archives and large downloads)."""
    with open_url(url, "rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                return
            yield chunk
