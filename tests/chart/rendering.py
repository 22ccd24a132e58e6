"""Render the charts offline (helm-python-sdk: Helm's own Go code, no cluster) for the tests.

`render(values)` returns the manifests as dicts; the value sets in charts/genforge/ci/
(also chart-testing's inputs) are the ones the issue names: default, HA, namespaced RBAC,
monitoring on, plus the GKE, EKS and kind examples of docs/install.md.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "genforge"
CRDS_CHART = ROOT / "charts" / "genforge-crds"
RELEASE, NAMESPACE = "genforge", "genforge-system"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KUBE_VERSION = "1.32"
VALUE_SETS = sorted(p.stem.removesuffix("-values") for p in (CHART / "ci").glob("*-values.yaml"))


def helm():
    import pytest

    return pytest.importorskip("helm_python")  # helm-python-sdk renders the chart offline


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


@functools.lru_cache(maxsize=64)
def _render(chart: str, values_json: str, namespace: str) -> tuple[tuple[str, str], ...]:
    with helm().Chart.load(chart) as loaded:
        out = loaded.render(json.loads(values_json), name=RELEASE, namespace=namespace)
    return tuple(sorted(out.items()))


def render_files(values: dict | None = None, *, chart: Path = CHART, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path → rendered text (NOTES.txt included)."""
    return dict(_render(str(chart), json.dumps(values or {}, sort_keys=True), namespace))


def render(values: dict | None = None, *, chart: Path = CHART, namespace: str = NAMESPACE) -> list[dict]:
    """Every object the chart renders with `values` (templates only; crds/ are separate)."""
    return copy.deepcopy(_parsed(str(chart), json.dumps(values or {}, sort_keys=True), namespace))


@functools.lru_cache(maxsize=64)
def _parsed(chart: str, values_json: str, namespace: str) -> list[dict]:
    objects = []
    for path, text in _render(chart, values_json, namespace):
        if not path.endswith(".txt"):
            objects += [doc for doc in yaml.load_all(text, Loader=LOADER) if doc]
    return objects


@functools.lru_cache(maxsize=1)
def _chart_crds() -> list[dict]:
    return [doc for path in sorted((CHART / "crds").glob("*.yaml"))
            for doc in yaml.load_all(path.read_text(), Loader=LOADER) if doc]


def chart_crds() -> list[dict]:
    """The CRDs Helm installs from the chart's crds/ folder."""
    return copy.deepcopy(_chart_crds())


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_deployment(objects: list[dict]) -> dict:
    """The operator's Deployment (the optional review component is another one)."""
    found = [o for o in of_kind(objects, "Deployment")
             if o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]
    assert len(found) == 1, f"expected one operator Deployment, found {len(found)}"
    return found[0]


def operator_container(objects: list[dict]) -> dict:
    deployment = operator_deployment(objects)
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")


def operator_env(objects: list[dict]) -> dict[str, str]:
    """The operator container's plain env vars (valueFrom ones left out)."""
    return {e["name"]: e["value"] for e in operator_container(objects).get("env", []) if "value" in e}
