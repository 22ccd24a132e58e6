"""The CRD files themselves: valid CustomResourceDefinitions, structural, complete, cheap for CEL."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from genforge_operator import api, bundled, schema

KUBERNETES_VERSION = "1.32"  # the kubectl shipped on the development machines; CEL and fieldPath need >= 1.28
CRD_FILES = {
    "AcceleratorPool": "acceleratorpools.yaml",
    "Budget": "budgets.yaml",
    "Dataset": "datasets.yaml",
    "GenModel": "genmodels.yaml",
    "TrainingRun": "trainingruns.yaml",
    "FineTune": "finetunes.yaml",
}
PRINTER_COLUMNS = {
    "TrainingRun": ["Phase", "Pool", "Progress", "Cost", "Budget", "Age"],
    "FineTune": ["Phase", "Pool", "Progress", "Cost", "Budget", "Age"],
    "Dataset": ["Phase", "Kept", "Dropped", "Age"],
    "Budget": ["Spent", "Limit", "Remaining"],
    "AcceleratorPool": ["Type", "Price", "Age"],
    "GenModel": ["Architecture", "Latest", "Promoted", "Age"],
}
KINDS = sorted(api.KINDS)


def crd_path(kind: str) -> Path:
    return bundled.crd_dir() / CRD_FILES[kind]


def version_of(crd: dict) -> dict:
    (version,) = crd["spec"]["versions"]
    return version


def schema_nodes(node: dict, path: str = ""):
    """(path, node) for every schema node, junctor branches included."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}[*]")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    for junctor in ("anyOf", "allOf", "oneOf"):
        for index, sub in enumerate(node.get(junctor, [])):
            yield from schema_nodes(sub, f"{path}<{junctor}{index}>")


def test_one_file_per_kind():
    assert sorted(p.name for p in bundled.crd_dir().glob("*.yaml")) == sorted(CRD_FILES.values())
    assert sorted(schema.load_crds()) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_a_valid_customresourcedefinition(kind):
    (crd,) = [doc for doc in yaml.safe_load_all(crd_path(kind).read_text()) if doc]
    assert kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize("kind", KINDS)
def test_names_scope_and_version_follow_api_kinds(kind):
    crd = schema.crd_for(kind)
    spec, info = crd["spec"], api.KINDS[kind]
    assert crd["metadata"]["name"] == f"{info.plural}.{api.GROUP}"
    assert spec["group"] == api.GROUP
    assert spec["scope"] == ("Namespaced" if info.namespaced else "Cluster")
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": info.plural,
        "singular": info.singular,
        "shortNames": list(info.short_names),
        "categories": ["genforge"],
    }
    version = version_of(crd)
    assert (version["name"], version["served"], version["storage"]) == (api.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", KINDS)
def test_header_says_do_not_edit_and_explains_kopf_storage(kind):
    header = crd_path(kind).read_text().split("apiVersion:")[0]
    assert "DO NOT EDIT by hand without updating api.py; tests/api/test_models_drift.py checks both" in header
    assert "kopf.AnnotationsProgressStorage(prefix='genforge.dev')" in header


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_exist_and_point_into_the_schema(kind):
    version = version_of(schema.crd_for(kind))
    columns = version["additionalPrinterColumns"]
    default_columns = [c["name"] for c in columns if not c.get("priority")]
    for name in PRINTER_COLUMNS[kind]:
        assert name in default_columns
    root = version["schema"]["openAPIV3Schema"]
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = root
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][part]
        node_type = "string" if node.get("x-kubernetes-int-or-string") else node["type"]
        assert node_type == column["type"], column


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural_and_strict(kind):
    root = version_of(schema.crd_for(kind))["schema"]["openAPIV3Schema"]
    assert root["required"] == ["spec"]
    for path, node in schema_nodes(root):
        where = f"{kind}{path}"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), where
        in_junctor = "<" in path.rsplit(".", 1)[-1]
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and node["anyOf"] == [{"type": "integer"}, {"type": "string"}], where
            assert node["pattern"] == r"^[0-9]+(\.[0-9]+)?$" and node["minimum"] == 0, where
        elif not in_junctor:
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, where
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", where
        for name in node.get("required", []):
            assert name in node["properties"], where
    # a map is a map: only these objects take arbitrary keys
    maps = sorted(p for p, n in schema_nodes(root) if isinstance(n.get("additionalProperties"), dict))
    assert set(maps) <= {
        ".spec.nodeSelector",
        ".spec.selector.matchLabels",
        ".status.metrics",
        ".status.redactions",
        ".status.versions[].metrics",
    }, maps


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_validate_against_their_own_schema_and_rules(kind):
    # kube-apiserver refuses a CRD whose defaults, as written (nested defaults NOT applied),
    # break their schema or their CEL rules (tests/real installs the CRDs on a real one).
    assert schema.default_errors(schema.crd_for(kind)) == []


