"""Fixtures for the reliability tests: the operator as a killable process, clients that
say who they are, a recorder of every API request, and a ready-to-train namespace.

Seeds: every randomised test draws from `rng`, seeded from GENFORGE_RELIABILITY_SEED (or
the time, printed on failure), so a failing schedule of kills can be replayed.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from .kit import Clients, Kubelet, OperatorProcess, RequestRecorder


@pytest.fixture(scope="session")
def clients(cluster) -> Clients:
    return Clients.connect(cluster.url)


@pytest.fixture
def rng(request) -> random.Random:
    seed = int(os.environ.get("GENFORGE_RELIABILITY_SEED") or time.time_ns() % 1_000_000)
    request.node.user_properties.append(("seed", seed))
    print(f"GENFORGE_RELIABILITY_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def recorder(cluster):
    recording = RequestRecorder(cluster)
    yield recording
    recording.stop()


@pytest.fixture
def operator_process(cluster, tmp_path, request):
    """The operator as a subprocess (not started); stopped, and its logs printed, afterwards."""
    process = OperatorProcess(cluster, tmp_path)
    yield process
    process.kill()
    print(f"--- operator: {process.starts} start(s), {process.kills} kill(s) ---\n{process.log()[-20000:]}")


@pytest.fixture
def kubelet(clients, namespace) -> Kubelet:
    return Kubelet(clients, namespace)
