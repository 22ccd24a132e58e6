"""`genforge operator`: the kopf command line it stands for, and a real start against the emulator."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from harness import wait_for

from genforge_operator import run_operator


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_operator.add_arguments(parser)
    return parser.parse_args(argv)


LIVENESS = ["--liveness", "http://0.0.0.0:8081/healthz"]


@pytest.mark.parametrize("argv, expected", [
    ([], ["--log-format", "full", "--all-namespaces", *LIVENESS, "--standalone"]),
    (["-A"], ["--log-format", "full", "--all-namespaces", *LIVENESS, "--standalone"]),
    (["-n", "a", "--namespace", "b"],
     ["--log-format", "full", "--namespace", "a", "--namespace", "b", *LIVENESS, "--standalone"]),
    (["--peering", "genforge", "--priority", "7"],
     ["--log-format", "full", "--all-namespaces", *LIVENESS, "--peering", "genforge", "--priority", "7"]),
    (["--peering", "genforge"],
     ["--log-format", "full", "--all-namespaces", *LIVENESS, "--peering", "genforge", "--priority",
      "1700000000000042"]),
    (["--log-format", "json", "-v"], ["--log-format", "json", "--verbose", "--all-namespaces", *LIVENESS,
                                      "--standalone"]),
    (["--liveness", "http://0.0.0.0:9999/healthz"],
     ["--log-format", "full", "--all-namespaces", "--liveness", "http://0.0.0.0:9999/healthz", "--standalone"]),
], ids=["defaults", "all-namespaces", "namespaces", "peering-priority", "peering-newest-wins", "logging",
        "liveness"])
def test_kopf_arguments(argv, expected, monkeypatch):
    monkeypatch.delenv("GENFORGE_PEERING", raising=False)
    monkeypatch.delenv("GENFORGE_PEERING_PRIORITY", raising=False)
    out = run_operator.kopf_arguments(parse(*argv), now=1_700_000_000.0, tiebreak=42)
    assert out == ["run", *expected, "-m", "genforge_operator.main"]


def test_namespace_and_all_namespaces_exclude_each_other():
    with pytest.raises(SystemExit):
        parse("-A", "-n", "a")


def test_the_environment_sets_peering_and_priority(monkeypatch):
    monkeypatch.setenv("GENFORGE_PEERING", "ha")
    monkeypatch.setenv("GENFORGE_PEERING_PRIORITY", "5")
    out = run_operator.kopf_arguments(parse())
    assert out[out.index("--peering") + 1] == "ha" and out[out.index("--priority") + 1] == "5"


def test_newer_replicas_get_higher_priorities():
    assert run_operator.default_priority(1001.0, 0) > run_operator.default_priority(1000.999, 999)
    assert run_operator.default_priority(1000.0, 1) > run_operator.default_priority(1000.0, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_genforge_operator_serves_liveness_and_stops_on_sigterm(cluster):
    """What the chart's Deployment runs, started for real: kopf's /healthz answers, SIGTERM stops it."""
    port = _free_port()
    mark = cluster.mark()
    env = dict(os.environ, GENFORGE_API_SERVER=cluster.url, GENFORGE_METRICS_PORT="0")
    process = subprocess.Popen(
        [sys.executable, "-m", "genforge_operator.cli", "operator", "--all-namespaces",
         f"--liveness=http://127.0.0.1:{port}/healthz", "--log-format=plain"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                assert process.poll() is None, process.stdout.read()
                return False

        wait_for(healthy, timeout=30, interval=0.1, message="kopf's liveness endpoint")
        wait_for(lambda: any(r.verb == "watch" and r.plural == "trainingruns" and r.user_agent.startswith("kopf")
                             for r in cluster.requests(since=mark)),
                 timeout=30, interval=0.1, message="the operator watching TrainingRuns")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert time.monotonic() - started < 30
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
