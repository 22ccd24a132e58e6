"""Progress and result back channels to the operator (docs/contract.md).

* ``ProgressReporter`` serves ``/progress`` (JSON) and ``/metrics`` (Prometheus text, gauges
  prefixed ``genforge_trainer_``) on ``$GENFORGE_METRICS_HOST:$GENFORGE_METRICS_PORT``
  (default ``0.0.0.0:9090``; port 0 picks a free port, see ``.address``). Chosen over a
  progress file because the operator then needs no access to run storage, and over the
  Kubernetes API because trainer pods get no API credentials. The server is a side channel:
  when its address cannot be bound (the port is taken: an infrastructure fault, since a
  pod's IP is its own) it retries for a few seconds, then serves on a free port, else not
  at all, with a warning; it never fails the run.
* ``write_termination_message`` writes the compact result JSON (<= 4096 bytes, the
  kubelet's limit) to ``$GENFORGE_TERMINATION_LOG`` (default ``/dev/termination-log``).
* ``GracefulStop`` turns SIGTERM into a flag the training loop checks between steps (it
  then checkpoints and exits 143); commands that do not check it are interrupted at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from genforge_trainer.exitcodes import Stopped

log = logging.getLogger(__name__)

TERMINATION_MESSAGE_LIMIT = 4096
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
PREFIX = "genforge_trainer_"
#: How long ``serve`` retries an address in use (the previous holder may still be exiting).
BIND_RETRY_SECONDS = 5.0


class TrainerMetrics:
    """Every Prometheus metric the trainer exports, in one place, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.step = Gauge(PREFIX + "step", "Optimizer steps completed (items done for prepare).", registry=r)
        self.total_steps = Gauge(PREFIX + "total_steps", "Optimizer steps the run will take.", registry=r)
        self.loss = Gauge(
            PREFIX + "loss", "Training loss, smoothed over the last logging window.", registry=r
        )
        self.samples_per_second = Gauge(
            PREFIX + "samples_per_second",
            "Training throughput over the last logging window, all processes.",
            registry=r,
        )
        self.learning_rate = Gauge(PREFIX + "learning_rate", "Current learning rate.", registry=r)
        self.eta_seconds = Gauge(PREFIX + "eta_seconds", "Estimated seconds until the last step.", registry=r)
        self.checkpoint_step = Gauge(
            PREFIX + "checkpoint_step", "Step of the latest complete checkpoint.", registry=r
        )
        self.samples = Counter(PREFIX + "samples", "Training samples processed by this run.", registry=r)
        self.gpu_memory_allocated_bytes = Gauge(
            PREFIX + "gpu_memory_allocated_bytes",
            "GPU memory allocated by tensors on this process's device.",
            registry=r,
        )
        self.gpu_memory_max_allocated_bytes = Gauge(
            PREFIX + "gpu_memory_max_allocated_bytes",
            "Peak GPU memory allocated on this process's device.",
            registry=r,
        )


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressReporter:
    """The single source of the run's live progress, shared by the loop, logs and HTTP.

    Thread-safe; ``update`` is cheap (called every step). ``serve()`` starts the HTTP
    server in a daemon thread; ``close()`` stops it.
    """

    def __init__(self, phase: str = "train", total_steps: int = 0, *, clock=time.monotonic) -> None:
        self.metrics = TrainerMetrics()
        self._lock = threading.Lock()
        self._clock = clock
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = clock()
        self._state: dict[str, Any] = {
            "phase": phase,
            "step": 0,
            "totalSteps": total_steps,
            "loss": None,
            "samplesPerSecond": None,
            "learningRate": None,
            "etaSeconds": None,
            "checkpointStep": None,
            "updatedAt": _utc_now(),
        }
        self.metrics.total_steps.set(total_steps)
        self.stop = GracefulStop()

    # ------------------------------------------------------------------ state
    def update(self, **fields: Any) -> None:
        """Set progress fields (contract names: step, totalSteps, loss, samplesPerSecond,
        learningRate, checkpointStep, phase, or extra keys); ETA is derived."""
        with self._lock:
            state = self._state
            state.update({k: v for k, v in fields.items()})
            step, total = state.get("step") or 0, state.get("totalSteps") or 0
            sps = state.get("samplesPerSecond")
            if "etaSeconds" not in fields:
                state["etaSeconds"] = self._eta(step, total)
            state["updatedAt"] = _utc_now()
        m = self.metrics
        m.step.set(step)
        m.total_steps.set(total)
        if state.get("loss") is not None:
            m.loss.set(state["loss"])
        if sps is not None:
            m.samples_per_second.set(sps)
        if state.get("learningRate") is not None:
            m.learning_rate.set(state["learningRate"])
        if state.get("etaSeconds") is not None:
            m.eta_seconds.set(state["etaSeconds"])
        if state.get("checkpointStep") is not None:
            m.checkpoint_step.set(state["checkpointStep"])

    def _eta(self, step: int, total: int) -> float | None:
        # Based on the rate since this reporter's first step update (steps, not samples,
        # so resumed runs and prepare's items both work).
        if step <= 0 or total <= 0:
            return None
        first = self._state.setdefault("_firstStep", (step, self._clock()))
        done, elapsed = step - first[0], self._clock() - first[1]
        if done <= 0 or elapsed <= 0:
            return None
        return round(max(total - step, 0) * elapsed / done, 1)

    def add_samples(self, count: int) -> None:
        self.metrics.samples.inc(count)

    def record_gpu_memory(self, device: Any) -> None:
        try:
            import torch

            if device is not None and getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
                self.metrics.gpu_memory_allocated_bytes.set(torch.cuda.memory_allocated(device))
                self.metrics.gpu_memory_max_allocated_bytes.set(torch.cuda.max_memory_allocated(device))
        except Exception:  # metrics must never break training
            log.debug("GPU memory metrics unavailable", exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        """The /progress JSON object."""
        with self._lock:
            return {k: v for k, v in self._state.items() if not k.startswith("_")}

    # ------------------------------------------------------------------ HTTP
    def serve(
        self, host: str | None = None, port: int | None = None, *, bind_retry: float | None = None
    ) -> tuple[str, int] | None:
        """Start serving; host/port default to $GENFORGE_METRICS_HOST/$GENFORGE_METRICS_PORT.

        Returns the address served, or None when nothing could be bound. A bind failure is
        not the run's failure: an address in use is retried for ``bind_retry`` seconds
        (default ``BIND_RETRY_SECONDS``), then
        a free port of the same host is served instead (the operator, which polls the pod's
        metrics port, sees no progress until the run ends; the result still reaches it
        through the termination message), and if that fails too the run goes on unserved.
        """
        host = host if host is not None else os.environ.get("GENFORGE_METRICS_HOST", "0.0.0.0")
        if port is None:
            try:
                port = int(os.environ.get("GENFORGE_METRICS_PORT", "9090"))
            except ValueError:
                log.warning("GENFORGE_METRICS_PORT=%r is not a port: serving on a free one",
                            os.environ.get("GENFORGE_METRICS_PORT"))
                port = 0
        handler = self._handler()
        try:
            self._server = self._bind(host, port, handler,
                                      BIND_RETRY_SECONDS if bind_retry is None else bind_retry)
        except OSError as exc:
            if port == 0:
                log.warning("cannot serve /progress and /metrics on %s: %s; training goes on without them",
                            host, exc)
                return None
            try:
                self._server = ThreadingHTTPServer((host, 0), handler)
            except OSError as again:
                log.warning("cannot serve /progress and /metrics on %s:%d (%s) nor on a free port (%s); "
                            "training goes on without them", host, port, exc, again)
                return None
            log.warning("cannot serve /progress and /metrics on %s:%d (%s): serving on %s:%d instead; the "
                        "operator polls :%d and sees no live progress for this run",
                        host, port, exc, *self.address, port)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="genforge-progress", daemon=True
        )
        self._thread.start()
        log.info("serving /progress and /metrics on %s:%d", *self.address)
        return self.address

    def _bind(self, host: str, port: int, handler: type[BaseHTTPRequestHandler],
              retry: float) -> ThreadingHTTPServer:
        """The server on host:port, retrying "address in use" for `retry` seconds (OSError after)."""
        deadline = time.monotonic() + retry
        delay = 0.05
        while True:
            try:
                return ThreadingHTTPServer((host, port), handler)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                if delay == 0.05:
                    log.info("%s:%d is in use (%s); retrying for up to %.0f s", host, port, exc, retry)
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 1.0)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/progress":
                    body, ctype = json.dumps(reporter.snapshot()).encode(), "application/json"
                elif path == "/metrics":
                    body, ctype = generate_latest(reporter.metrics.registry), CONTENT_TYPE_LATEST
                elif path in ("/healthz", "/"):
                    body, ctype = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("progress http: " + format, *args)

        return Handler

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("not serving")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --------------------------------------------------------------------------- termination


