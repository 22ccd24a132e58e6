"""genforge_operator.schema on small hand-made schemas: conversion, defaulting, error paths."""

from __future__ import annotations

import jsonschema
import pytest

from genforge_operator import api, schema

from .builders import make


def json_errors(openapi: dict, value) -> list[str]:
    validator = jsonschema.Draft4Validator(schema.to_json_schema(openapi))
    return sorted(e.message for e in validator.iter_errors(value))


@pytest.mark.parametrize(
    ("openapi", "value", "valid"),
    [
        pytest.param({"x-kubernetes-int-or-string": True}, 5, True, id="int-or-string-int"),
        pytest.param({"x-kubernetes-int-or-string": True}, "5", True, id="int-or-string-str"),
        pytest.param({"x-kubernetes-int-or-string": True}, 5.5, False, id="int-or-string-float"),
        pytest.param({"x-kubernetes-int-or-string": True}, None, False, id="int-or-string-null"),
        pytest.param({"x-kubernetes-int-or-string": True, "nullable": True}, None, True, id="nullable-int-or-string"),
        pytest.param({"type": "string"}, None, False, id="not-nullable"),
        pytest.param({"type": "string", "nullable": True}, None, True, id="nullable"),
        pytest.param({"type": "object", "properties": {"a": {"type": "string"}}}, {"b": "x"}, False, id="unknown"),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string"}}, "x-kubernetes-preserve-unknown-fields": True},
            {"b": "x"},
            True,
            id="preserve-unknown",
        ),
        pytest.param({"type": "object"}, {"anything": 1}, True, id="object-without-properties"),
        pytest.param(
            {"type": "object", "additionalProperties": {"type": "integer"}}, {"a": "x"}, False, id="map-values"
        ),
        pytest.param(
            {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}}, [1, 1], False, id="set"
        ),
        pytest.param({"type": "number", "minimum": 0, "exclusiveMinimum": True}, 0, False, id="exclusive-minimum"),
        pytest.param(
            {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object"}}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
            True,
            id="embedded-resource",
        ),
    ],
)
def test_to_json_schema(openapi, value, valid):
    assert (json_errors(openapi, value) == []) == valid


def test_kubernetes_only_keys_are_dropped():
    converted = schema.to_json_schema(
        {
            "type": "integer",
            "default": 3,
            "x-kubernetes-validations": [{"rule": "self > 1"}],
            "description": "kept",
        }
    )
    assert converted == {"type": "integer", "description": "kept"}


def test_defaults_fill_nested_blocks_and_drop_nulls():
    run = make("TrainingRun", {"spec.budget": None, "spec.checkpoint": {"keep": None},
                             "spec.training.lrScheduler": None})
    defaulted = schema.apply_defaults(run)
    assert defaulted["spec"]["budget"] == {"onExceeded": "Stop"}
    assert defaulted["spec"]["checkpoint"] == {"everySteps": 500, "keep": 3}
    assert defaulted["spec"]["training"]["lrScheduler"] == "constant"
    assert run["spec"]["budget"] is None  # the input is not modified


def test_defaults_leave_optional_blocks_absent():
    run = make("TrainingRun")
    del run["spec"]["evaluation"]
    assert "evaluation" not in schema.apply_defaults(run)["spec"]


def test_admit_returns_the_object_the_api_server_would_store():
    stored, errors = schema.admit_object(make("GenModel", {"spec.config": {}}))
    assert errors == []
    assert stored["spec"]["config"] == {
        "blockOutChannels": [32, 64, 64], "layersPerBlock": 1, "attentionHeadDim": 8, "dropout": 0.0,
        "numTrainTimesteps": 1000, "betaSchedule": "linear", "predictionType": "epsilon", "inferenceSteps": 50,
        "ddimEta": 0.0, "classDropout": 0.0, "guidanceScale": 1.0, "rescaleBetasZeroSnr": False,
        "timestepSpacing": "leading"}


def test_unknown_kind_is_an_error_not_a_crash():
    assert schema.validate({"apiVersion": api.API_VERSION, "kind": "Pizza", "metadata": {"name": "p"}}) == [
        schema.FieldError("kind", "no CRD for kind 'Pizza' (known: AcceleratorPool, Budget, Dataset, FineTune, "
                          "GenModel, TrainingRun)")
    ]


def test_field_errors_are_path_message_pairs():
    ((path, message),) = schema.validate(make("TrainingRun", {"spec.training.steps": 0}))
    assert path == "spec.training.steps"
    assert str(schema.FieldError(path, message)).startswith("spec.training.steps: Invalid value: 0")


