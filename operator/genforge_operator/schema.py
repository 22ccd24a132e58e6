"""The CRDs in `crds/` as an admission check: what the API server would default, accept or reject.

`crds/*.yaml` is the single source of truth for the wire schema. This module loads those
files and applies them to objects the way kube-apiserver does for custom resources, so
that code without a cluster — the offline tests, `genforge local`'s emulated API server,
`genforge render`/`estimate` — rejects exactly what a cluster would:

- `apply_defaults(obj)`: drop nulls of non-nullable fields, then fill schema defaults
  top-down (a defaulted `{}` gets its nested defaults too), like structural defaulting.
- `validate(obj, old=None)`: defaults, then the OpenAPI v3 schema (converted to JSON
  Schema by `to_json_schema`: int-or-string, nullable, unknown fields rejected as
  `kubectl --validate=strict` / `fieldValidation=Strict` would, list-type set/map
  uniqueness), then — when the schema holds — the CEL rules (`evaluate_validations`).
  Returns `FieldError`s: `(path, message)` tuples with Kubernetes-style paths such as
  `spec.warnAt[1]`.
- `admit_object(obj, old=None)`: the defaulted object and its errors, for an API server.
- `prune(obj)`: the object without the fields its schema does not declare, and their
  paths — what kube-apiserver silently drops unless the request asks for
  `fieldValidation=Strict` (then it refuses them, as `validate` does).

`CustomResourceSchema` is all of that for one served version of any CRD (the module
functions use it for the CRDs in `crds/`): the emulated API server of `genforge local`
admits every custom resource write with it.

CEL: `evaluate_validations` walks the schema and the object together and runs every
`x-kubernetes-validations` rule with `self` bound to the node's value and, for transition
rules, `oldSelf` bound to the correlated old value (object properties, map values, and
items of `x-kubernetes-list-type: map` lists by key; a rule that uses `oldSelf` is skipped
when there is no old value, as on create). `fieldPath`, `reason`, `message` and
`messageExpression` are honoured. Evaluation uses the `common-expression-language`
package (cel-rust) plus its cel-go–style extension functions.

`jsonschema` and `cel` are imported on first use: loading CRDs, pruning and defaulting
need neither (both are in the `local` and `dev` extras; the operator image has neither).

Kubernetes CEL library functions that needed a shim (registered in `_SHIMS`):

- `isSorted()` (Kubernetes list library) — used by Budget `spec.warnAt`.

Everything else the CRDs use is core CEL (`has`, `all`, `exists_one`, `size`, `in`,
`string()`, list indexing, `%`, object and list equality), evaluated natively. Not
modelled: the API server's CEL cost estimation (the CRDs bound every list and string
that CEL iterates instead; `tests/api` checks that). Validation ratcheting (unchanged values
are not judged again on an update) only with `CustomResourceSchema.admit(ratchet=True)` /
`admit_write`: per field for the schema (a changed list is judged whole), per value for
CEL rules without `oldSelf`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from .api import API_VERSION, KINDS, VERSION
from .bundled import crd_dir

if TYPE_CHECKING:
    import jsonschema

#: What validation imports (on first use), by module: the distribution that provides it.
VALIDATION_PACKAGES = {"jsonschema": "jsonschema", "cel": "common-expression-language"}

_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class FieldError(NamedTuple):
    """One rejected field: a Kubernetes-style path (`spec.training.steps`) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def missing_validation_packages() -> list[str]:
    """The packages `validate`/`admit` need that cannot be imported here (the operator image has
    none of them; `pip install 'genforge[local]'` brings them)."""
    missing = []
    for module, package in VALIDATION_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


# ---------------------------------------------------------------- loading
class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a number, as Kubernetes' YAML parser does."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml_documents(path: str | Path) -> list[dict]:
    """The non-empty documents of a YAML file (`---`-separated), Kubernetes-style numbers."""
    text = Path(path).read_text()
    return [doc for doc in yaml.load_all(text, Loader=_YamlLoader) if doc]


@functools.lru_cache(maxsize=8)
def _load_crds(directory: str) -> dict[str, dict]:
    crds: dict[str, dict] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                crds[doc["spec"]["names"]["kind"]] = doc
    return crds


def load_crds(directory: str | Path | None = None) -> dict[str, dict]:
    """CRD objects by kind (`"TrainingRun"` → the CustomResourceDefinition), cached; do not mutate."""
    return _load_crds(str(directory or crd_dir()))


