"""Custom resources in the emulated API server: what a CustomResourceDefinition makes it serve.

kube-apiserver's apiextensions part, as far as clients notice it: a CRD (from a folder or
created through the API) is checked like the real server checks it (`default_errors`),
becomes resources in the served table (`crd_resources`, one per served version) and gets
the status a real server gives it (`crd_status`: names accepted, established).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kmock
import yaml

from genforge_operator import schema

Body = dict[str, Any]

ALL_VERBS = frozenset({"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})


def crd_resources(crd: Mapping[str, Any]) -> dict[kmock.resource, kmock.ResourceInfo]:
    """The resources a CustomResourceDefinition serves: one per served version."""
    spec = crd["spec"]
    names = spec["names"]
    result = {}
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or spec.get("subresources") or {}
        result[kmock.resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            verbs=ALL_VERBS,
            shortnames=names.get("shortNames", []),
            categories=names.get("categories", []),
            subresources={name for name in ("status", "scale") if name in subresources},
        )
    return result


def load_crds(crd_dir: str | os.PathLike[str]) -> list[Body]:
    """Every CustomResourceDefinition in the YAML files of a folder (sorted by file name)."""
    crds = []
    for path in sorted(Path(crd_dir).glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


def crd_status(crd: Mapping[str, Any], now: str) -> Body:
    """The status a real API server gives a CRD it accepted (`now`: the transition time)."""
    return {"acceptedNames": crd["spec"]["names"], "storedVersions": [
                v["name"] for v in crd["spec"].get("versions", []) if v.get("storage")],
            "conditions": [{"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": now}
                           for t in ("NamesAccepted", "Established")]}


def default_errors(crd: Mapping[str, Any]) -> list[str]:
    """Why kube-apiserver would refuse the CRD: a `default` that breaks its own schema or CEL rules
    (checked as written, before nested defaults). The API server's CEL cost estimation is not
    emulated: only a real kube-apiserver says whether a rule is too expensive (tests/real)."""
    versions = [v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("schema")]
    return [f"spec.validation.{e.path}: {e.message}"
            for version in versions for e in schema.default_errors(dict(crd), version)]
