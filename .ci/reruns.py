"""CI's record of tests that passed only on a re-run (issue 15 item 12).

    python3 .ci/reruns.py failed                  # the node ids pytest's last run failed
    python3 .ci/reruns.py settle FAILED_FILE      # after a green re-run: name them; fail on a repeat

A test that fails and then passes on the re-run is flaky — a bug, named in CI's output. The
names are kept in a file outside the clone ($GENFORGE_CI_STATE, default
~/.cache/genforge/ci-reruns.txt; machines that run CI keep their caches, like pip's), and a
test that needed the re-run in the previous CI run as well fails this one. A run without
re-runs clears the record.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LASTFAILED = Path(".pytest_cache/v/cache/lastfailed")


def state_file() -> Path:
    default = Path.home() / ".cache" / "genforge" / "ci-reruns.txt"
    return Path(os.environ.get("GENFORGE_CI_STATE") or default)


def last_failed(path: Path = LASTFAILED) -> list[str]:
    try:
        return sorted(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def settle(rerun: list[str], state: Path) -> tuple[int, list[str]]:
    """(exit status, lines to print) after the re-run of `rerun` passed; updates `state`."""
    before = set(state.read_text().split()) if state.exists() else set()
    repeated = sorted(set(rerun) & before)
    lines = [f"FLAKY (failed, then passed on the re-run): {node}" for node in rerun]
    if repeated:
        lines += [f"FLAKY TWICE IN A ROW (also re-run in the previous CI run): {node}" for node in repeated]
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("".join(f"{node}\n" for node in rerun))
    return (1 if repeated else 0), lines


def clear(state: Path) -> None:
    if state.exists():
        state.unlink()


def main(argv: list[str]) -> int:
    if argv[:1] == ["failed"]:
        print("\n".join(last_failed()))
        return 0
    if argv[:1] == ["settle"] and len(argv) == 2:
        status, lines = settle(Path(argv[1]).read_text().split(), state_file())
        print("\n".join(lines))
        return status
    if argv[:1] == ["clear"]:
        clear(state_file())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