def crd_for(kind: str, directory: str | Path | None = None) -> dict:
    crds = load_crds(directory)
    if kind not in crds:
        raise KeyError(f"no CRD for kind {kind!r} in {directory or crd_dir()}")
    return crds[kind]


def openapi_schema(crd: dict, version: str = VERSION) -> dict:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


# ---------------------------------------------------------------- OpenAPI v3 → JSON Schema
def to_json_schema(schema: dict) -> dict:
    """A JSON Schema (draft 4: boolean `exclusiveMinimum`, like OpenAPI v3.0) for a CRD schema.

    Objects with `properties` (and no `x-kubernetes-preserve-unknown-fields`) get
    `additionalProperties: false`, so unknown fields are rejected as strict field validation
    does; `nullable` adds `null` to the type; `x-kubernetes-int-or-string` becomes
    integer-or-string; `x-kubernetes-list-type: set` becomes `uniqueItems`. Defaults and
    CEL rules are not JSON Schema: see `apply_defaults` and `evaluate_validations`.
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("default", "nullable"):
            continue
        if key == "properties":
            out["properties"] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not"):
            out[key] = to_json_schema(value)
        elif key == "additionalProperties":
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    nullable = bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}] + ([{"type": "null"}] if nullable else [])
    elif nullable and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {})
        out["properties"].setdefault("apiVersion", {"type": "string"})
        out["properties"].setdefault("kind", {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    import jsonschema  # the `local` / `dev` extras' dependency, like `cel` below

    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


# ---------------------------------------------------------------- one CRD version
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")  # every object has them, whatever its schema says
_KEEP = {"x-kubernetes-preserve-unknown-fields": True}  # pruning leaves them be (ObjectMeta is the server's)
_PLAIN_OBJECT = frozenset({"type", "description", "properties", "required", "additionalProperties"})


class CustomResourceSchema:
    """One served version of a CRD, applied to objects as kube-apiserver applies it:
    `prune`, `apply_defaults`, `validate_schema`, `admit` (defaults, then schema, then CEL),
    and `admit_write` (all of it, as the API server handles a write).

    Built once per CRD version (the jsonschema validators are compiled on first use); the
    module functions below use one per kind of `crds/`.
    """

    def __init__(self, crd: Mapping[str, Any], version: str = VERSION):
        self.crd = dict(crd)
        spec = self.crd["spec"]
        self.kind: str = spec["names"]["kind"]
        self.version = version
        self.api_version = f"{spec['group']}/{version}"
        self.openapi = openapi_schema(self.crd, version)
        self._node_validators: dict[int, jsonschema.protocols.Validator] = {}  # by id() of a json_schema node

    @functools.cached_property
    def json_schema(self) -> dict:
        schema = to_json_schema(self.openapi)
        properties = schema.setdefault("properties", {})
        for name, kind in zip(_ROOT_FIELDS, ("string", "string", "object"), strict=True):
            properties.setdefault(name, {"type": kind})
        return schema

    @functools.cached_property
    def validator(self) -> jsonschema.protocols.Validator:
        return _validator(self.json_schema)

    @functools.cached_property
    def _transition_prefixes(self) -> frozenset[str]:
        """The schema paths at or above a CEL rule that reads `oldSelf` (see `_check_rules`)."""
        prefixes = set()
        for rule in _iter_rules(self.openapi, ""):
            if rule.is_transition:
                path = rule.path
                prefixes.add(path)
                prefixes.update(path[:i] for i, char in enumerate(path) if char in ".[")
                prefixes.add("")
        return frozenset(prefixes)

    def prune(self, obj: dict) -> tuple[dict, list[str]]:
        """A copy of `obj` without the fields the schema does not declare, and their paths
        (`spec.gpus`, `spec.tolerations[0].x`), sorted. apiVersion, kind and metadata stay;
        `x-kubernetes-preserve-unknown-fields` keeps what it covers."""
        out = copy.deepcopy(obj)
        return out, self._prune_in_place(out)

    def _prune_in_place(self, obj: dict) -> list[str]:
        unknown: list[str] = []
        root = {**self.openapi, "properties": {**(self.openapi.get("properties") or {}),
                                               **{name: _KEEP for name in _ROOT_FIELDS}}}
        _prune(root, obj, "", unknown)
        return sorted(unknown)

    def apply_defaults(self, obj: dict) -> dict:
        """A copy of `obj` with nulls of non-nullable fields pruned and schema defaults filled in."""
        return _default(self.openapi, copy.deepcopy(obj))

    def validate_schema(self, obj: dict, old: dict | None = None) -> list[FieldError]:
        """OpenAPI schema errors only (no defaulting, no CEL), sorted by path.

        With `old` (the stored object), values equal to old's correlated ones are not judged
        again, as kube-apiserver's validation ratcheting forgives errors of unchanged fields."""
        if old is None:
            errors = _list_map_duplicates(self.openapi, obj, "")
            if not _surely_valid(self.json_schema, obj, self.validator.format_checker):
                errors += [err for error in self.validator.iter_errors(obj) for err in _translate(error)]
        else:
            errors = self._validate_changed(self.json_schema, self.openapi, obj, old, ())
        return sorted(set(errors))

    def _validate_changed(
        self, node: dict, openapi: dict, value: Any, old: Any, parts: tuple
    ) -> list[FieldError]:
        """Schema errors of `value`, descending only into what differs from `old` (objects whose
        schema is plain properties; anything else that changed is judged whole)."""
        if (isinstance(value, dict) and isinstance(old, dict) and node.get("type") == "object"
                and "properties" in node and set(node) <= _PLAIN_OBJECT):
            errors = [FieldError(_path((*parts, name)), "Required value")
                      for name in node.get("required") or [] if name not in value]
            for name, sub_value in value.items():
                if name in old and old[name] == sub_value:
                    continue
                sub_parts = (*parts, name)
                if name in node["properties"]:
                    errors += self._validate_changed(node["properties"][name],
                                                     (openapi.get("properties") or {}).get(name) or {},
                                                     sub_value, old.get(name), sub_parts)
                elif node.get("additionalProperties") is False:
                    errors.append(FieldError(_path(sub_parts), f'unknown field "{_path(sub_parts)}"'))
                elif isinstance(node.get("additionalProperties"), dict):
                    extra = openapi.get("additionalProperties") or {}
                    errors += self._judge(node["additionalProperties"], extra, sub_value, sub_parts)
            return errors
        return self._judge(node, openapi, value, parts)

    def _judge(self, node: dict, openapi: dict, value: Any, parts: tuple) -> list[FieldError]:
        """Schema errors of `value` against one node of the schema, all of them."""
        errors = _list_map_duplicates(openapi, value, _path(parts))
        if _surely_valid(node, value, self.validator.format_checker):
            return errors
        validator = self._node_validators.get(id(node))
        if validator is None:
            validator = self._node_validators[id(node)] = _validator(node)
        return errors + [err for error in validator.iter_errors(value) for err in _translate(error, parts)]

    def admit(
        self, obj: dict, old: dict | None = None, *, ratchet: bool = False
    ) -> tuple[dict, list[FieldError]]:
        """Default `obj` and validate it (schema, then CEL rules); returns the defaulted object and
        errors; `old`: the object it updates (CEL rules with `oldSelf`).

        `ratchet`: `old` is the stored object (already defaulted), and what did not change
        from it is not judged again, as kube-apiserver's validation ratcheting (on by default
        since 1.30) does: values equal to their correlated old value skip the schema and the
        CEL rules without `oldSelf`. Rules with `oldSelf` always run."""
        defaulted, errors, _ = self._admit(self.apply_defaults(obj), old, ratchet=ratchet)
        return defaulted, errors

    def _admit(self, defaulted: dict, old: dict | None, *, ratchet: bool) -> tuple[dict, list[FieldError], bool]:
        """(defaulted object, errors, whether the CEL rules ran: only on an object the schema admits)."""
        if old is not None and not ratchet:
            old = self.apply_defaults(old)
        errors = _identity_errors(defaulted, self.api_version)
        errors += self.validate_schema(defaulted, old if ratchet else None)
        if errors:
            return defaulted, errors, False
        prefixes = self._transition_prefixes if ratchet else None
        checked = _check_rules(self.openapi, defaulted, old, prefixes)
        return defaulted, [error for _, error in checked if error is not None], True

    @functools.cached_property
    def has_rules(self) -> bool:
        """Whether the schema has CEL rules (`x-kubernetes-validations`) anywhere."""
        return next(_iter_rules(self.openapi, ""), None) is not None

    def admit_write(self, obj: dict, stored: dict | None = None) -> AdmittedWrite:
        """What kube-apiserver does with a write of `obj` (an update of `stored`, as stored):
        prune the fields the schema does not declare, default, validate (ratcheting against
        `stored`). Returns the object to store, the pruned paths (the server refuses them under
        `fieldValidation=Strict`, else warns or ignores), the errors (422 Invalid) and whether
        CEL rules went unchecked because the schema already refused the object."""
        out = _copy_json(obj)
        if stored is None:
            unknown = self._prune_in_place(out)
            out = _default(self.openapi, out)
        else:  # what equals the stored object is pruned and defaulted already
            properties = self.openapi.get("properties") or {}
            view = {**self.openapi, "properties": {
                name: (sub if name not in out or out[name] != stored.get(name) else _KEEP)
                for name, sub in properties.items()}}
            unknown = []
            _prune({**view, "properties": {**view["properties"], **{name: _KEEP for name in _ROOT_FIELDS}}},
                   out, "", unknown)
            unknown.sort()
            out = _default(view, out)
        defaulted, errors, rules_ran = self._admit(out, stored, ratchet=stored is not None)
        return AdmittedWrite(defaulted, unknown, errors, self.has_rules and not rules_ran)


