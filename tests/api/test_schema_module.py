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
    stored, errors = schema.admit(make("GenModel", {"spec.config": {}}))
    assert errors == []
    assert stored["spec"]["config"] == {
        "blockOutChannels": [32, 64, 64], "layersPerBlock": 1, "attentionHeadDim": 8, "dropout": 0.0,
        "numTrainTimesteps": 1000, "betaSchedule": "linear", "predictionType": "epsilon", "inferenceSteps": 50,
        "rescaleBetasZeroSnr": False, "timestepSpacing": "leading"}


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
