"""The images' entry points, run here the way the images run them."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, expected", [
    (["genforge", "operator", "--help"], "--all-namespaces"),
    (["genforge-trainer", "--help"], "{prepare,train,finetune,evaluate}"),
], ids=["operator-image", "trainer-image"])
def test_the_entry_points_start(argv, expected):
    result = _run(*argv)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_the_operator_never_imports_torch():
    """The operator image has no torch: importing everything `genforge operator` runs must not need it."""
    code = ("import sys, genforge_operator.cli, genforge_operator.run_operator, genforge_operator.main; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'accelerate')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
