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

import re

import pytest
from harness import OperatorRunner

_LOG_PROBLEM = re.compile(r"\[(ERROR|CRITICAL) *\]|Traceback \(most recent call last\)")


@pytest.fixture
def operator(cluster, request):
    """Afterwards the test fails if the operator logged an ERROR or a traceback — kopf retries a
    handler that raised, so an exception would otherwise pass unnoticed (the bar of kueue's
    integration framework). Tests that provoke errors on purpose are marked `operator_errors`."""
    runner = OperatorRunner(cluster).start()
    yield runner
    runner.stop(reraise=False)
    if request.node.get_closest_marker("operator_errors"):
        return
    problems = [line for output in runner.outputs for line in output.splitlines() if _LOG_PROBLEM.search(line)]
    assert not problems, "the operator logged errors:\n" + "\n".join(problems[:20])