def compact_termination_message(result: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """JSON for the termination message, guaranteed <= limit bytes: long strings are
    shortened first (``message`` first), then optional fields are dropped."""
    doc = {k: v for k, v in result.items() if v is not None}

    def encoded(d: dict[str, Any]) -> str:
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False, default=str)

    text = encoded(doc)
    if len(text.encode()) <= limit:
        return text
    for key in ("message", "reason"):
        if isinstance(doc.get(key), str):
            excess = len(text.encode()) - limit
            keep = max(len(doc[key].encode()) - excess - 16, 0)
            doc[key] = doc[key].encode()[:keep].decode(errors="ignore") + "…"
            text = encoded(doc)
            if len(text.encode()) <= limit:
                return text
    for key in ("metrics", "message", "items", "samples", "checkpoint", "artifact", "reason"):
        doc.pop(key, None)
        text = encoded(doc)
        if len(text.encode()) <= limit:
            return text
    return encoded({"outcome": result.get("outcome", "Failed")})


def write_termination_message(result: dict[str, Any], path: str | None = None) -> str:
    """Write the result to the termination log; returns what was written. Never raises:
    losing the message must not change the exit code."""
    path = path or os.environ.get("GENFORGE_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)
    text = compact_termination_message(result)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        log.warning("could not write termination message to %s: %s", path, exc)
    return text


# --------------------------------------------------------------------------- SIGTERM


class GracefulStop:
    """SIGTERM handling.

    ``install(graceful=True)``: SIGTERM only sets ``requested``; the training loop checks it
    between steps, checkpoints and raises ``Stopped`` (exit 143). With ``graceful=False``
    (commands that cannot resume) the handler raises ``Stopped`` at once in the main thread.
    A second SIGTERM always interrupts at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.graceful = False
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

    def install(self, graceful: bool = True) -> GracefulStop:
        self.graceful = graceful
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        already = self.requested
        self._event.set()
        if not self.graceful or already:
            raise Stopped("stopped on SIGTERM" + (" (second signal)" if already else ""))
        log.warning("SIGTERM received: checkpointing and stopping after the current step")
