"""What kubectl needs from the emulated API server (pure parts): OpenAPI, Tables, protobuf bodies."""

from __future__ import annotations

import datetime

import pytest

from genforge_local import openapi, protobuf, tables
from genforge_local.custom_resources import load_crds
from genforge_local.kubectl_support import fix_discovery
from genforge_operator.bundled import crd_dir

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def crds():
    return load_crds(crd_dir())


def test_openapi_v3_carries_every_crd_schema_by_gvk(crds):
    schemas = openapi.schemas(crds, [("", "v1", "Namespace")], "#/components/schemas/")
    genforge = schemas[("genforge.dev", "v1alpha1")]
    assert {name.rsplit(".", 1)[1] for name in genforge} == {
        "AcceleratorPool", "Budget", "Dataset", "FineTune", "GenModel", "TrainingRun"}
    run = genforge["dev.genforge.v1alpha1.TrainingRun"]
    assert run["x-kubernetes-group-version-kind"] == [
        {"group": "genforge.dev", "version": "v1alpha1", "kind": "TrainingRun"}]
    assert "budget" in run["properties"]["spec"]["properties"]
    assert schemas[("", "v1")]["io.k8s.api.core.v1.Namespace"]["x-kubernetes-preserve-unknown-fields"]

    paths = openapi.resource_paths("genforge.dev", "v1alpha1", [("trainingruns", "TrainingRun", True)])
    item = paths["/apis/genforge.dev/v1alpha1/namespaces/{namespace}/trainingruns/{name}"]
    assert item["patch"]["parameters"][0]["name"] == "fieldValidation"  # kubectl: validate on the server
    index = openapi.v3_index({("genforge.dev", "v1alpha1"): openapi.v3_document(genforge, paths)})
    assert index["paths"]["apis/genforge.dev/v1alpha1"]["serverRelativeURL"].startswith(
        "/openapi/v3/apis/genforge.dev/v1alpha1?hash=")


def test_openapi_v2_drops_what_v2_cannot_say(crds):
    v2 = openapi.v2_document(openapi.schemas(crds, [], "#/components/schemas/"))
    budget = v2["definitions"]["dev.genforge.v1alpha1.Budget"]
    assert "type" not in budget["properties"]["spec"]["properties"]["limit"]  # int-or-string
    assert budget["properties"]["metadata"]["$ref"] == "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    assert "x-kubernetes-validations" not in str(v2)


def test_discovery_like_kube_apiserver():
    body = {"groupVersion": "/v1", "resources": [
        {"name": "trainingruns", "shortNames": ["tr"], "categories": ["genforge"], "verbs": ["get", "list"]},
        {"name": "trainingruns/status", "shortNames": ["tr"], "categories": ["genforge"], "verbs": ["get", "list"]}]}
    fixed = fix_discovery(body)
    assert fixed["groupVersion"] == "v1"
    assert fixed["resources"][0]["categories"] == ["genforge"]
    assert fixed["resources"][1] == {"name": "trainingruns/status", "verbs": ["get", "patch", "update"]}


def test_crd_table_uses_printer_columns(crds):
    run = {"metadata": {"name": "r", "creationTimestamp": "2026-01-01T11:55:00Z"},
           "status": {"phase": "Running", "progress": {"percent": 12.5, "step": 7}, "cost": {"accrued": "0.5"}}}
    printer = tables.printer_for("genforge.dev", "v1alpha1", "trainingruns", crds)
    table = tables.to_table({"metadata": {"resourceVersion": "9"}, "items": [run]}, printer, now=NOW)
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:3] == ["Name", "Phase", "Pool"] and names[-1] == "Age"
    cells = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert cells == {"Name": "r", "Phase": "Running", "Pool": None, "Progress": 12.5, "Cost": "0.5", "Budget": None,
                     "Step": 7, "Loss": None, "ETA": None, "Age": "5m"}
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    assert {c["name"] for c in table["columnDefinitions"] if c["priority"] == 1} == {"Step", "Loss", "ETA"}


POD_STATUSES = {
    "pending, no status yet": ({}, None, "Pending"),
    "running": ({"phase": "Running", "containerStatuses": [{"ready": True, "state": {"running": {}}}]}, None,
                "Running"),
    "completed": ({"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"reason": "Completed"}}}]},
                  None, "Completed"),
    "waiting": ({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "CreateContainerConfigError"}}}]},
                None, "CreateContainerConfigError"),
    "being deleted": ({"phase": "Running"}, "2026-01-01T00:00:00Z", "Terminating"),
}


@pytest.mark.parametrize("status,deleting,shown", POD_STATUSES.values(), ids=POD_STATUSES.keys())
def test_pod_status_column(status, deleting, shown):
    pod = {"metadata": {"name": "p", **({"deletionTimestamp": deleting} if deleting else {})},
           "spec": {"containers": [{"name": "c"}]}, "status": status}
    assert tables.to_table(pod, tables.POD_PRINTER, now=NOW)["rows"][0]["cells"][2] == shown


@pytest.mark.parametrize("seconds,text", [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600, "3h"),
                                          (9 * 3600, "9h"), (50 * 3600, "2d2h"), (400 * 86400, "400d")])
def test_human_duration(seconds, text):
    assert tables.human_duration(seconds) == text


@pytest.mark.parametrize("path,value", [(".status.phase", "Ready"), (".spec.list[1]", 2), (".missing.x", None),
                                        ('.status.conditions[?(@.type=="Ready")].status', "True")])
def test_json_path(path, value):
    obj = {"status": {"phase": "Ready", "conditions": [{"type": "Other", "status": "False"},
                                                       {"type": "Ready", "status": "True"}]},
           "spec": {"list": [1, 2]}}
    assert tables.json_path(obj, path) == value


# What kubectl 1.32 sends for `create namespace foo` and `create configmap cfg --from-literal=a=b --from-literal=c=d`.
NAMESPACE_BODY = bytes.fromhex("6b3873000a0f0a02763112094e616d657370616365121b0a130a03666f6f12001a0022002a003200"
                               "3800420012001a020a001a002200")
CONFIGMAP_BODY = bytes.fromhex("6b3873000a0f0a0276311209436f6e6669674d617012250a130a0363666712001a0022002a003200"
                               "3800420012060a016112016212060a01631201641a002200")
JOB_BODY = bytes.fromhex("6b3873000a0f0a0862617463682f763112034a6f621200")


def test_protobuf_bodies_of_kubectl_create():
    assert protobuf.decode_object(NAMESPACE_BODY) == {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": "foo"}}
    assert protobuf.decode_object(CONFIGMAP_BODY) == {"apiVersion": "v1", "kind": "ConfigMap",
                                                      "metadata": {"name": "cfg"}, "data": {"a": "b", "c": "d"}}
    with pytest.raises(protobuf.Unsupported, match="Job"):
        protobuf.decode_object(JOB_BODY)


@pytest.mark.parametrize("tail,limit,expected", [(None, None, b"a\nb\nc\n"), (2, None, b"b\nc\n"), (0, None, b""),
                                                 (None, 3, b"a\nb"), (2, 3, b"b\nc")])
def test_log_tail(tail, limit, expected):
    from genforge_local.kubectl_support import log_tail

    assert log_tail(b"a\nb\nc\n", tail, limit) == expected
