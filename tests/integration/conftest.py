"""The real operator against the emulated cluster.

    @pytest.mark.integration
    def test_it(operator, namespace, custom_api):
        ...                      # the operator is running and watching everything it handles
        operator.restart()       # e.g. to check that state survives an operator restart

Function-scoped: every test gets a freshly started operator (about 0.1-0.3 s) and stops it
afterwards; what it logged is printed at teardown, so a failing test shows it.
"""

from __future__ import annotations

import pytest
from harness import OperatorRunner


@pytest.fixture
def operator(cluster):
    runner = OperatorRunner(cluster).start()
    yield runner
    runner.stop()
    for number, output in enumerate(runner.outputs, 1):
        print(f"--- operator run {number} ---\n{output}")


@pytest.fixture
def pool(custom_api):
    """A CPU AcceleratorPool at $3600/h: one dollar per second, so money moves visibly in a test."""
    from datetime import datetime

    name = f"cpu-{datetime.now().strftime('%H%M%S%f')}"
    custom_api.create_cluster_custom_object("genforge.dev", "v1alpha1", "acceleratorpools", {
        "apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": name},
        "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "3600", "relativeThroughput": 1000.0}})
    yield name
    custom_api.delete_cluster_custom_object("genforge.dev", "v1alpha1", "acceleratorpools", name)