def test_cel_rule_errors_are_reported_not_raised():
    crd = {"spec": {"versions": [{"name": "v1alpha1", "schema": {"openAPIV3Schema": {
        "type": "object", "x-kubernetes-validations": [{"rule": "self.missing > 1", "message": "m"}]}}}]}}
    ((path, message),) = schema.evaluate_validations(crd, {})
    assert path == "<root>" and "could not be evaluated" in message


def test_is_sorted_shim():
    assert schema.evaluate_rule("self.isSorted()", [1, 2, 2, 3]) is True
    assert schema.evaluate_rule("self.isSorted()", [3, 1]) is False


def test_yaml_loader_reads_exponents_as_numbers_like_kubectl():
    import yaml

    assert yaml.load("lr: 1e-4", Loader=schema._YamlLoader) == {"lr": 1e-4}
    assert yaml.safe_load("lr: 1e-4") == {"lr": "1e-4"}  # what plain PyYAML would do


def _crd(openapi: dict) -> dict:
    return {"metadata": {"name": "widgets.example.test"},
            "spec": {"group": "example.test", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced",
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": openapi}}]}}


@pytest.mark.parametrize(
    ("openapi", "obj", "kept", "pruned"),
    [
        pytest.param({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "string"}}}}}, {"spec": {"a": "x", "b": 1}, "extra": 2},
            {"spec": {"a": "x"}}, ["extra", "spec.b"], id="unknown-fields-at-any-depth"),
        pytest.param({"type": "object", "properties": {"spec": {"type": "object", "properties": {"items": {
            "type": "array", "items": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}}},
            {"spec": {"items": [{"a": 1}, {"a": 2, "b": 3}]}},
            {"spec": {"items": [{"a": 1}, {"a": 2}]}}, ["spec.items[1].b"], id="list-items"),
        pytest.param({"type": "object", "properties": {"status": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
            {"status": {"anything": {"goes": 1}}}, {"status": {"anything": {"goes": 1}}}, [], id="preserve-unknown"),
        pytest.param({"type": "object", "properties": {"spec": {"type": "object", "properties": {"labels": {
            "type": "object", "additionalProperties": {"type": "string"}}}}}},
            {"spec": {"labels": {"any": "key"}}}, {"spec": {"labels": {"any": "key"}}}, [], id="map"),
        pytest.param({"type": "object", "properties": {"spec": {"type": "object", "properties": {"template": {
            "type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object"}}}}}}},
            {"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {},
                                   "other": 1}}},
            {"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}}},
            ["spec.template.other"], id="embedded-resource"),
        pytest.param({"type": "object", "properties": {"metadata": {"type": "object"}}},
            {"metadata": {"name": "w", "labels": {"a": "b"}}}, {"metadata": {"name": "w", "labels": {"a": "b"}}},
            [], id="metadata-is-the-servers"),
    ],
)
def test_prune_drops_what_the_schema_does_not_declare_like_kube_apiserver(openapi, obj, kept, pruned):
    identity = {"apiVersion": "example.test/v1", "kind": "Widget"}
    crd_schema = schema.CustomResourceSchema(_crd(openapi), "v1")
    out, paths = crd_schema.prune({**identity, **obj})
    assert out == {**identity, **kept} and paths == pruned


def test_prune_then_admit_is_the_non_strict_api_server():
    """`validate` refuses an unknown field (strict, as kubectl asks); pruned first, the rest is judged."""
    run = make("TrainingRun", {"spec.gpus": 8, "status": {"phase": "Running", "kopf": {}}})
    assert {e.path for e in schema.validate(run)} == {"spec.gpus", "status.kopf"}
    pruned, paths = schema.prune(run)
    assert paths == ["spec.gpus", "status.kopf"] and schema.validate(pruned) == []
    assert schema.prune({"kind": "Unknown", "x": 1}) == ({"kind": "Unknown", "x": 1}, [])


def test_a_crd_schema_admits_objects_of_its_own_group_and_version():
    crd = _crd({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
        "size": {"type": "integer", "minimum": 1, "default": 1},
        "mode": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]},
    }}}})
    widgets = schema.CustomResourceSchema(crd, "v1")
    widget = {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"mode": "a"}}
    stored, errors = widgets.admit(widget)
    assert errors == [] and stored["spec"] == {"size": 1, "mode": "a"}
    changed = {**stored, "spec": {"size": 0, "mode": "b"}}
    assert [e.path for e in widgets.admit(changed, stored, ratchet=True)[1]] == ["spec.size"]
    assert [e.path for e in widgets.admit({**changed, "spec": {"mode": "b"}}, stored)[1]] == ["spec.mode"]
    assert [e.path for e in widgets.admit({**widget, "apiVersion": "example.test/v2"})[1]] == ["apiVersion"]


