"""`.ci/reruns.py`: CI names every test that passed only on the re-run, and fails when the same
test needed it in the previous CI run too (issue 15 item 12)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "reruns.py"
spec = importlib.util.spec_from_file_location("ci_reruns", SCRIPT)
reruns = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reruns)


def test_flaky_tests_are_named_and_a_repeat_in_the_next_run_fails(tmp_path):
    state = tmp_path / "state" / "ci-reruns.txt"
    status, lines = reruns.settle(["tests/a.py::test_x", "tests/b.py::test_y"], state)
    assert status == 0
    assert lines == ["FLAKY (failed, then passed on the re-run): tests/a.py::test_x",
                     "FLAKY (failed, then passed on the re-run): tests/b.py::test_y"]
    # The next CI run: test_y needs the re-run again, test_z for the first time.
    status, lines = reruns.settle(["tests/b.py::test_y", "tests/c.py::test_z"], state)
    assert status == 1
    assert "FLAKY TWICE IN A ROW (also re-run in the previous CI run): tests/b.py::test_y" in lines
    assert not any("TWICE" in line and "test_z" in line for line in lines)
    # A green run without re-runs clears the record: test_z alone next time is not a repeat.
    reruns.clear(state)
    assert reruns.settle(["tests/c.py::test_z"], state)[0] == 0


def test_the_failed_list_is_read_from_pytests_cache(tmp_path):
    cache = tmp_path / "lastfailed"
    cache.write_text(json.dumps({"tests/b.py::test_y": True, "tests/a.py::test_x": True}))
    assert reruns.last_failed(cache) == ["tests/a.py::test_x", "tests/b.py::test_y"]
    assert reruns.last_failed(tmp_path / "missing") == []