class AdmittedWrite(NamedTuple):
    """A write as kube-apiserver admits it (`CustomResourceSchema.admit_write`)."""

    obj: dict  # pruned and defaulted: what the server stores
    unknown: list[str]  # the paths of the fields pruned
    errors: list[FieldError]  # why it is refused (none: it is not)
    rules_skipped: bool  # the schema refused it before its CEL rules ran


@functools.lru_cache(maxsize=32)
def _crd_schema(kind: str, directory: str) -> CustomResourceSchema:
    return CustomResourceSchema(_load_crds(directory)[kind])


def crd_schema(kind: str, directory: str | Path | None = None) -> CustomResourceSchema:
    """The `CustomResourceSchema` of a kind of `crds/` (or of `directory`), cached."""
    crd_for(kind, directory)  # a clear KeyError for an unknown kind
    return _crd_schema(kind, str(directory or crd_dir()))


# ---------------------------------------------------------------- a fast path for valid objects
#: The JSON Schema keywords `_surely_valid` decides (what `to_json_schema` makes of CRD schemas).
_FAST_KEYWORDS = frozenset({
    "type", "description", "properties", "required", "additionalProperties", "items", "enum", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
    "maxItems", "minProperties", "maxProperties", "uniqueItems", "format", "anyOf",
})
_TYPES = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool), "null": lambda v: v is None,
}


