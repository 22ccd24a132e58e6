"""The real operator against the emulated cluster.

    @pytest.mark.integration
    def test_it(operator, namespace, custom_api):
        ...                      # the operator runs and watches everything it handles
        operator.restart()       # e.g. to check that state survives an operator restart

Function-scoped: every test gets a freshly started operator (about 0.2 s) that is stopped
afterwards. Its log reaches pytest's captured log like any other; while it runs, kopf's
CLI runner also captures `sys.stdout`, so a test's own `print` lands in
`operator.outputs` (use logging, or `sys.__stdout__`).
"""

from __future__ import annotations

import pytest
from harness import OperatorRunner


@pytest.fixture
def operator(cluster):
    runner = OperatorRunner(cluster).start()
    yield runner
    runner.stop()