def test_a_rule_reading_a_field_the_default_leaves_out_is_refused():
    """The GenModel CRD once had `default: {}` on config with a bare rule
    `self.inferenceSteps <= self.numTrainTimesteps`: a real kube-apiserver refused the CRD."""
    crd = copy.deepcopy(schema.crd_for("GenModel"))
    config = version_of(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["config"]
    assert config["default"] == {}
    rule = next(r for r in config["x-kubernetes-validations"] if "inferenceSteps" in r["rule"])
    rule["rule"] = "self.inferenceSteps <= self.numTrainTimesteps"
    (error,) = schema.default_errors(crd)
    assert error.path == "openAPIV3Schema.properties[spec].properties[config].default"
    assert "inferenceSteps" in error.message
    config["default"] = {"blockOutChannels": "not-a-list"}
    assert any("is not of type" in e.message for e in schema.default_errors(crd))


@pytest.mark.parametrize("kind", KINDS)
def test_spec_strings_and_lists_are_bounded_for_cel_cost(kind):
    # The API server estimates CEL cost from maxLength/maxItems/maxProperties; unbounded
    # strings or lists under a rule (`self == oldSelf` on a whole block) can exceed the limit.
    spec = version_of(schema.crd_for(kind))["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in schema_nodes(spec, ".spec"):
        if "<" in path:
            continue
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, f"{kind}{path}"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{kind}{path}"
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{kind}{path}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_compiles_and_its_field_path_exists(kind):
    crd = schema.crd_for(kind)
    rules = list(schema.iter_rules(crd))
    for rule in rules:
        schema._program(rule.rule)
        if rule.message_expression:
            schema._program(rule.message_expression)
        assert rule.message, f"{kind} {rule.path}: every rule carries a human message"
        if rule.field_path:
            node = version_of(crd)["schema"]["openAPIV3Schema"]
            for part in rule.path.replace("[]", ".[]").split("."):
                node = node["items"] if part == "[]" else node["properties"][part]
            for part in rule.field_path.lstrip(".").split("."):
                node = node["properties"][part]


def test_transition_rules_guard_the_immutable_fields():
    immutable = {
        kind: sorted(r.path for r in schema.iter_rules(schema.crd_for(kind)) if r.rule == "self == oldSelf")
        for kind in ("TrainingRun", "FineTune")
    }
    assert immutable["TrainingRun"] == sorted(
        ["spec.modelRef", "spec.datasetRef", "spec.training", "spec.hardware", "spec.checkpoint",
         "spec.evaluation", "spec.output"]
    )
    assert immutable["FineTune"] == sorted(
        [
            "spec.baseModel",
            "spec.datasetRef",
            "spec.method",
            "spec.training",
            "spec.hardware",
            "spec.checkpoint",
            "spec.evaluation",
            "spec.output",
            "spec.lora",
            "spec.dreambooth",
            "spec.embedding",
            "spec.preference",
        ]
    )
