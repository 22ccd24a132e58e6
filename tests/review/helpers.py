"""A review folder without torch (PNGs + samples.jsonl as `genforge generate` writes them) and
the review server run in a thread or its own process, for the review tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image

from genforge_operator.review.server import BackgroundServer as ThreadServer  # noqa: F401 - re-exported for tests

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def write_samples(folder: Path, *, model: str = "shapes", version: str = "v1", uri: str = "file:///data/m",
                  per_label: int = 3, labels: tuple[str, ...] = ("circle", "square")) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(per_label * len(labels)):
        name = f"sample-{i:04d}.png"
        colour = COLOURS["red" if i % 2 == 0 else "blue"]
        Image.new("RGB", (16, 16), colour).save(folder / name)
        records.append({"file": name, "seed": i, "label": labels[i % len(labels)], "prompt": None, "model": model,
                        "version": version, "uri": uri, "adapters": [], "steps": 2})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def call(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(payload) if "json" in kind else payload
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, payload


class ProcessServer:
    """`genforge review --uri … --dir …` in its own process (reusing the folder's samples)."""

    def __init__(self, folder: Path, uri: str | None, *extra: str, env: dict[str, str] | None = None,
                 model: str | None = None):
        self.log = folder.parent / f"review-{time.monotonic_ns()}.log"
        self.out = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        # The caller's kubeconfig only: not the operator's local API override or path map.
        child_env = {k: v for k, v in os.environ.items() if k not in ("GENFORGE_API_SERVER", "GENFORGE_PATH_MAP")}
        child_env.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "genforge_operator.cli", "review", *([model] if model else ["--uri", uri]),
             "--dir", str(folder), "--port", "0", *extra],
            stdout=self.out, stderr=subprocess.STDOUT, env=child_env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"review page: (http://\S+?)/(\?token=(\S+))?\s", self.log.read_text())
            if match:
                self.url, self.token = match.group(1), match.group(3)
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the review server did not start:\n{self.log.read_text()}")

    def stop(self, signal_number: int | None = None) -> None:
        if self.process.poll() is None:
            if signal_number is None:
                self.process.terminate()
            else:
                self.process.send_signal(signal_number)
            self.process.wait(30)
        self.out.close()