@functools.lru_cache(maxsize=1024)
def _pattern(regex: str) -> re.Pattern:
    return re.compile(regex)


def _surely_valid(node: dict, value: Any, format_checker: Any) -> bool:
    """True only if `value` is valid against the JSON Schema `node` (Draft 4, as `_validator`
    judges it), checked directly: jsonschema's walk costs most of a write's admission and
    nearly every write is valid. False means "not sure": then jsonschema judges and words
    the errors. Keywords outside `_FAST_KEYWORDS`, non-string sets and enum values of
    another type are left to jsonschema."""
    if not node.keys() <= _FAST_KEYWORDS:
        return False
    kinds = node.get("type")
    if kinds is not None and not any(_TYPES.get(kind, lambda v: False)(value)
                                     for kind in (kinds if isinstance(kinds, list) else [kinds])):
        return False
    if "enum" in node and not any(type(e) is type(value) and e == value for e in node["enum"]):
        return False
    if "anyOf" in node and not any(_surely_valid(sub, value, format_checker) for sub in node["anyOf"]):
        return False
    if isinstance(value, str):
        return (("pattern" not in node or _pattern(node["pattern"]).search(value) is not None)
                and len(value) >= node.get("minLength", 0) and len(value) <= node.get("maxLength", len(value))
                and ("format" not in node or format_checker.conforms(value, node["format"])))
    if isinstance(value, int | float) and not isinstance(value, bool):
        low = node.get("minimum")
        if low is not None and (value <= low if node.get("exclusiveMinimum") else value < low):
            return False
        return "maximum" not in node or not (
            value >= node["maximum"] if node.get("exclusiveMaximum") else value > node["maximum"])
    if isinstance(value, dict):
        if any(name not in value for name in node.get("required") or ()):
            return False
        if not node.get("minProperties", 0) <= len(value) <= node.get("maxProperties", len(value)):
            return False
        properties, extra = node.get("properties") or {}, node.get("additionalProperties", True)
        for name, item in value.items():
            sub = properties.get(name, extra)
            if sub is False or (isinstance(sub, dict) and not _surely_valid(sub, item, format_checker)):
                return False
        return True
    if isinstance(value, list):
        if not node.get("minItems", 0) <= len(value) <= node.get("maxItems", len(value)):
            return False
        if node.get("uniqueItems") and not (all(isinstance(x, str) for x in value)
                                            and len(set(value)) == len(value)):
            return False
        items = node.get("items", {})
        return isinstance(items, dict) and all(_surely_valid(items, item, format_checker) for item in value)
    return True


