"""The ratings journal of `genforge review`: append-only JSON Lines, safe to share.

Each rating is one line, written the moment it is made with a single `write()` on a file
opened `O_APPEND`, under an exclusive `flock`, then flushed and `fsync`ed: two raters (two
browser tabs, two processes) never interleave a line, a crash or restart loses nothing that
was acknowledged, and a line torn by a power cut (no final newline) is ignored on reading
and cut off by the next writer.

The file is the `preference` FineTune's feedback format (genforge_trainer.methods): one rated
image per line ``{"image", "rating": "up"|"down", "label"|"prompt", "rater", "time"}``.
Undo appends ``{"image", "rater", "undo": true}``: the journal is never rewritten, and the
reader folds it — per (image, rater) the last line wins, an undo withdraws that rater's
rating of that image.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RATINGS = ("up", "down")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Journal:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A line torn by a power cut was never acknowledged (its fsync did not return):
            # cut it off, so the file stays whole lines and this one starts on its own.
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    data = f.read()
                if not data.endswith(b"\n"):
                    os.ftruncate(fd, data.rfind(b"\n") + 1)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        return record

    def rate(self, image: str, rating: str, *, rater: str, label: str | None = None,
             prompt: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
        if not rater:
            raise ValueError("a rater is required")
        record = {**(extra or {}), "image": image, "rating": rating, "rater": rater, "time": _now()}
        if label is not None:
            record["label"] = label
        if prompt is not None:
            record["prompt"] = prompt
        return self._append(record)

    def undo(self, image: str, *, rater: str) -> dict[str, Any]:
        return self._append({"image": image, "rater": rater, "undo": True, "time": _now()})

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return list(parse(self.path.read_bytes()))

    def current(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The standing rating per (image, rater), undos applied."""
        return fold(self.lines())


def parse(data: bytes) -> Iterable[dict[str, Any]]:
    """The complete lines of a journal (a final line without its newline was torn: skipped)."""
    text = data.decode("utf-8", errors="replace")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    for line in complete.splitlines():
        if line.strip():
            yield json.loads(line)


def fold(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    standing: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (str(record.get("image")), str(record.get("rater") or ""))
        if record.get("undo"):
            standing.pop(key, None)
        elif "rating" in record:
            standing[key] = record
    return standing
