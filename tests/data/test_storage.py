"""The trainer's storage abstraction: URL resolution, the local path map, atomic writes and
staged publishing, on the local filesystem and on fsspec's in-memory store."""

from __future__ import annotations

import json
import os

import fsspec
import pytest

from genforge_trainer import storage
from genforge_trainer.exitcodes import StorageError

MAP = {"/data": "/home/me/gf/data", "/data/datasets": "/mnt/fast/datasets", "/etc/genforge": "/tmp/cfg"}


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/data/runs/x", "/home/me/gf/data/runs/x"),
        ("/data", "/home/me/gf/data"),
        ("/data/datasets/shapes", "/mnt/fast/datasets/shapes"),  # longest prefix wins
        ("/database/x", "/database/x"),  # whole components only
        ("/etc/genforge/run.json", "/tmp/cfg/run.json"),
        ("/elsewhere/file", "/elsewhere/file"),
    ],
)
def test_path_map_longest_prefix(path, expected):
    assert storage.map_local_path(path, MAP) == expected


@pytest.mark.parametrize(
    "url,expected",
    [
        ("file:///data/datasets/a", "file:///mnt/fast/datasets/a"),
        ("/data/runs/r", "file:///home/me/gf/data/runs/r"),
        ("s3://bucket/data/x", "s3://bucket/data/x"),
        ("memory://data/x", "memory://data/x"),
    ],
)
def test_resolve_applies_path_map_to_local_urls_only(monkeypatch, url, expected):
    monkeypatch.setenv(storage.PATH_MAP_ENV, json.dumps(MAP))
    assert storage.resolve(url) == expected


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"/data": 3}'])
def test_bad_path_map_is_a_storage_error(monkeypatch, raw):
    monkeypatch.setenv(storage.PATH_MAP_ENV, raw)
    with pytest.raises(StorageError, match="GENFORGE_PATH_MAP"):
        storage.resolve("/data/x")


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://user:secret@host.example/a.tar", "https://host.example/a.tar"),
        (
            "https://host.example/a.jpg?X-Amz-Signature=abc&X-Amz-Credential=k",
            "https://host.example/a.jpg?REDACTED",
        ),
        ("s3://bucket/key", "s3://bucket/key"),
        ("file:///data/x", "file:///data/x"),
        ("http://127.0.0.1:8080/list.txt", "http://127.0.0.1:8080/list.txt"),
    ],
)
def test_redact_url_removes_credentials(url, expected):
    assert storage.redact_url(url) == expected


@pytest.mark.parametrize("scheme,package", [("s3", "s3fs"), ("gs", "gcsfs")])
def test_missing_object_store_backend_names_the_package(scheme, package):
    try:
        __import__(package)
        pytest.skip(f"{package} is installed")
    except ImportError:
        pass
    with pytest.raises(StorageError, match=f"pip install {package}"):
        storage.filesystem(f"{scheme}://bucket/prefix")


def test_write_bytes_is_atomic_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    storage.write_bytes(f"file://{target}", b"one")
    storage.write_bytes(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["file.bin"]  # no temporary left behind


def test_write_bytes_to_unwritable_location_is_a_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot write"):
        storage.write_bytes(f"file://{blocker}/child", b"data")


def test_list_files_recursive_sorted_and_skips_hidden(tmp_path):
    for name in ["b.png", "a/c.jpg", ".hidden.png", ".git/x", "a/.DS_Store"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    entries = storage.list_files(f"file://{tmp_path}")
    assert [e.relpath for e in entries] == ["a/c.jpg", "b.png"]
    assert entries[0].url == f"file://{tmp_path}/a/c.jpg"


def test_list_files_keeps_the_callers_spelling_under_a_path_map(tmp_path, monkeypatch):
    (tmp_path / "x.png").write_bytes(b"x")
    monkeypatch.setenv(storage.PATH_MAP_ENV, json.dumps({"/data": str(tmp_path)}))
    assert [e.url for e in storage.list_files("file:///data")] == ["file:///data/x.png"]
    assert storage.read_bytes("file:///data/x.png") == b"x"


@pytest.mark.parametrize("base", ["file", "memory"])
def test_staged_directory_publishes_whole_or_nothing(tmp_path, base):
    root = f"file://{tmp_path}" if base == "file" else "memory://gf-test-staged"
    final = f"{root}/out/dataset"
    storage.write_bytes(f"{final}/old.txt", b"previous")

    with pytest.raises(RuntimeError), storage.StagedDirectory(final) as staged:
        storage.write_bytes(f"{staged.url}/half.txt", b"half")
        raise RuntimeError("killed half-way")
    assert storage.read_bytes(f"{final}/old.txt") == b"previous"
    assert not storage.exists(staged.url)

    with storage.StagedDirectory(final) as staged:
        storage.write_file(f"{staged.url}/images/1.png", b"img")
        storage.write_bytes(f"{staged.url}/manifest.json", b"{}")
        staged.commit()
    assert storage.read_bytes(f"{final}/images/1.png") == b"img"
    assert not storage.exists(f"{final}/old.txt")
    assert not storage.exists(staged.url)
    parent = storage.filesystem(f"{root}/out")
    leftovers = [p for p in parent[0].ls(parent[1]) if ".staging-" in p or ".old-" in p]
    assert leftovers == []


def test_memory_urls_round_trip():
    storage.write_bytes("memory://gf-test/x/y.bin", b"abc")
    assert storage.read_bytes("memory://gf-test/x/y.bin") == b"abc"
    with pytest.raises(StorageError, match="larger than 2 bytes"):
        storage.read_bytes("memory://gf-test/x/y.bin", max_bytes=2)
    fsspec.filesystem("memory").rm("/gf-test", recursive=True)
