"""A progress server that cannot bind its address is not a training failure.

In a cluster a pod's IP is its own, so `[Errno 98] Address already in use` on
`$GENFORGE_METRICS_HOST:$GENFORGE_METRICS_PORT` is an infrastructure fault (a sidecar on the
port, a host-network clash, locally an address whose previous holder is still exiting); the
Job's podFailurePolicy has no exit code for it, so the trainer must not exit over it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request

import pytest

from genforge_trainer import cli
from genforge_trainer.exitcodes import ExitCode
from genforge_trainer.progress import ProgressReporter

from .builders import make_document


@pytest.fixture
def taken():
    """A port on 127.0.0.1 someone else listens on (as the trainer's server would: SO_REUSEADDR)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def _progress(address) -> dict:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/progress", timeout=5) as response:
        return json.loads(response.read())


def test_an_address_in_use_falls_back_to_a_free_port_with_a_warning(taken, caplog):
    port = taken.getsockname()[1]
    reporter = ProgressReporter(phase="train", total_steps=10)
    try:
        with caplog.at_level(logging.WARNING, logger="genforge_trainer.progress"):
            address = reporter.serve(host="127.0.0.1", port=port, bind_retry=0.2)  # before: OSError, Errno 98
        assert address is not None and address[0] == "127.0.0.1" and address[1] not in (0, port)
        reporter.update(step=3)
        assert _progress(address)["step"] == 3
        assert any(f"127.0.0.1:{port}" in r.getMessage() and "instead" in r.getMessage() for r in caplog.records)
    finally:
        reporter.close()


def test_an_address_freed_while_retrying_is_served(taken):
    port = taken.getsockname()[1]
    threading.Timer(0.3, taken.close).start()  # the previous holder finishes exiting
    reporter = ProgressReporter()
    try:
        started = time.monotonic()
        assert reporter.serve(host="127.0.0.1", port=port, bind_retry=10) == ("127.0.0.1", port)
        assert time.monotonic() - started < 5
    finally:
        reporter.close()


def test_an_address_that_cannot_be_bound_at_all_leaves_training_unserved(caplog):
    reporter = ProgressReporter()
    try:
        with caplog.at_level(logging.WARNING, logger="genforge_trainer.progress"):
            assert reporter.serve(host="192.0.2.1", port=9090, bind_retry=0.1) is None  # not an address of ours
        assert "training goes on without them" in caplog.text
    finally:
        reporter.close()


def test_the_command_succeeds_when_its_metrics_port_is_taken(taken, tmp_path, monkeypatch):
    """`genforge-trainer` end to end (the command itself stubbed): exit 0, not 1."""
    seen = {}

    def command(spec, reporter):
        reporter.update(step=5)
        seen["address"] = reporter.address
        return {"step": 5}

    config = tmp_path / "run.json"
    config.write_text(json.dumps(make_document()))
    monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("GENFORGE_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("GENFORGE_METRICS_PORT", str(taken.getsockname()[1]))
    monkeypatch.setattr("genforge_trainer.progress.BIND_RETRY_SECONDS", 0.2, raising=False)
    monkeypatch.setattr(cli, "_runner", lambda name: command)
    code, result = cli.run_command("train", str(config))
    assert code == ExitCode.OK and result["outcome"] == "Succeeded", result
    assert seen["address"][1] != taken.getsockname()[1]
    assert json.loads((tmp_path / "termination-log").read_text())["outcome"] == "Succeeded"