# ---------------------------------------------------------------- defaulting
def apply_defaults(obj: dict, directory: str | Path | None = None) -> dict:
    """A copy of `obj` with nulls of non-nullable fields pruned and schema defaults filled in."""
    kind = obj.get("kind")
    if kind not in load_crds(directory):
        return copy.deepcopy(obj)
    return crd_schema(kind, directory).apply_defaults(obj)


def prune(obj: dict, directory: str | Path | None = None) -> tuple[dict, list[str]]:
    """`obj` without the fields its CRD's schema does not declare, and their paths (see
    `CustomResourceSchema.prune`); an object of an unknown kind is returned as it is."""
    kind = obj.get("kind")
    if kind not in load_crds(directory):
        return copy.deepcopy(obj), []
    return crd_schema(kind, directory).prune(obj)


def _prune(schema: dict, value: Any, path: str, unknown: list[str]) -> None:
    """Structural pruning in place: what kube-apiserver drops from a custom resource."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or extra is True
        if schema.get("x-kubernetes-embedded-resource"):
            props = {**(props or {}), **{name: _KEEP for name in _ROOT_FIELDS}}
        for name in list(value):
            sub = (props or {}).get(name)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if sub is not None:
                _prune(sub, value[name], _join(path, name), unknown)
            elif not keep_unknown:
                del value[name]
                unknown.append(_join(path, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune(schema["items"], item, _join(path, index), unknown)


def _default(schema: dict, value: Any) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties")
        if props:
            for name in list(value):
                if value[name] is None and name in props and not props[name].get("nullable"):
                    del value[name]
            for name, sub in props.items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                if name in value:
                    value[name] = _default(sub, value[name])
        elif isinstance(schema.get("additionalProperties"), dict):
            sub = schema["additionalProperties"]
            for name in list(value):
                if value[name] is None and not sub.get("nullable"):
                    del value[name]
                else:
                    value[name] = _default(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_default(schema["items"], item) for item in value]
    return value


# ---------------------------------------------------------------- validation
def validate(obj: dict, old: dict | None = None, directory: str | Path | None = None) -> list[FieldError]:
    """Everything the API server would reject in `obj` (an update of `old`, if given), after defaulting."""
    return admit_object(obj, old, directory)[1]


def admit_object(
    obj: dict, old: dict | None = None, directory: str | Path | None = None
) -> tuple[dict, list[FieldError]]:
    """Default `obj` and validate it (schema, then CEL rules); returns the defaulted object and errors."""
    kind = obj.get("kind")
    if kind not in load_crds(directory):
        return obj, [FieldError("kind", f"no CRD for kind {kind!r} (known: {', '.join(sorted(KINDS))})")]
    return crd_schema(kind, directory).admit(obj, old)


def _identity_errors(obj: dict, api_version: str = API_VERSION) -> list[FieldError]:
    errors = []
    if obj.get("apiVersion") != api_version:
        errors.append(FieldError("apiVersion", f"must be {api_version}, got {obj.get('apiVersion')!r}"))
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return errors + [FieldError("metadata", "Required value")]
    name = meta.get("name")
    if name is None and not meta.get("generateName"):
        errors.append(FieldError("metadata.name", "Required value: name or generateName is required"))
    elif name is not None and (not isinstance(name, str) or len(name) > 253 or not _NAME_PATTERN.match(name)):
        errors.append(
            FieldError(
                "metadata.name",
                f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        )
    return errors


def validate_schema(obj: dict, directory: str | Path | None = None) -> list[FieldError]:
    """OpenAPI schema errors only (no defaulting, no CEL), sorted by path."""
    return crd_schema(obj.get("kind"), directory).validate_schema(obj)


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars), several times faster than deepcopy."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def _path(parts) -> str:
    path = ""
    for part in parts:
        path = _join(path, part)
    return path


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _translate(error: jsonschema.ValidationError, prefix: tuple = ()) -> Iterator[FieldError]:
    path = _path((*prefix, *error.absolute_path))
    value = error.instance
    kind = error.validator
    if kind == "required":
        for name in error.validator_value:
            if isinstance(value, dict) and name not in value:
                yield FieldError(_join(path, name), "Required value")
    elif kind == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        for name in sorted(set(value) - allowed):
            yield FieldError(_join(path, name), f'unknown field "{_join(path, name)}"')
    elif kind == "type":
        yield FieldError(
            path,
            f"Invalid value: {value!r}: must be of type {error.validator_value}, got {_type_name(value)}",
        )
    elif kind == "anyOf" and _is_int_or_string(error):
        yield FieldError(
            path, f"Invalid value: {value!r}: must be an integer or a string, got {_type_name(value)}"
        )
    elif kind == "enum":
        allowed = ", ".join(f'"{v}"' for v in error.validator_value)
        yield FieldError(path, f"Unsupported value: {value!r}: supported values: {allowed}")
    elif kind == "pattern":
        yield FieldError(path, f"Invalid value: {value!r}: should match '{error.validator_value}'")
    elif kind == "minimum":
        exclusive = error.schema.get("exclusiveMinimum")
        relation = "greater than" if exclusive else "greater than or equal to"
        yield FieldError(path, f"Invalid value: {value!r}: should be {relation} {error.validator_value}")
    elif kind == "maximum":
        exclusive = error.schema.get("exclusiveMaximum")
        relation = "less than" if exclusive else "less than or equal to"
        yield FieldError(path, f"Invalid value: {value!r}: should be {relation} {error.validator_value}")
    elif kind in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        what = {"Length": "characters", "Items": "items", "Properties": "properties"}[kind[3:]]
        bound = "at least" if kind.startswith("min") else "at most"
        yield FieldError(path, f"Invalid value: must have {bound} {error.validator_value} {what}")
    elif kind == "format":
        yield FieldError(
            path,
            f"Invalid value: {value!r}: must be a {error.validator_value} (RFC 3339)"
            if error.validator_value == "date-time"
            else error.message,
        )
    elif kind == "uniqueItems":
        yield FieldError(path, "Duplicate value: items must be unique")
    else:
        yield FieldError(path, error.message)


def _is_int_or_string(error: jsonschema.ValidationError) -> bool:
    return error.validator_value[:2] == [{"type": "integer"}, {"type": "string"}]


def _list_map_duplicates(schema: dict, value: Any, path: str) -> list[FieldError]:
    """`x-kubernetes-list-type: map` lists must not repeat a key (JSON Schema cannot say that)."""
    errors: list[FieldError] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, sub_value in value.items():
            sub = props.get(name) or (extra if isinstance(extra, dict) else None)
            if sub:
                errors += _list_map_duplicates(sub, sub_value, _join(path, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen: set = set()
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    key = tuple(item.get(k) for k in keys)
                    if key in seen:
                        shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, key, strict=True))
                        errors.append(FieldError(_join(path, index), f"Duplicate value: {shown}"))
                    seen.add(key)
        for index, item in enumerate(value):
            errors += _list_map_duplicates(schema["items"], item, _join(path, index))
    return errors


# ---------------------------------------------------------------- CEL
def _is_sorted(items: list) -> bool:
    return all(a <= b for a, b in zip(items, items[1:], strict=False))


# Kubernetes CEL library functions missing from the `cel` package (see the module docstring).
_SHIMS = {"isSorted": _is_sorted}


class Rule(NamedTuple):
    """One `x-kubernetes-validations` entry, at the schema node reached by `path`."""

    path: str  # schema path, e.g. "spec.hardware" or "spec.tolerations[]"
    rule: str
    message: str | None
    message_expression: str | None
    field_path: str | None
    reason: str | None
    optional_old_self: bool

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in _program(self.rule).variables()


def iter_rules(crd: dict, version: str = VERSION) -> Iterator[Rule]:
    """Every CEL rule in a CRD's schema, with the schema path of the node that carries it."""
    yield from _iter_rules(openapi_schema(crd, version), "")


