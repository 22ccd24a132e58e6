"""Back channels: /progress and /metrics over HTTP, the termination message, SIGTERM, exit codes."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from genforge_trainer import cli
from genforge_trainer.exitcodes import ExitCode, Stopped
from genforge_trainer.progress import (
    TERMINATION_MESSAGE_LIMIT,
    GracefulStop,
    ProgressReporter,
    compact_termination_message,
    write_termination_message,
)

from .builders import make_document


def _get(address, path):
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
        return response.headers.get("Content-Type"), response.read().decode()


@pytest.fixture
def reporter():
    reporter = ProgressReporter(phase="train", total_steps=2000)
    yield reporter
    reporter.close()


def test_progress_endpoint_serves_contract_json(reporter):
    address = reporter.serve(host="127.0.0.1", port=0)
    reporter.update(step=120, loss=0.081, samplesPerSecond=52.3, learningRate=1e-4, checkpointStep=100)
    ctype, body = _get(address, "/progress")
    assert ctype == "application/json"
    progress = json.loads(body)
    assert {
        k: progress[k]
        for k in ("phase", "step", "totalSteps", "loss", "samplesPerSecond", "learningRate", "checkpointStep")
    } == {
        "phase": "train",
        "step": 120,
        "totalSteps": 2000,
        "loss": 0.081,
        "samplesPerSecond": 52.3,
        "learningRate": 1e-4,
        "checkpointStep": 100,
    }
    assert "etaSeconds" in progress and progress["updatedAt"].endswith("Z")


def test_metrics_endpoint_serves_prefixed_prometheus_gauges(reporter):
    address = reporter.serve(host="127.0.0.1", port=0)
    reporter.update(step=7, loss=0.5, samplesPerSecond=10.0, learningRate=2e-4)
    reporter.add_samples(56)
    _, body = _get(address, "/metrics")
    assert "genforge_trainer_step 7.0" in body
    assert "genforge_trainer_total_steps 2000.0" in body
    assert "genforge_trainer_loss 0.5" in body
    assert "genforge_trainer_samples_per_second 10.0" in body
    assert "genforge_trainer_learning_rate 0.0002" in body
    assert "genforge_trainer_samples_total 56.0" in body
    names = [line.split()[2] for line in body.splitlines() if line.startswith("# TYPE")]
    assert names and all(name.startswith("genforge_trainer_") for name in names)


def test_eta_follows_the_step_rate():
    now = [0.0]
    reporter = ProgressReporter(total_steps=100, clock=lambda: now[0])
    reporter.update(step=10)
    now[0] = 9.0
    reporter.update(step=19)
    assert reporter.snapshot()["etaSeconds"] == pytest.approx(81.0)


def test_termination_message_fits_the_kubelet_limit():
    huge = {
        "outcome": "Failed",
        "step": 3,
        "reason": "Error",
        "message": "x" * 10000,
        "metrics": {"loss": 1.0},
    }
    text = compact_termination_message(huge)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    doc = json.loads(text)
    assert doc["outcome"] == "Failed" and doc["step"] == 3 and doc["message"].startswith("xxx")


def test_termination_message_drops_nulls_and_is_written(tmp_path):
    path = tmp_path / "termination-log"
    write_termination_message({"outcome": "Succeeded", "step": 5, "loss": None}, str(path))
    assert json.loads(path.read_text()) == {"outcome": "Succeeded", "step": 5}


def test_graceful_sigterm_sets_a_flag_and_a_second_one_interrupts():
    stop = GracefulStop().install(graceful=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.uninstall()


def test_non_graceful_sigterm_interrupts_at_once():
    stop = GracefulStop().install(graceful=False)
    try:
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.uninstall()


def _write(tmp_path, document):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_cli_maps_config_errors_to_exit_2_with_a_termination_message(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(log))
    config = _write(tmp_path, make_document(training={"batchSize": 0}))
    assert cli.main(["train", "--config", config, "--no-serve"]) == ExitCode.CONFIG_ERROR == 2
    message = json.loads(log.read_text())
    assert message["outcome"] == "Failed" and message["reason"] == "ConfigError"
    assert "training.batchSize" in message["message"]


def test_cli_rejects_a_spec_for_another_command(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(tmp_path / "log"))
    config = _write(tmp_path, make_document())
    code, result = cli.run_command("evaluate", config, serve=False)
    assert code == 2 and "for command 'train'" in result["message"]


def test_cli_resolves_the_config_path_through_the_path_map(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(tmp_path / "log"))
    (tmp_path / "etc").mkdir()
    _write(tmp_path / "etc", make_document(training={"batchSize": 0}))
    monkeypatch.setenv("GENFORGE_PATH_MAP", json.dumps({"/etc/genforge": str(tmp_path / "etc")}))
    code, result = cli.run_command("train", "/etc/genforge/run.json", serve=False)
    assert code == 2 and "training.batchSize" in result["message"]  # it read our file


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        ("DataError", ExitCode.DATA_ERROR, "DataError"),
        ("StorageError", ExitCode.STORAGE_ERROR, "StorageError"),
        ("Stopped", ExitCode.SIGTERM, "Stopped"),
        ("RuntimeError", ExitCode.ERROR, "RuntimeError"),
        ("PermissionError", ExitCode.STORAGE_ERROR, "StorageError"),
    ],
)
def test_cli_maps_command_failures_to_contract_exit_codes(tmp_path, monkeypatch, error, code, reason):
    import errno

    from genforge_trainer import exitcodes

    def failing(spec, reporter):
        reporter.update(step=3)
        if error == "PermissionError":
            raise PermissionError(errno.EACCES, "denied")
        raise getattr(exitcodes, error, None)("boom") if hasattr(exitcodes, error) else RuntimeError("boom")

    monkeypatch.setenv("GENFORGE_TERMINATION_LOG", str(tmp_path / "log"))
    monkeypatch.setattr(cli, "_runner", lambda command: failing)
    got, result = cli.run_command("train", _write(tmp_path, make_document()), serve=False)
    assert got == code
    assert result["reason"] == reason and result["step"] == 3
    assert result["outcome"] == ("Stopped" if code == ExitCode.SIGTERM else "Failed")
