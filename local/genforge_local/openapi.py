"""OpenAPI documents for the emulated API server, built from the CRD schemas.

`kubectl apply` validates objects on the client against the server's OpenAPI (v3, then
v2), and `kubectl explain` reads it. The genforge kinds get their real schemas from the
CRDs (the single source of truth); built-in kinds get a permissive schema (any fields),
so applying a Namespace or a ConfigMap passes and nothing pretends to validate what it
does not know. `paths` hold a `get` (how `kubectl explain` maps a resource to its kind)
and a `patch` that advertises the `fieldValidation` parameter: kubectl then sends
`fieldValidation=Strict` and leaves validation to the server, as with kube-apiserver
≥ 1.27 (client-side validation would need OpenAPI v2 encoded as protobuf).

Pure functions: CRDs and the resource table in, JSON documents out.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

Body = dict[str, Any]

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"


def _reverse_domain(group: str) -> str:
    return ".".join(reversed(group.split("."))) if group else "io.k8s.api.core"


def schema_name(group: str, version: str, kind: str) -> str:
    """The definition name the real API server uses (`dev.genforge.v1alpha1.TrainingRun`)."""
    return f"{_reverse_domain(group)}.{version}.{kind}"


def _gvk(group: str, version: str, kind: str) -> list[Body]:
    return [{"group": group, "version": version, "kind": kind}]


def _meta_schemas(ref_prefix: str) -> dict[str, Body]:
    return {
        OBJECT_META: {"type": "object", "description": "Standard object metadata.",
                      "x-kubernetes-preserve-unknown-fields": True,
                      "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                     "generateName": {"type": "string"},
                                     "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                     "annotations": {"type": "object",
                                                     "additionalProperties": {"type": "string"}}}},
        LIST_META: {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }


def crd_schema(crd: Mapping[str, Any], version: Mapping[str, Any], ref_prefix: str) -> Body:
    """One served version's schema, as the API server publishes it: metadata is ObjectMeta."""
    spec = crd["spec"]
    schema = copy.deepcopy((version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
                           or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned schema "
                                                                 "of this representation of an object."}
    properties["kind"] = {"type": "string", "description": "Kind is a string value representing the REST "
                                                           "resource this object represents."}
    properties["metadata"] = {"description": "Standard object's metadata.",
                              "allOf": [{"$ref": f"{ref_prefix}{OBJECT_META}"}]}
    schema["x-kubernetes-group-version-kind"] = _gvk(spec["group"], version["name"], spec["names"]["kind"])
    return schema


def _permissive(group: str, version: str, kind: str, ref_prefix: str) -> Body:
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": _gvk(group, version, kind),
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "metadata": {"allOf": [{"$ref": f"{ref_prefix}{OBJECT_META}"}]}}}


def schemas(crds: Iterable[Mapping[str, Any]], builtins: Iterable[tuple[str, str, str]],
            ref_prefix: str) -> dict[tuple[str, str], dict[str, Body]]:
    """Schemas by (group, version): every served CRD version, and permissive ones for built-ins."""
    out: dict[tuple[str, str], dict[str, Body]] = {}
    for group, version, kind in builtins:
        out.setdefault((group, version), {})[schema_name(group, version, kind)] = _permissive(
            group, version, kind, ref_prefix)
    for crd in crds:
        spec = crd["spec"]
        for version in spec.get("versions") or []:
            if version.get("served", True):
                name = schema_name(spec["group"], version["name"], spec["names"]["kind"])
                out.setdefault((spec["group"], version["name"]), {})[name] = crd_schema(crd, version, ref_prefix)
    return out


def group_version_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def resource_paths(group: str, version: str, resources: Iterable[tuple[str, str, bool]]) -> Body:
    """`get` and `patch` operations for each (plural, kind, namespaced).

    `kubectl explain` finds a resource's kind through the `get`; the `patch` advertises
    the `fieldValidation` query parameter, so `kubectl apply` asks the server to validate
    (`?fieldValidation=Strict`, as against any kube-apiserver since 1.27) instead of
    validating on the client, which needs OpenAPI v2 as protobuf.
    """
    paths: Body = {}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    for plural, kind, namespaced in resources:
        ref = {"$ref": f"#/components/schemas/{schema_name(group, version, kind)}"}
        get = {"description": f"read the specified {kind}", "operationId": f"read{kind}",
               "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
               "x-kubernetes-action": "get",
               "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind}}
        scope = f"{prefix}/namespaces/{{namespace}}/{plural}" if namespaced else f"{prefix}/{plural}"
        parameters = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
        if namespaced:
            parameters.append({"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}})
        patch = {"description": f"partially update the specified {kind}", "operationId": f"patch{kind}",
                 "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
                                 "description": "Ignore, Warn or Strict: how the server treats unknown or duplicate "
                                                "fields."}],
                 "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
                 "x-kubernetes-action": "patch",
                 "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind}}
        paths[f"{scope}/{{name}}"] = {"get": get, "patch": patch, "parameters": parameters}
    return paths


def v3_document(group_schemas: Mapping[str, Body], paths: Mapping[str, Any] | None = None) -> Body:
    components = dict(_meta_schemas("#/components/schemas/"))
    components.update(group_schemas)
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "genforge-local"},
            "paths": dict(paths or {}), "components": {"schemas": components}}


def v3_index(documents: Mapping[tuple[str, str], Body]) -> Body:
    """`/openapi/v3`: where each group-version's document is (with a content hash, as the server does)."""
    paths = {}
    for (group, version), document in sorted(documents.items()):
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16].upper()
        path = group_version_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def _to_v2(schema: Any) -> Any:
    """An OpenAPI v3 schema made acceptable to v2 clients (as the API server does for CRDs)."""
    if isinstance(schema, list):
        return [_to_v2(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("nullable", "x-kubernetes-validations", "oneOf", "anyOf", "not"):
            continue
        out[key] = _to_v2(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "allOf" in out and len(out["allOf"]) == 1 and "$ref" in out["allOf"][0]:
        ref = out.pop("allOf")[0]["$ref"]
        out["$ref"] = ref.replace("#/components/schemas/", "#/definitions/")
    return out


def v2_document(all_schemas: Mapping[tuple[str, str], Mapping[str, Body]]) -> Body:
    definitions = {name: _to_v2(schema) for name, schema in _meta_schemas("#/definitions/").items()}
    for group_schemas in all_schemas.values():
        for name, schema in group_schemas.items():
            definitions[name] = _to_v2(schema)
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "genforge-local"},
            "paths": {}, "definitions": definitions}
