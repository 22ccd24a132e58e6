"""The files genforge ships beside its code: `crds/` (the API's source of truth), `examples/`, `charts/`."""

from __future__ import annotations

from pathlib import Path

from .config import bundled_dir_override

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _find(name: str) -> Path:
    env = bundled_dir_override(name)
    candidates = [Path(env)] if env else []
    candidates += [_REPO_ROOT / name, Path(__file__).resolve().parent / name, Path("/opt/genforge") / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ folder (set GENFORGE_{name.upper()}_DIR)")


def crd_dir() -> Path:
    return _find("crds")


def examples_dir() -> Path:
    return _find("examples")


def charts_dir() -> Path:
    return _find("charts")
