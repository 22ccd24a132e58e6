"""The real operator against the emulated cluster.

    @pytest.mark.integration
    def test_it(operator, namespace, custom_api):
        ...                      # the operator is running and watching everything it handles
        operator.restart()       # e.g. to check that state survives an operator restart

Function-scoped: every test gets a freshly started operator (about 0.1-0.3 s) and stops it
afterwards; what it logged is printed at teardown, so a failing test shows it.
"""

from __future__ import annotations

import os

import pytest
from harness import OperatorRunner

# The operator serves /metrics; a free port, so parallel test runs never collide.
os.environ.setdefault("GENFORGE_METRICS_PORT", "0")


@pytest.fixture
def operator(cluster):
    runner = OperatorRunner(cluster).start()
    yield runner
    runner.stop()
    for number, output in enumerate(runner.outputs, 1):
        print(f"--- operator run {number} ---\n{output}")