def test_admit_write_is_the_api_servers_handling_of_a_write():
    """Prune (reported, not refused), default, validate; on an update what is unchanged is not
    judged again (validation ratcheting), but rules with `oldSelf` always run."""
    crd = _crd({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "size": {"type": "integer", "minimum": 1, "default": 1},
            "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('w')"}]},
            "mode": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]},
        }},
        "status": {"type": "object", "properties": {"phase": {"type": "string", "enum": ["A", "B"]}}},
    }})
    widgets = schema.CustomResourceSchema(crd, "v1")
    widget = {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w"},
              "spec": {"name": "w1", "mode": "a", "extra": 1}}
    stored, unknown, errors, rules_skipped = widgets.admit_write(widget)
    assert (stored["spec"], unknown, errors, rules_skipped) == (
        {"size": 1, "name": "w1", "mode": "a"}, ["spec.extra"], [], False)
    assert widgets.admit_write({**widget, "spec": {"size": 0}}).rules_skipped  # the schema refused it first
    # A status write: the spec is not judged again, even where a rule or bound would now fail
    # (as after a CRD change: the stored object is forgiven, kube-apiserver's ratcheting).
    grandfathered = {**stored, "spec": {**stored["spec"], "size": 0, "name": "x"}}
    status_write = {**grandfathered, "status": {"phase": "A"}}
    assert widgets.admit_write(status_write, grandfathered)[2] == []
    assert [e.path for e in widgets.admit_write({**status_write, "status": {"phase": "C"}}, grandfathered)[2]] == [
        "status.phase"]
    # A changed spec is judged whole; a rule with oldSelf runs on unchanged values too.
    assert [e.path for e in widgets.admit_write({**stored, "spec": {**stored["spec"], "size": 0}}, stored)[2]] == [
        "spec.size"]
    assert [e.path for e in widgets.admit_write({**stored, "spec": {**stored["spec"], "mode": "b"}}, stored)[2]] == [
        "spec.mode"]
    assert [e.path for e in widgets.admit_write({**stored, "spec": {**stored["spec"], "name": "x"}}, stored)[2]] == [
        "spec.name"]


def _table_objects():
    from .test_cel_rules import ALLOWED, REJECTED
    from .test_invalid_resources import INVALID

    for case_id, kind, changes, *_ in INVALID + REJECTED + ALLOWED:
        yield pytest.param(kind, changes, id=case_id)


@pytest.mark.parametrize(("kind", "changes"), list(_table_objects()))
def test_the_fast_path_passes_only_what_jsonschema_passes(kind, changes):
    """`_surely_valid` skips jsonschema for valid objects: it must never pass one jsonschema refuses,
    and it should pass the valid ones (else it saves nothing)."""
    crd_schema = schema.crd_schema(kind)
    obj = schema.apply_defaults(make(kind, changes))
    valid = not list(crd_schema.validator.iter_errors(obj))
    fast = schema._surely_valid(crd_schema.json_schema, obj, crd_schema.validator.format_checker)
    assert fast == valid, (fast, valid)


@pytest.mark.parametrize(("openapi", "value"), [
    pytest.param({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}}, [1, 1], id="int-set"),
    pytest.param({"type": "string", "enum": ["1"]}, 1, id="enum-of-another-type"),
    pytest.param({"type": "string", "pattern": "^a"}, "b", id="pattern"),
    pytest.param({"type": "boolean", "enum": [True]}, 1, id="int-for-bool"),
    pytest.param({"type": "integer"}, True, id="bool-is-not-an-integer"),
    pytest.param({"type": "string", "format": "date-time"}, "yesterday", id="date-time"),
    pytest.param({"type": "object", "properties": {"a": {"type": "string"}}}, {"b": 1}, id="unknown-field"),
    pytest.param({"type": "number", "minimum": 0, "exclusiveMinimum": True}, 0, id="exclusive-minimum"),
    pytest.param({"type": "array", "items": {"type": "string"}, "maxItems": 1}, ["a", "b"], id="max-items"),
    pytest.param({"x-kubernetes-int-or-string": True}, 1.5, id="int-or-string"),
])
def test_the_fast_path_leaves_what_jsonschema_refuses_to_jsonschema(openapi, value):
    converted = schema.to_json_schema(openapi)
    validator = jsonschema.Draft4Validator(converted, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    assert list(validator.iter_errors(value))
    assert not schema._surely_valid(converted, value, validator.format_checker)
