"""api.py's dataclasses and crds/*.yaml describe the same API — fail on any disagreement.

For every kind, the spec and status dataclasses are walked together with the CRD schema:

- the same property names at every level, in both directions (`learning_rate` ↔ `learningRate`);
- the same nesting and types (dataclass ↔ object, list ↔ array, dict ↔ map, Literal ↔ enum
  with the same values, Decimal ↔ int-or-string money with units.MONEY_PATTERN, durations
  ↔ units.DURATION_PATTERN);
- `required` ↔ fields without a default;
- spec defaults ↔ dataclass defaults (a dataclass-valued default is `{}`, whose nested
  defaults the API server fills; empty lists and maps and None have no schema default).
  Status schemas carry no defaults: the operator writes status whole.

Plus: defaulting a minimal object with the CRD and parsing it gives the same typed spec as
parsing it bare (so the API server and the dataclasses fill in the same values), and
every example parses with `api.parse_resource`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from decimal import Decimal
from typing import Any, Literal

import pytest

from genforge_operator import api, schema, units

from .builders import example_documents

DURATION_FIELDS = {"deadline", "max_duration"}
DATE_TIME_FIELDS = {
    "last_transition_time",
    "period_start",
    "start_time",
    "completion_time",
    "created_at",
    "start",
    "end",
}
SCALARS = {int: "integer", float: "number", bool: "boolean", str: "string"}


def unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(args) == 1, tp
        return args[0]
    return tp


def expected_default(f: dataclasses.Field) -> Any:
    """The schema default a dataclass field implies, or MISSING for none."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    if value is None or value == [] or value == {}:
        return dataclasses.MISSING
    if dataclasses.is_dataclass(value):
        return {}
    return value


def compare(cls: type, node: dict, path: str, *, is_spec: bool) -> list[str]:
    problems: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {api.camel(f.name): f for f in dataclasses.fields(cls)}
    props = node.get("properties", {})
    if node.get("type") != "object":
        problems.append(f"{path}: schema is not an object for {cls.__name__}")
    for name in sorted(set(fields) - set(props)):
        problems.append(f"{path}.{name}: in {cls.__name__} but not in the CRD")
    for name in sorted(set(props) - set(fields)):
        problems.append(f"{path}.{name}: in the CRD but not in {cls.__name__}")
    required = {
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if set(node.get("required", [])) != required:
        problems.append(
            f"{path}: required {sorted(node.get('required', []))} != {cls.__name__} {sorted(required)}"
        )
    for name in sorted(set(fields) & set(props)):
        f, sub, sub_path = fields[name], props[name], f"{path}.{name}"
        default = expected_default(f)
        if is_spec:
            if default is dataclasses.MISSING and "default" in sub:
                problems.append(f"{sub_path}: CRD default {sub['default']!r} but {cls.__name__} has none")
            elif default is not dataclasses.MISSING and sub.get("default", dataclasses.MISSING) != default:
                problems.append(
                    f"{sub_path}: CRD default {sub.get('default')!r} != {cls.__name__} {default!r}"
                )
        elif "default" in sub:
            problems.append(f"{sub_path}: status schemas carry no defaults")
        problems += compare_type(hints[f.name], sub, sub_path, f.name, is_spec=is_spec)
    return problems


def compare_type(tp: Any, node: dict, path: str, field_name: str, *, is_spec: bool) -> list[str]:
    tp = unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return compare(tp, node, path, is_spec=is_spec)
    if tp is Decimal:
        ok = (
            node.get("x-kubernetes-int-or-string") is True
            and node.get("pattern") == units.MONEY_PATTERN
            and node.get("minimum") == 0
        )
        return [] if ok else [f"{path}: money must be int-or-string with units.MONEY_PATTERN and minimum 0"]
    if origin is Literal:
        values = list(typing.get_args(tp))
        if node.get("type") != "string" or node.get("enum") != values:
            return [f"{path}: enum {node.get('enum')} != {values}"]
        return []
    if origin is list:
        if node.get("type") != "array":
            return [f"{path}: expected an array"]
        (item,) = typing.get_args(tp)
        return compare_type(item, node["items"], f"{path}[]", field_name, is_spec=is_spec)
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if node.get("type") != "object" or not isinstance(node.get("additionalProperties"), dict):
            return [f"{path}: expected a map (additionalProperties)"]
        return compare_type(value_tp, node["additionalProperties"], f"{path}[*]", field_name, is_spec=is_spec)
    if tp in SCALARS:
        problems = (
            [] if node.get("type") == SCALARS[tp] else [f"{path}: type {node.get('type')} != {SCALARS[tp]}"]
        )
        if field_name in DURATION_FIELDS and node.get("pattern") != units.DURATION_PATTERN:
            problems.append(f"{path}: a duration must use units.DURATION_PATTERN")
        if field_name in DATE_TIME_FIELDS and node.get("format") != "date-time":
            problems.append(f"{path}: a timestamp must have format date-time")
        return problems
    return [f"{path}: unsupported type {tp!r} in api.py"]


@pytest.mark.parametrize("kind", sorted(api.KINDS))
@pytest.mark.parametrize("part", ["spec", "status"])
def test_dataclasses_and_crd_schema_agree(kind, part):
    info = api.KINDS[kind]
    root = schema.openapi_schema(schema.crd_for(kind))
    cls = info.spec_type if part == "spec" else info.status_type
    assert compare(cls, root["properties"][part], part, is_spec=part == "spec") == []


def test_the_drift_check_notices_a_renamed_field():
    @dataclasses.dataclass
    class Renamed:
        every_step: int = 500  # the CRD says everySteps
        keep: int = 3

    node = schema.openapi_schema(schema.crd_for("TrainingRun"))["properties"]["spec"]["properties"][
        "checkpoint"
    ]
    assert (
        compare(Renamed, node, "spec.checkpoint", is_spec=True)
        == [
            "spec.checkpoint.everySteps: in the CRD but not in Renamed",
            "spec.checkpoint.everyStep: in Renamed but not in the CRD",
        ][::-1]
    )


MINIMAL = {
    "AcceleratorPool": {"pricePerHour": "1"},
    "Budget": {"limit": 100},
    "Dataset": {"source": {"uri": "synthetic://shapes"}},
    "GenModel": {"architecture": "unet2d-ddpm"},
    "TrainingRun": {
        "modelRef": {"name": "m"},
        "datasetRef": {"name": "d"},
        "training": {"steps": 10},
        "hardware": {"deadline": "1h"},
    },
    "FineTune": {
        "baseModel": {"name": "m"},
        "datasetRef": {"name": "d"},
        "method": "lora",
        "training": {"steps": 10},
        "lora": {},
        "evaluation": {},
        "hardware": {"deadline": "1h"},
    },
}


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_crd_defaults_equal_dataclass_defaults(kind):
    bare = {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": "x"}, "spec": MINIMAL[kind]}
    defaulted, errors = schema.admit_object(bare)
    assert errors == []
    assert defaulted["spec"] != bare["spec"]  # the API server did fill something in
    assert api.parse_resource(defaulted).spec == api.parse_resource(bare).spec


@pytest.mark.parametrize(
    ("file_name", "doc"),
    example_documents(),
    ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"],
)
def test_example_parses_into_the_typed_models(file_name, doc):
    resource = api.parse_resource(doc)
    assert resource.kind == doc["kind"] and resource.name == doc["metadata"]["name"]
    # ...and survives the round trip the operator does when it writes objects back
    assert api.from_dict(api.KINDS[doc["kind"]].spec_type, api.to_dict(resource.spec)) == resource.spec
