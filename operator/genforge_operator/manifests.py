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


def _is_genforge(doc: dict) -> bool:
    return doc.get("kind") in KINDS and str(doc.get("apiVersion", "")).startswith("genforge.dev/")


def load_resources(paths: list[str], default_namespace: str = "default") -> list[Resource]:
    """genforge resources in the files (other kinds are ignored), namespaces filled in."""
    return parse_documents(load_documents(paths), default_namespace)


def schema_errors(docs: list[dict]) -> list[str]:
    """What the API server would refuse in the genforge documents, as `<Kind> "<name>" is invalid:
    <path>: <message>` lines (`schema.admit_object`: the CRD schemas and CEL rules; unknown fields are
    refused, as `kubectl apply` asks). Needs jsonschema and cel (`schema.missing_validation_packages`)."""
    from . import schema

    problems = []
    for doc in docs:
        if _is_genforge(doc):
            meta = doc.get("metadata")
            name = meta.get("name", "?") if isinstance(meta, dict) else "?"
            problems += [f'{doc["kind"]} "{name}" is invalid: {error}' for error in schema.admit_object(doc)[1]]
    return problems


def parse_documents(docs: list[dict], default_namespace: str = "default") -> list[Resource]:
    """The genforge documents as typed resources (other kinds are ignored), namespaces filled in."""
    resources = []
    for doc in docs:
        if not _is_genforge(doc):
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
