"""Custom resources in the emulated API server: what a CustomResourceDefinition makes it serve,
and what it lets in.

kube-apiserver's apiextensions part, as far as clients notice it: a CRD (from a folder or
created through the API) is checked like the real server checks it (`default_errors`),
becomes resources in the served table (`crd_resources`, one per served version) and gets
the status a real server gives it (`crd_status`: names accepted, established).

Every write of a custom resource (create, update, patch, and of its `/status`) is admitted
as kube-apiserver admits it, by the same code that `genforge render` and the offline tests
use (`genforge_operator.schema.CustomResourceSchema`, one per served version, `crd_schemas`):

1. fields the schema does not declare are pruned (`AdmittedWrite.unknown`); the server refuses
   them instead when the request says `fieldValidation=Strict` (as `kubectl` does by
   default), else warns (`Warn`, the default) or stays silent (`Ignore`);
2. schema defaults are applied (and nulls of non-nullable fields dropped);
3. the object is validated: OpenAPI schema, then the CEL rules (`oldSelf` bound on
   updates); any error refuses the write with 422 Invalid (`invalid_status`).

On updates, what did not change is not judged again, as kube-apiserver's validation
ratcheting (on by default since 1.30) forgives it: a value equal to its stored one skips
the schema and the CEL rules without `oldSelf` (rules with `oldSelf` always run). Not
emulated: ratcheting inside lists that are not `x-kubernetes-list-type: map` (a changed
list is judged whole), the CEL cost budget, conversion between versions.
"""

from __future__ import annotations

import json
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


def crd_schemas(crd: Mapping[str, Any]) -> dict[kmock.resource, schema.CustomResourceSchema]:
    """The admission schema of each served version that has one (the resources of `crd_resources`)."""
    spec = crd["spec"]
    return {kmock.resource(spec["group"], version["name"], spec["names"]["plural"]):
            schema.CustomResourceSchema(crd, version["name"])
            for version in spec.get("versions", [])
            if version.get("served", True) and (version.get("schema") or {}).get("openAPIV3Schema")}


def admit(crd_schema: schema.CustomResourceSchema, obj: Body, old: Body | None = None) -> schema.AdmittedWrite:
    """Prune, default and validate `obj` (an update of `old`, as stored, if given: what did not
    change is not judged again, as the real server's validation ratcheting)."""
    return crd_schema.admit_write(obj, old)


def strict_decoding_error(unknown: list[str]) -> str:
    """kube-apiserver's words for unknown fields under `fieldValidation=Strict`."""
    return "strict decoding error: " + ", ".join(f'unknown field "{path}"' for path in unknown)


def undecodable(kind: str, version: str, problem: str) -> str:
    """kube-apiserver's 400 for a request body it cannot decode as the URL's kind."""
    return f'{kind} in version "{version}" cannot be handled as a {kind}: {problem}'


def strict_patch_status(patched: Body, unknown: list[str]) -> tuple[str, Body]:
    """kube-apiserver's 422 for a patch whose result has unknown fields under Strict: the field
    is `patch`, the value the patched object (as JSON)."""
    value = json.dumps(json.dumps(patched, separators=(",", ":"), sort_keys=True))
    message = f"Invalid value: {value}: {strict_decoding_error(unknown)}"
    return f' "" is invalid: patch: {message}', {"causes": [
        {"reason": "FieldValueInvalid", "message": message, "field": "patch"}]}


#: A field error's type, by the start of its message (k8s.io/apimachinery field.ErrorType).
_CAUSES = (("Required value", "FieldValueRequired"), ("Unsupported value", "FieldValueNotSupported"),
           ("Duplicate value", "FieldValueDuplicate"), ("Forbidden", "FieldValueForbidden"))


#: What kube-apiserver adds when the schema refused an object before its CEL rules could run.
RULES_NOT_CHECKED = schema.FieldError("<nil>", "Invalid value: null: some validation rules were not checked "
                                      "because the object was invalid; correct the existing errors to complete "
                                      "validation")


def invalid_status(kind: str, group: str, name: str, errors: list[schema.FieldError],
                   rules_skipped: bool = False) -> tuple[str, Body]:
    """The message and details of kube-apiserver's 422 Invalid answer (apimachinery's
    `NewInvalid`): `TrainingRun.genforge.dev "x" is invalid: <path>: <message>`, several
    errors as `[<path>: <message>, …]`, and one cause per error; `rules_skipped`: the
    schema refused it before the CEL rules ran (`RULES_NOT_CHECKED` is added)."""
    errors = [*errors, RULES_NOT_CHECKED] if rules_skipped else errors
    shown = [f"{error.path}: {error.message}" for error in errors]
    listed = shown[0] if len(shown) == 1 else f"[{', '.join(shown)}]"
    message = f'{kind}.{group} "{name}" is invalid: {listed}'
    causes = [{"reason": next((cause for prefix, cause in _CAUSES if error.message.startswith(prefix)),
                              "FieldValueInvalid"),
               "message": error.message, "field": error.path} for error in errors]
    return message, {"name": name, "group": group, "kind": kind, "causes": causes}
