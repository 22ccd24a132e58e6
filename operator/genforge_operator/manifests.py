"""Reading genforge resources from YAML files (for `render`, `estimate`, `demo`)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from .api import KINDS, Resource, SpecError, parse_resource


class ManifestError(ValueError):
    pass


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml"))
        elif p == "-" or path.exists():
            out.append(path)
        else:
            raise ManifestError(f"{p}: no such file or directory")
    return out


def load_documents(paths: list[str]) -> list[dict]:
    docs: list[dict] = []
    for path in _files(paths):
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        try:
            loaded = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: invalid YAML: {exc}") from exc
        for doc in loaded:
            if not isinstance(doc, dict):
                raise ManifestError(f"{path}: every document must be a mapping")
            if doc.get("kind") == "List":
                docs += doc.get("items") or []
            else:
                docs.append(doc)
    return docs


def load_resources(paths: list[str], default_namespace: str = "default") -> list[Resource]:
    """genforge resources in the files (other kinds are ignored), namespaces filled in."""
    resources = []
    for doc in load_documents(paths):
        if doc.get("kind") not in KINDS or not str(doc.get("apiVersion", "")).startswith("genforge.dev/"):
            continue
        meta = doc.setdefault("metadata", {})
        if KINDS[doc["kind"]].namespaced:
            meta.setdefault("namespace", default_namespace)
        meta.setdefault("uid", f"render-{doc['kind'].lower()}-{meta.get('name', '')}")
        try:
            resources.append(parse_resource(doc))
        except SpecError as exc:
            raise ManifestError(f"{doc['kind']} {meta.get('name', '?')}: {exc}") from exc
    return resources
