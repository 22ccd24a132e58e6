"""The web app of `genforge review`: a grid of samples, 👍 / 👎, undo, counts, and
"fine-tune on these ratings". aiohttp, one HTML page with plain JS (review/page.html).

One server serves one folder: the samples of one model version (``samples.jsonl`` + PNGs,
as `genforge generate` writes them) and that folder's ratings journal (``ratings.jsonl``,
review/journal.py). Ratings therefore land next to their images, and never in another
model's file; an image is named only by its entry in ``samples.jsonl`` (no path from the
request reaches the file system).

HTTP API (JSON; what the page uses, and what scripts can use):

* ``GET  /api/state?rater=R`` — model, version, samples (with R's rating and everyone's
  counts), counts per label, the FineTune offer;
* ``POST /api/rate {"image", "rating": "up"|"down", "rater"}`` — stored (flushed, fsynced)
  before the answer;
* ``POST /api/undo {"rater"}`` — withdraws R's most recent standing rating;
* ``GET  /images/<file>`` — a sample image;
* ``GET  /api/finetune.yaml`` — the `preference` FineTune for these ratings, as YAML;
* ``POST /api/finetune {}`` — creates it with the server's credentials → ``{name, namespace}``;
* ``GET  /api/finetune/<name>`` — its phase and progress.

Security: bound to 127.0.0.1 unless told otherwise; a loopback server answers only requests
whose ``Host`` is a loopback name (DNS rebinding); any other bind needs a token on every
request (``Authorization: Bearer``, ``X-Genforge-Token`` or ``?token=``); POSTs must be
``application/json`` and same-origin (no cross-site form posts).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .finetune import ClusterFineTunes, FineTuneRequest, manifest, to_yaml
from .journal import RATINGS, Journal

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
RATINGS_FILE = "ratings.jsonl"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
MAX_RATER = 64


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / SAMPLES
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: generate samples first (genforge generate -o {folder})")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ReviewApp:
    def __init__(
        self,
        folder: str | Path,
        *,
        token: str | None = None,
        loopback_only: bool = True,
        finetune: FineTuneRequest | None = None,
        finetune_unavailable: str | None = None,
        cluster: Callable[[], ClusterFineTunes] | None = None,
        default_rater: str = "",
    ):
        self.folder = Path(folder)
        self.samples = read_samples(self.folder)
        self.by_file = {record["file"]: record for record in self.samples}
        first = self.samples[0] if self.samples else {}
        self.model, self.version = str(first.get("model") or ""), str(first.get("version") or "")
        self.journal = Journal(self.folder / RATINGS_FILE)
        self.token = token
        self.loopback_only = loopback_only
        self.finetune = finetune
        self.finetune_unavailable = finetune_unavailable
        self._cluster_factory = cluster
        self._cluster: ClusterFineTunes | None = None
        self.default_rater = default_rater
        self.created: list[str] = []

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.add_routes([
            web.get("/", self.page),
            web.get("/api/state", self.state),
            web.post("/api/rate", self.rate),
            web.post("/api/undo", self.undo),
            web.get("/images/{name}", self.image),
            web.get("/api/finetune.yaml", self.finetune_yaml),
            web.post("/api/finetune", self.create_finetune),
            web.get("/api/finetune/{name}", self.finetune_status),
        ])
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
            else (request.host or "").split("]")[0] + "]"
        if self.loopback_only and not is_loopback(host):
            return _error(421, f"this server answers only on a loopback address, not {request.host!r}")
        if self.token is not None:
            given = request.headers.get("X-Genforge-Token") or request.query.get("token") or ""
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer "):]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(401, "a token is required (printed once when the server started)")
        if request.method == "POST":
            if request.content_type != "application/json":
                return _error(415, "POST a JSON body (Content-Type: application/json)")
            origin = request.headers.get("Origin")
            if origin and urlsplit(origin).netloc != request.host:
                return _error(403, f"cross-origin request from {origin} refused")
        response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    # ------------------------------------------------------------------ reads
    async def page(self, request: web.Request) -> web.Response:
        html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        response = web.Response(text=html, content_type="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return response

    def _standing(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {key: value for key, value in self.journal.current().items() if key[0] in self.by_file}

    def _counts(self, standing: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
        per_label: dict[str, dict[str, int]] = {}
        for record in self.samples:
            per_label.setdefault(_group(record), {"up": 0, "down": 0})
        for (image, _rater), record in standing.items():
            per_label[_group(self.by_file[image])][record["rating"]] += 1
        total = {rating: sum(c[rating] for c in per_label.values()) for rating in RATINGS}
        return {"perLabel": per_label, "total": total}

    async def state(self, request: web.Request) -> web.Response:
        rater = request.query.get("rater", "")
        standing = await asyncio.to_thread(self._standing)
        samples = []
        for record in self.samples:
            ups = sum(1 for (image, _), r in standing.items() if image == record["file"] and r["rating"] == "up")
            downs = sum(1 for (image, _), r in standing.items() if image == record["file"] and r["rating"] == "down")
            mine = standing.get((record["file"], rater))
            samples.append({"file": record["file"], "label": record.get("label"), "prompt": record.get("prompt"),
                            "seed": record.get("seed"), "rating": mine["rating"] if mine else None,
                            "up": ups, "down": downs})
        return web.json_response({
            "model": self.model, "version": self.version, "defaultRater": self.default_rater,
            "samples": samples, "counts": self._counts(standing),
            "finetune": {"available": self.finetune is not None and self.finetune_unavailable is None,
                         "reason": self.finetune_unavailable, "created": self.created,
                         "feedbackUri": self.finetune.feedback_uri if self.finetune else None},
        })

    async def image(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.by_file:  # only files listed in samples.jsonl: no traversal
            return _error(404, "no such sample")
        return web.FileResponse(self.folder / self.by_file[name]["file"],
                                headers={"Content-Type": "image/png"})

    # ------------------------------------------------------------------ writes
    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"not JSON: {exc}"}),
                                     content_type="application/json") from exc
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        return body

    def _rater(self, body: dict[str, Any]) -> str:
        rater = str(body.get("rater") or self.default_rater or "").strip()
        if not rater:
            raise _bad("a rater name is required")
        if len(rater) > MAX_RATER or any(ord(c) < 32 for c in rater):
            raise _bad(f"a rater name is at most {MAX_RATER} printable characters")
        return rater

    async def rate(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        image, rating = body.get("image"), body.get("rating")
        if image not in self.by_file:
            raise _bad(f"{image!r} is not one of this folder's samples")
        if rating not in RATINGS:
            raise _bad(f"rating must be one of {', '.join(RATINGS)}")
        rater = self._rater(body)
        sample = self.by_file[image]
        record = await asyncio.to_thread(
            self.journal.rate, image, rating, rater=rater,
            label=sample.get("label"), prompt=sample.get("prompt"),
            extra={"model": self.model, "version": self.version})
        standing = await asyncio.to_thread(self._standing)
        return web.json_response({"stored": record, "counts": self._counts(standing)})

    async def undo(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        rater = self._rater(body)

        def withdraw() -> str | None:
            # The rater's most recent rating that still stands.
            lines = self.journal.lines()
            standing_at: dict[str, int] = {}
            for index, record in enumerate(lines):
                if record.get("rater") != rater or record.get("image") not in self.by_file:
                    continue
                if record.get("undo"):
                    standing_at.pop(record["image"], None)
                elif "rating" in record:
                    standing_at[record["image"]] = index
            if not standing_at:
                return None
            image = max(standing_at, key=standing_at.__getitem__)
            self.journal.undo(image, rater=rater)
            return image

        image = await asyncio.to_thread(withdraw)
        standing = await asyncio.to_thread(self._standing)
        return web.json_response({"undone": image, "counts": self._counts(standing)})

    # ------------------------------------------------------------------ fine-tune
    def _offer(self) -> FineTuneRequest:
        if self.finetune is None:
            raise web.HTTPConflict(text=json.dumps({"error": self.finetune_unavailable or "no model version known"}),
                                   content_type="application/json")
        return self.finetune

    async def finetune_yaml(self, request: web.Request) -> web.Response:
        return web.Response(text=to_yaml(manifest(self._offer())), content_type="application/yaml")

    async def create_finetune(self, request: web.Request) -> web.Response:
        await self._body(request)
        offer = self._offer()
        if self.finetune_unavailable:
            return _error(409, self.finetune_unavailable)
        standing = await asyncio.to_thread(self._standing)
        # The preference method pairs a 👍 with a 👎 of the same label (or prompt).
        rated: dict[str, set[str]] = {}
        for (image, _), record in standing.items():
            rated.setdefault(_group(self.by_file[image]), set()).add(record["rating"])
        if not any(ratings == set(RATINGS) for ratings in rated.values()):
            return _error(409, "rate at least one image 👍 and one 👎 of the same label first: "
                               "the fine-tune learns from such pairs")
        try:
            created = await asyncio.to_thread(lambda: self._clusters().create(offer))
        except Exception as exc:  # noqa: BLE001 - the API's answer goes to the page as it is
            status = getattr(exc, "status", None)
            reason = getattr(exc, "body", None) or str(exc)
            try:
                reason = json.loads(reason).get("message", reason)
            except (TypeError, ValueError, AttributeError):
                pass
            log.warning("creating the FineTune failed: %s", reason)
            return _error(403 if status == 403 else 502, f"the Kubernetes API refused the FineTune: {reason}")
        name = created["metadata"]["name"]
        self.created.append(name)
        print(f"created FineTune {offer.namespace}/{name} (follow it: kubectl get finetune -n {offer.namespace} "
              f"{name} -w); as YAML:\n{to_yaml(created_manifest(offer, name))}", flush=True)
        return web.json_response({"name": name, "namespace": offer.namespace,
                                  "yaml": to_yaml(created_manifest(offer, name)),
                                  "follow": f"kubectl get finetune -n {offer.namespace} {name} -w"})

    async def finetune_status(self, request: web.Request) -> web.Response:
        offer = self._offer()
        name = request.match_info["name"]
        if name not in self.created:
            return _error(404, "not a FineTune this server created")
        body = await asyncio.to_thread(lambda: self._clusters().get(offer.namespace, name))
        if body is None:
            return _error(404, f"FineTune {offer.namespace}/{name} is gone")
        status = body.get("status") or {}
        progress = status.get("progress") or {}
        reason = next((c.get("message") for c in status.get("conditions") or []
                       if c.get("type") == "Ready" and c.get("status") != "True"), None)
        return web.json_response({"name": name, "phase": status.get("phase") or "Pending",
                                  "step": progress.get("step"), "totalSteps": progress.get("totalSteps"),
                                  "loss": progress.get("loss"), "version": status.get("version"),
                                  "message": reason})

    def _clusters(self) -> ClusterFineTunes:
        if self._cluster is None:
            if self._cluster_factory is None:
                raise RuntimeError("no Kubernetes API configured")
            self._cluster = self._cluster_factory()
        return self._cluster


def created_manifest(offer: FineTuneRequest, name: str) -> dict[str, Any]:
    body = manifest(offer)
    body["metadata"]["name"] = name
    return body


def _group(record: dict[str, Any]) -> str:
    return str(record.get("label") or record.get("prompt") or "")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


class BackgroundServer:
    """A ReviewApp served from a thread of its own (its own event loop) on ``host``:0 — for the
    demo's feedback round and for tests, which drive the page over HTTP as a browser would."""

    def __init__(self, review: ReviewApp, host: str = "127.0.0.1"):
        import threading

        self.review = review
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.runner = web.AppRunner(review.app(), access_log=None)
                self.loop.run_until_complete(self.runner.setup())
                self.loop.run_until_complete(web.TCPSite(self.runner, host, 0).start())
            except BaseException as exc:  # noqa: BLE001 - reported to the constructor
                failed.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="genforge-review", daemon=True)
        self.thread.start()
        if not ready.wait(30) or failed:
            raise RuntimeError(f"the review server did not start: {failed[0] if failed else 'timeout'}")
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
