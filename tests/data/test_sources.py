"""The one source reader: folders with sidecars and metadata tables, URL lists and archives over
HTTP, object-store errors, synthetic data."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest

from genforge_trainer.data.sources import normalize_license, open_source, read_image, read_metadata
from genforge_trainer.exitcodes import DataError

from .images import jpeg, png, textured, write


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("CC-BY-4.0", "cc-by-4.0"),
        ("CC BY 4.0", "cc-by-4.0"),
        ("cc_by_sa_4.0", "cc-by-sa-4.0"),
        ("CC0", "cc0-1.0"),
        ("", None),
        ("unknown", None),
        (None, None),
        ({"id": "MIT"}, "mit"),
    ],
)
def test_normalize_license(raw, expected):
    assert normalize_license(raw) == expected


def test_folder_with_sidecars_and_metadata_jsonl(tmp_path):
    write(
        tmp_path,
        {
            "a.jpg": jpeg(),
            "a.txt": "caption from txt\n",
            "a.json": json.dumps({"license": "CC0", "caption": "caption from json"}),
            "sub/b.png": png(),
            "sub/metadata.jsonl": json.dumps(
                {"file_name": "b.png", "text": "b caption", "license": "mit", "label": "bee"}
            )
            + "\n",
            "c.webp": b"x",
            "metadata.jsonl": json.dumps({"file_name": "c.webp", "caption": "c", "license": "gpl-3.0"})
            + "\n"
            + json.dumps({"file_name": "a.jpg", "caption": "from table", "license": "mit"})
            + "\n",
            "d.gif": b"GIF89a",
            "README.md": "not an item",
            "notes.txt": "an orphan sidecar is not an item",
        },
    )
    with open_source(f"file://{tmp_path}") as source:
        items = source.items
        assert [i.key for i in items] == ["a.jpg", "c.webp", "d.gif", "sub/b.png"]
        meta = [read_metadata(i) for i in items]
    # precedence: metadata table < .json sidecar < .txt sidecar (caption)
    assert (meta[0].caption, meta[0].license) == ("caption from txt", "cc0-1.0")
    assert (meta[1].caption, meta[1].license) == ("c", "gpl-3.0")
    assert items[2].unsupported
    assert (meta[3].caption, meta[3].license, meta[3].label) == ("b caption", "mit", "bee")
    assert items[0].source == f"file://{tmp_path}/a.jpg"


def test_metadata_csv(tmp_path):
    write(tmp_path, {"x.png": png(), "metadata.csv": "file_name,caption,license\nx.png,hello,CC-BY-4.0\n"})
    with open_source(str(tmp_path)) as source:
        (item,) = source.items
        assert read_metadata(item).license == "cc-by-4.0" and read_metadata(item).caption == "hello"


def test_broken_metadata_jsonl_is_a_data_error(tmp_path):
    write(tmp_path, {"x.png": png(), "metadata.jsonl": "{not json\n"})
    with pytest.raises(DataError, match="line 1"):
        open_source(f"file://{tmp_path}")


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist|not found"):
        open_source(f"file://{tmp_path}/nope")


def test_object_store_without_backend_is_a_data_error_naming_the_package():
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    with pytest.raises(DataError, match="s3fs"):
        open_source("s3://bucket/raw/")


def test_https_url_list_with_relative_and_absolute_entries(http_root):
    root, base = http_root
    write(root, {"img/1.jpg": jpeg(textured(seed=1)), "img/2.png": png(textured(seed=2))})
    write(
        root,
        {
            "list.txt": f"# my images\nimg/1.jpg\n{base}/img/2.png\n\n",
            "list.jsonl": json.dumps({"url": "img/1.jpg", "caption": "one", "license": "cc0"}) + "\n",
        },
    )
    with open_source(f"{base}/list.txt") as source:
        assert [i.url for i in source.items] == [f"{base}/img/1.jpg", f"{base}/img/2.png"]
        assert read_image(source.items[1]) == (root / "img/2.png").read_bytes()
    with open_source(f"{base}/list.jsonl") as source:
        (item,) = source.items
        assert (item.metadata.caption, item.metadata.license) == ("one", "cc0-1.0")


def test_https_source_never_records_credentials(http_root):
    root, base = http_root
    write(root, {"1.jpg": jpeg(), "list.txt": "1.jpg\n"})
    authed = base.replace("http://", "http://user:s3cret@")
    with open_source(f"{authed}/list.txt") as source:
        (item,) = source.items
        assert "s3cret" not in item.source and item.source == f"{base}/1.jpg"


def _tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


ARCHIVE_FILES = {
    "set/a.jpg": jpeg(textured(seed=3)),
    "set/a.json": json.dumps({"caption": "a", "license": "cc0-1.0"}).encode(),
    "set/b.png": png(textured(seed=4)),
    "set/metadata.jsonl": json.dumps({"file_name": "b.png", "caption": "b", "license": "mit"}).encode(),
}


@pytest.mark.parametrize(
    "name,make", [("data.tar.gz", _tar), ("data.tar", lambda f: _tar(f, "w")), ("data.zip", _zip)]
)
def test_https_archive(http_root, name, make):
    root, base = http_root
    write(root, {name: make(ARCHIVE_FILES)})
    with open_source(f"{base}/{name}") as source:
        assert [i.source for i in source.items] == [f"{base}/{name}#set/a.jpg", f"{base}/{name}#set/b.png"]
        assert [read_metadata(i).caption for i in source.items] == ["a", "b"]
        assert read_image(source.items[0]) == ARCHIVE_FILES["set/a.jpg"]
        tempdir = source._tempdir
    assert tempdir is not None and not __import__("os").path.exists(tempdir)


def test_archive_members_cannot_escape(tmp_path):
    evil = _tar({"../../escaped.png": png(), "ok.png": png()})
    write(tmp_path, {"evil.tar.gz": evil})
    with pytest.raises(DataError):
        open_source(f"file://{tmp_path}/evil.tar.gz")
    assert not (tmp_path.parent / "escaped.png").exists()


def test_synthetic_source():
    with open_source("synthetic://shapes?count=5&size=16&seed=2") as source:
        assert len(source.items) == 5
        meta = read_metadata(source.items[0])
        assert meta.license == "cc0-1.0" and meta.label in meta.caption
        assert read_image(source.items[0]).size == (16, 16)


def test_an_html_page_is_not_a_url_list(http_root):
    root, base = http_root
    write(root, {"a.jpg": jpeg()})
    with pytest.raises(DataError, match="HTML page"):
        open_source(f"{base}/")  # the server's directory listing


def test_https_images_fetched_by_the_worker_pool(http_root, tmp_path):
    from genforge_trainer.data.prepare import prepare
    from genforge_trainer.data.process import Settings

    root, base = http_root
    write(root, {f"img/{i:02d}.png": png(textured((40, 40), seed=100 + i)) for i in range(30)})
    write(root, {"list.txt": "".join(f"img/{i:02d}.png\n" for i in range(30)) + "img/missing.png\n"})
    manifest = prepare(
        f"{base}/list.txt", f"file://{tmp_path}/out", Settings(resolution=16), workers=2, progress_bar=False
    )
    assert manifest["items"]["total"] == 31 and manifest["items"]["kept"] == 30
    assert manifest["items"]["dropped"]["corrupt"] == 1 and manifest["dropDetails"] == {"unreadable": 1}