def _own_rules(schema: dict, path: str) -> list[Rule]:
    return [
        Rule(
            path=path,
            rule=entry["rule"],
            message=entry.get("message"),
            message_expression=entry.get("messageExpression"),
            field_path=entry.get("fieldPath"),
            reason=entry.get("reason"),
            optional_old_self=bool(entry.get("optionalOldSelf")),
        )
        for entry in schema.get("x-kubernetes-validations", [])
    ]


def _iter_rules(schema: dict, path: str) -> Iterator[Rule]:
    yield from _own_rules(schema, path)
    for name, sub in (schema.get("properties") or {}).items():
        yield from _iter_rules(sub, _join(path, name))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _iter_rules(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        yield from _iter_rules(schema["items"], f"{path}[]")


#: Property names that are CEL keywords: a rule reads them as `self.__namespace__`
#: (Kubernetes' escaping of CRD property names in CEL).
CEL_RESERVED = frozenset({"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
                          "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
                          "void", "while"})


def _escaped(value: Any) -> Any:
    """`value` with every object property named like a CEL keyword renamed `__name__`."""
    if isinstance(value, dict):
        return {(f"__{k}__" if k in CEL_RESERVED else k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


@functools.lru_cache(maxsize=512)
def _program(expression: str):
    import cel  # the `common-expression-language` package; imported lazily (a dev/local dependency)

    return cel.compile(expression)


@functools.lru_cache(maxsize=1)
def _functions() -> dict:
    import cel
    from cel import stdlib

    context = cel.Context()
    stdlib.add_stdlib_to_context(context)
    functions = dict(context.functions)
    functions.update(_SHIMS)
    return functions


def evaluate_rule(
    expression: str, self_value: Any, old_value: Any = None, *, optional_old_self: bool = False
) -> Any:
    """Evaluate one CEL expression with `self` (and `oldSelf`) bound, Kubernetes-style."""
    import cel

    self_value, old_value = _escaped(self_value), _escaped(old_value)
    variables = {"self": self_value}
    if optional_old_self:
        variables["oldSelf"] = (
            cel.OptionalValue.of(old_value) if old_value is not None else cel.OptionalValue.none()
        )
    elif old_value is not None:
        variables["oldSelf"] = old_value
    return _program(expression).execute(cel.Context(variables=variables, functions=_functions()))


def default_errors(crd: dict, version: str = VERSION) -> list[FieldError]:
    """What kube-apiserver refuses at CRD creation: every `default` must be valid against its
    own schema **and** its CEL rules, as written — nested defaults are not applied first
    (apiextensions-apiserver, pkg/apiserver/schema/defaulting/validation.go). A rule that
    reads a field the default leaves out fails with "no such key"."""
    import jsonschema

    errors: list[FieldError] = []

    def visit(schema: dict, path: str) -> None:
        if not isinstance(schema, dict):
            return
        if "default" in schema:
            value = schema["default"]
            where = f"{path}.default" if path else "default"
            validator = jsonschema.Draft4Validator(to_json_schema(schema))
            for error in validator.iter_errors(value):
                errors.append(FieldError(where, f"Invalid value: {error.message}"))
            fake = {"metadata": {"name": "default"},
                    "spec": {"versions": [{"name": VERSION, "schema": {"openAPIV3Schema": schema}}]}}
            for rule, error in check_rules(fake, value):
                if error is not None:
                    errors.append(FieldError(where, f"{error.message} (rule {rule.rule!r} on the default "
                                                    f"as written, before nested defaults)"))
        for name, sub in (schema.get("properties") or {}).items():
            visit(sub, f"{path}.properties[{name}]" if path else f"properties[{name}]")
        if isinstance(schema.get("items"), dict):
            visit(schema["items"], f"{path}.items")
        if isinstance(schema.get("additionalProperties"), dict):
            visit(schema["additionalProperties"], f"{path}.additionalProperties")

    visit(openapi_schema(crd, version), "openAPIV3Schema")
    return errors


def evaluate_validations(
    crd: dict, obj: dict, old: dict | None = None, version: str = VERSION
) -> list[FieldError]:
    """Run every `x-kubernetes-validations` rule of `crd` on `obj` (an update of `old`, if given).

    Call it on defaulted objects (see `admit`), as the API server does: rules assume that
    defaulted fields are present.
    """
    return [error for _, error in check_rules(crd, obj, old, version) if error is not None]


def check_rules(
    crd: dict, obj: dict, old: dict | None = None, version: str = VERSION
) -> list[tuple[Rule, FieldError | None]]:
    """Each rule evaluated on `obj` (once per value it applies to) with its error, or None if it held.

    Transition rules without an old value are not evaluated and so not listed.
    """
    return _check_rules(openapi_schema(crd, version), obj, old, None)


def _check_rules(
    openapi: dict, obj: dict, old: dict | None, ratchet: frozenset[str] | None
) -> list[tuple[Rule, FieldError | None]]:
    """`check_rules` on a schema; `ratchet`: the schema paths at or above transition rules — then
    rules without `oldSelf` are not run on values equal to their correlated old value, and
    unchanged subtrees without transition rules are not walked (see `CustomResourceSchema.admit`)."""
    results: list[tuple[Rule, FieldError | None]] = []
    for schema_path, schema, value, old_value, path, unchanged in _walk(openapi, obj, old, "", "", ratchet):
        for rule in _own_rules(schema, schema_path):
            if rule.is_transition and old_value is None and not rule.optional_old_self:
                continue  # nothing to compare with: a create, or a value without a correlated old one
            if unchanged and not rule.is_transition:
                continue  # ratcheting: it held (or was forgiven) on this very value before
            if unchanged and _true_when_unchanged(rule.rule):
                results.append((rule, None))  # e.g. `self == oldSelf` on an unchanged value: no need for CEL
                continue
            results.append((rule, _check_rule(rule, value, old_value, path)))
    return results


_SAME_SIDES = re.compile(r"^(self|has\(self\.\w+\))==\1$")


@functools.lru_cache(maxsize=512)
def _true_when_unchanged(rule: str) -> bool:
    """Whether a transition rule holds whenever `self` equals `oldSelf`, whatever the value: its
    two sides are the same expression, `self` or `has(self.field)` (which cannot fail on an object),
    once `oldSelf` reads `self` — immutability (`self == oldSelf`) and presence
    (`has(self.x) == has(oldSelf.x)`), the transition rules the CRDs use."""
    return bool(_SAME_SIDES.match(re.sub(r"\s+", "", rule).replace("oldSelf", "self")))


def _check_rule(rule: Rule, value: Any, old_value: Any, path: str) -> FieldError | None:
    where = (path + (rule.field_path or "")) or "<root>"
    try:
        ok = evaluate_rule(rule.rule, value, old_value, optional_old_self=rule.optional_old_self)
    except Exception as exc:  # a rule that cannot be evaluated rejects the object, as in Kubernetes
        return FieldError(where, f"Invalid value: rule {rule.rule!r} could not be evaluated: {exc}")
    if ok is True:
        return None
    message = rule.message or f"failed rule: {rule.rule}"
    if rule.message_expression:
        try:
            rendered = evaluate_rule(
                rule.message_expression, value, old_value, optional_old_self=rule.optional_old_self
            )
            if isinstance(rendered, str) and rendered.strip():
                message = rendered
        except Exception:  # Kubernetes falls back to `message` when messageExpression fails
            pass
    return FieldError(where, f"{_REASON_PREFIX.get(rule.reason or '', 'Invalid value')}: {message}")


_REASON_PREFIX = {
    "FieldValueRequired": "Required value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueDuplicate": "Duplicate value",
}


def _walk(
    schema: dict, value: Any, old: Any, path: str, schema_path: str, ratchet: frozenset[str] | None = None
) -> Iterator[tuple[str, dict, Any, Any, str, bool]]:
    """(schema path, schema node, value, correlated old value or None, path, unchanged) for every
    present value. `ratchet` (schema paths at or above transition rules): `unchanged` says the
    value equals its old one, and below an unchanged value without transition rules nothing is
    yielded."""
    unchanged = ratchet is not None and old is not None and value == old
    if unchanged and schema_path not in ratchet:
        return
    yield schema_path, schema, value, old, path, unchanged
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name, sub_value in value.items():
            if props:
                sub, sub_schema_path = props.get(name), _join(schema_path, name)
            else:
                sub, sub_schema_path = (extra if isinstance(extra, dict) else None), f"{schema_path}[*]"
            if sub is None:
                continue
            sub_old = old.get(name) if isinstance(old, dict) else None
            yield from _walk(sub, sub_value, sub_old, _join(path, name), sub_schema_path, ratchet)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        olds: dict = {}
        keys = schema.get("x-kubernetes-list-map-keys") or []
        if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
            olds = {tuple(item.get(k) for k in keys): item for item in old if isinstance(item, dict)}
        for index, item in enumerate(value):
            item_old = olds.get(tuple(item.get(k) for k in keys)) if olds and isinstance(item, dict) else None
            yield from _walk(schema["items"], item, item_old, _join(path, index), f"{schema_path}[]", ratchet)
