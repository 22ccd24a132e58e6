"""The emulated API server behaves like kube-apiserver where clients (kopf, kubectl) rely on it.

Most cases are a table of request sequences against the session's emulated cluster, each
in a fresh namespace; watches, garbage collection, namespaces and faults need waiting and
have their own tests.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import kmock
import pytest
from harness import RawApi, wait_for

from genforge_local import EmulatedCluster

#: These tests write arbitrary status themselves to test the API semantics.
pytestmark = pytest.mark.writes_status

RUNS = "/apis/genforge.dev/v1alpha1/namespaces/{ns}/trainingruns"
RUN = RUNS + "/r"
BUDGETS = "/apis/genforge.dev/v1alpha1/namespaces/{ns}/budgets"
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
CONFIGMAPS = "/api/v1/namespaces/{ns}/configmaps"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
ABSENT = object()


#: The smallest TrainingRun spec the CRD admits (the emulator validates custom resources).
SPEC = {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"}, "training": {"steps": 10}, "hardware": {"pool": "cpu"}}


def run(name: str = "r", labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    return {"apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun", "metadata": metadata, "spec": SPEC, **extra}


@dataclasses.dataclass
class Step:
    """One request; `{ns}` is the test's namespace, `{rv}` the last answer's resourceVersion."""

    method: str
    path: str
    body: Any = None
    status: int = 200
    expect: dict[str, Any] | None = None  # a partial pattern (`...`: present, any value)
    absent: tuple[str, ...] = ()  # dotted paths that must not be there
    items: list[str] | None = None  # the names a list answers
    content_type: str = "application/json"
    params: dict[str, str] | None = None


def get(path: str = RUN, **kw: Any) -> Step:
    return Step("GET", path, **kw)


def post(body: Any, path: str = RUNS, status: int = 201, **kw: Any) -> Step:
    return Step("POST", path, body, status=status, **kw)


def merge(body: Any, path: str = RUN, **kw: Any) -> Step:
    return Step("PATCH", path, body, content_type=MERGE, **kw)


CASES: dict[str, list[Step]] = {
    "create fills server metadata and drops status": [
        post(run(status={"phase": "Hacked"}), expect={
            "apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "r", "namespace": "{ns}", "uid": ..., "resourceVersion": ...,
                         "creationTimestamp": ..., "generation": 1}}, absent=("status",)),
    ],
    "create twice is AlreadyExists": [
        post(run()), post(run(), status=409, expect={"reason": "AlreadyExists", "code": 409}),
    ],
    "create in a missing namespace is NotFound": [
        post(run(), path="/apis/genforge.dev/v1alpha1/namespaces/no-such-ns/trainingruns", status=404),
    ],
    "create without a namespace in the URL is refused for a namespaced kind": [
        post(run(), path="/apis/genforge.dev/v1alpha1/trainingruns", status=405),
    ],
    "an invalid name is Invalid": [post(run(name="Not_A_Name"), status=422, expect={"reason": "Invalid"})],
    "generateName makes a name": [
        post({"metadata": {"generateName": "r-"}, "spec": SPEC}, expect={"metadata": {"name": ...}}),
    ],
    "a list carries kind, apiVersion and resourceVersion": [
        post(run("a")), post(run("b")),
        get(RUNS, expect={"kind": "TrainingRunList", "apiVersion": "genforge.dev/v1alpha1",
                          "metadata": {"resourceVersion": ...}}, items=["a", "b"]),
    ],
    "an unknown resource is NotFound": [get("/apis/genforge.dev/v1alpha1/namespaces/{ns}/nothings", status=404)],
    "a status subresource the kind lacks is NotFound": [
        post({"metadata": {"name": "c"}}, path=CONFIGMAPS),
        get(CONFIGMAPS + "/c/status", status=404),
    ],
    "a missing object is NotFound": [get(status=404, expect={"reason": "NotFound", "details": {"name": "r"}})],
    "a stale resourceVersion on update is a Conflict": [
        post(run()),
        Step("PUT", RUN, {**run(), "metadata": {"name": "r", "resourceVersion": "1"}}, status=409,
             expect={"reason": "Conflict"}),
    ],
    "a stale resourceVersion in a merge patch is a Conflict": [
        post(run()), merge({"metadata": {"resourceVersion": "1"}, "spec": {"training": {"steps": 11}}}, status=409),
    ],
    "a failed JSON-patch test is Unprocessable (kopf relies on it)": [
        post(run()),
        Step("PATCH", RUN, [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                            {"op": "add", "path": "/metadata/finalizers", "value": ["a/b"]}],
             content_type=JSON_PATCH, status=422),
        get(absent=("metadata.finalizers",)),
    ],
    "a JSON patch whose test passes applies": [
        post(run()),
        Step("PATCH", RUN, [{"op": "test", "path": "/metadata/resourceVersion", "value": "{rv}"},
                            {"op": "add", "path": "/metadata/finalizers", "value": ["a/b"]}],
             content_type=JSON_PATCH, expect={"metadata": {"finalizers": ["a/b"]}}),
    ],
    "status sent to the main resource is ignored; spec bumps generation": [
        post(run()),
        merge({"status": {"phase": "Hacked"}, "spec": {"suspend": True}},
              expect={"metadata": {"generation": 2}, "spec": {"suspend": True}}, absent=("status",)),
    ],
    "the status subresource changes only status and not generation": [
        post(run()),
        merge({"status": {"phase": "Running"}, "spec": {"training": {"steps": 99}}}, path=RUN + "/status",
              expect={"status": {"phase": "Running"}, "metadata": {"generation": 1},
                      "spec": {"training": {"steps": 10}}}),
    ],
    "labels and annotations do not bump generation": [
        post(run()),
        merge({"metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}}},
              expect={"metadata": {"generation": 1, "labels": {"a": "b"}}}),
    ],
    "a no-op patch keeps the resourceVersion": [
        post(run()), merge({"spec": {"training": {"steps": 10}}}, expect={"metadata": {"resourceVersion": "{rv}"}}),
    ],
    "merge-patch null deletes a key; lists are replaced": [
        post({"apiVersion": "genforge.dev/v1alpha1", "kind": "Budget", "metadata": {"name": "b"},
              "spec": {"limit": "10", "warnAt": [50, 80], "selector": {"matchLabels": {"team": "a"}}}}, path=BUDGETS),
        merge({"spec": {"selector": None, "warnAt": [90]}}, path=BUDGETS + "/b",
              expect={"spec": {"warnAt": [90]}}, absent=("spec.selector",)),
    ],
    "a strategic merge patch is a merge patch without its directives": [
        post({"metadata": {"name": "c"}, "data": {"a": "1"}}, path=CONFIGMAPS),
        Step("PATCH", CONFIGMAPS + "/c", {"data": {"b": "2"}, "$setElementOrder/x": []},
             content_type=STRATEGIC, expect={"data": {"a": "1", "b": "2"}}, absent=("$setElementOrder/x",)),
    ],
    "PUT replaces the spec but keeps status; PUT on /status only status": [
        post(run()),
        merge({"status": {"phase": "Running"}}, path=RUN + "/status"),
        Step("PUT", RUN, run(spec={**SPEC, "queueName": "new"}, status={"phase": "Hacked"}),
             expect={"spec": {"queueName": "new"}, "status": {"phase": "Running"}, "metadata": {"generation": 2}}),
        Step("PUT", RUN + "/status", run(spec={**SPEC, "queueName": "ignored"}, status={"phase": "Succeeded"}),
             expect={"spec": {"queueName": "new"}, "status": {"phase": "Succeeded"}}),
    ],
    "finalizers hold a deletion until they are removed": [
        post(run(metadata={"name": "r", "finalizers": ["a/b"]})),
        Step("DELETE", RUN, expect={"metadata": {"deletionTimestamp": ...}}),
        get(expect={"metadata": {"deletionTimestamp": ..., "finalizers": ["a/b"]}}),
        merge({"metadata": {"finalizers": ["a/b", "c/d"]}}, status=422),
        merge({"metadata": {"finalizers": None}}),
        get(status=404),
    ],
    "delete without finalizers removes at once": [post(run()), Step("DELETE", RUN), get(status=404)],
    "a failed delete precondition is a Conflict": [
        post(run()),
        Step("DELETE", RUN, {"preconditions": {"resourceVersion": "1"}}, status=409),
        get(),
    ],
    "deletecollection honours the label selector": [
        post(run("a", labels={"x": "1"})), post(run("b", labels={"x": "2"})),
        Step("DELETE", RUNS, params={"labelSelector": "x=1"}, items=["a"]),
        get(RUNS, items=["b"]),
    ],
    "list honours label and field selectors": [
        post(run("a", labels={"x": "1"})), post(run("b", labels={"x": "2"})), post(run("c")),
        get(RUNS, params={"labelSelector": "x"}, items=["a", "b"]),
        get(RUNS, params={"labelSelector": "x notin (1)"}, items=["b", "c"]),
        get(RUNS, params={"fieldSelector": "metadata.name!=b"}, items=["a", "c"]),
        get(RUNS, params={"labelSelector": "x in ("}, status=400),
    ],
    "a cluster-scoped kind lives outside namespaces": [
        post({"metadata": {"name": "pool-{ns}"}, "spec": {"pricePerHour": "1"}},
             path="/apis/genforge.dev/v1alpha1/acceleratorpools",
             expect={"kind": "AcceleratorPool"}, absent=("metadata.namespace",)),
        Step("DELETE", "/apis/genforge.dev/v1alpha1/acceleratorpools/pool-{ns}"),
    ],
}


def _fill(value: Any, context: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in context.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, dict):
        return {_fill(k, context): _fill(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, context) for v in value]
    return value


def _dig(body: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(body, dict) or part not in body:
            return ABSENT
        body = body[part]
    return body


@pytest.mark.parametrize("steps", list(CASES.values()), ids=list(CASES))
def test_api_semantics(raw_api, namespace, steps):
    context = {"ns": namespace, "rv": ""}
    for number, step in enumerate(steps, 1):
        status, body = raw_api.request(step.method, _fill(step.path, context), _fill(step.body, context),
                                       params=step.params, content_type=step.content_type)
        where = f"step {number}: {step.method} {step.path} answered {status}: {body}"
        assert status == step.status, where
        if step.expect is not None:
            assert kmock.ObjectVersion(body) >= _fill(step.expect, context), where
        for path in step.absent:
            assert _dig(body, path) is ABSENT, f"{path} present; {where}"
        if step.items is not None:
            assert sorted(item["metadata"]["name"] for item in body["items"]) == sorted(step.items), where
        context["rv"] = (body or {}).get("metadata", {}).get("resourceVersion") or context["rv"]


def _create(raw_api: RawApi, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, created = raw_api.request("POST", path, body)
    assert status == 201, created
    return created


def _exists(raw_api: RawApi, path: str) -> bool:
    return raw_api.request("GET", path)[0] == 200


def _events(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"]["name"]) for event in events]


def test_watch_resumes_from_a_resource_version(raw_api, namespace):
    runs = RUNS.format(ns=namespace)
    first = _create(raw_api, runs, run("a"))
    _create(raw_api, runs, run("b"))
    raw_api.request("PATCH", f"{runs}/a", {"spec": {"suspend": True}}, content_type=MERGE)

    since = first["metadata"]["resourceVersion"]
    assert _events(raw_api.watch(runs, {"resourceVersion": since}, count=2)) == [("ADDED", "b"), ("MODIFIED", "a")]
    assert _events(raw_api.watch(runs, count=2)) == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_sends_deleted_when_an_object_leaves_the_selector(raw_api, namespace):
    runs = RUNS.format(ns=namespace)
    created = _create(raw_api, runs, run("a", labels={"x": "1"}))
    raw_api.request("PATCH", f"{runs}/a", {"metadata": {"labels": {"x": "2"}}}, content_type=MERGE)
    raw_api.request("PATCH", f"{runs}/a", {"metadata": {"labels": {"x": "1"}}}, content_type=MERGE)

    events = raw_api.watch(runs, {"resourceVersion": created["metadata"]["resourceVersion"],
                                  "labelSelector": "x=1"}, count=2)
    assert _events(events) == [("DELETED", "a"), ("ADDED", "a")]


def test_watch_ends_after_timeout_seconds(raw_api, namespace):
    started = time.monotonic()
    assert raw_api.watch(RUNS.format(ns=namespace), {"timeoutSeconds": "1"}, count=1, timeout=5) == []
    assert 0.9 <= time.monotonic() - started < 3


def test_watch_from_a_compacted_resource_version_is_gone():
    with EmulatedCluster() as cluster:
        cluster.call(lambda handler: setattr(handler, "event_log_size", 2))
        raw_api = RawApi(cluster.url)
        maps = CONFIGMAPS.format(ns="default")
        first = _create(raw_api, maps, {"metadata": {"name": "c0"}})
        for index in range(1, 4):
            _create(raw_api, maps, {"metadata": {"name": f"c{index}"}})

        [event] = raw_api.watch(maps, {"resourceVersion": first["metadata"]["resourceVersion"]}, count=1)
        assert event["type"] == "ERROR" and event["object"]["code"] == 410


def _owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
             "uid": owner["metadata"]["uid"], "controller": True}]


def test_deleting_an_owner_collects_its_dependents(raw_api, namespace):
    runs, jobs, maps = (path.format(ns=namespace) for path in (RUNS, JOBS, CONFIGMAPS))
    owner = _create(raw_api, runs, run("owner"))
    _create(raw_api, jobs, {"metadata": {"name": "job", "ownerReferences": _owned_by(owner)}, "spec": {}})
    _create(raw_api, maps, {"metadata": {"name": "config", "ownerReferences": _owned_by(owner)}})
    _create(raw_api, maps, {"metadata": {"name": "unrelated"}})

    raw_api.request("DELETE", f"{runs}/owner")

    wait_for(lambda: not _exists(raw_api, f"{jobs}/job") and not _exists(raw_api, f"{maps}/config"),
             timeout=5, message="dependents collected")
    assert _exists(raw_api, f"{maps}/unrelated")


def test_orphan_propagation_keeps_dependents_and_drops_the_reference(raw_api, namespace):
    runs, maps = RUNS.format(ns=namespace), CONFIGMAPS.format(ns=namespace)
    owner = _create(raw_api, runs, run("owner"))
    _create(raw_api, maps, {"metadata": {"name": "config", "ownerReferences": _owned_by(owner)}})

    raw_api.request("DELETE", f"{runs}/owner", {"propagationPolicy": "Orphan"})

    def orphaned():
        status, body = raw_api.request("GET", f"{maps}/config")
        assert status == 200, f"the dependent was deleted instead of orphaned: {body}"
        return "ownerReferences" not in body["metadata"]

    wait_for(orphaned, timeout=5, message="the owner reference dropped")
    assert raw_api.request("GET", f"{runs}/owner")[0] == 404
    assert raw_api.request("GET", f"{maps}/config")[0] == 200


def test_an_object_created_for_a_gone_owner_is_collected(raw_api, namespace):
    maps = CONFIGMAPS.format(ns=namespace)
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost", "uid": "no-such-uid"}}
    _create(raw_api, maps, {"metadata": {"name": "late", "ownerReferences": _owned_by(ghost)}})
    wait_for(lambda: not _exists(raw_api, f"{maps}/late"), timeout=5, message="the orphan collected")


def test_namespaces_exist_terminate_and_take_their_objects_along(raw_api):
    status, listed = raw_api.request("GET", "/api/v1/namespaces")
    assert status == 200 and {"default", "kube-system"} <= {ns["metadata"]["name"] for ns in listed["items"]}

    _create(raw_api, "/api/v1/namespaces", {"metadata": {"name": "doomed"}})
    runs = RUNS.format(ns="doomed")
    _create(raw_api, runs, run("plain"))
    _create(raw_api, runs, run("held", metadata={"name": "held", "finalizers": ["a/b"]}))

    raw_api.request("DELETE", "/api/v1/namespaces/doomed")

    assert not _exists(raw_api, f"{runs}/plain")
    assert raw_api.request("GET", "/api/v1/namespaces/doomed")[1]["status"]["phase"] == "Terminating"
    assert raw_api.request("POST", runs, run("new"))[0] == 403
    raw_api.request("PATCH", f"{runs}/held", {"metadata": {"finalizers": None}}, content_type=MERGE)
    assert not _exists(raw_api, "/api/v1/namespaces/doomed")


def test_a_crd_created_through_the_api_becomes_a_resource(raw_api, namespace):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.test"},
           "spec": {"group": "example.test", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True}]}}
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    widgets = f"/apis/example.test/v1/namespaces/{namespace}/widgets"
    _create(raw_api, crds, crd)
    try:
        assert _create(raw_api, widgets, {"metadata": {"name": "w"}})["kind"] == "Widget"
        status, discovery = raw_api.request("GET", "/apis/example.test/v1")
        assert status == 200 and [r["name"] for r in discovery["resources"]] == ["widgets"]
    finally:
        raw_api.request("DELETE", f"{crds}/widgets.example.test")
    assert raw_api.request("GET", widgets)[0] == 404


def test_a_crd_whose_default_breaks_its_rule_is_refused_like_kube_apiserver(raw_api):
    rule = {"rule": "self.size <= self.limit", "message": "size cannot exceed limit"}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gadgets.example.test"},
           "spec": {"group": "example.test", "scope": "Namespaced",
                    "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {
                            "type": "object", "default": {}, "x-kubernetes-validations": [rule],
                            "properties": {"size": {"type": "integer", "default": 1},
                                           "limit": {"type": "integer", "default": 2}}}}}}}]}}
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, body = raw_api.request("POST", crds, crd)
    assert status == 422, body
    assert "properties[spec].default" in body["message"] and "size" in body["message"]
    assert raw_api.request("GET", f"{crds}/gadgets.example.test")[0] == 404
    rule["rule"] = "!has(self.size) || !has(self.limit) || self.size <= self.limit"
    _create(raw_api, crds, crd)
    raw_api.request("DELETE", f"{crds}/gadgets.example.test")


def test_a_pod_naming_a_missing_service_account_is_refused_like_kube_apiserver(raw_api, namespace):
    pods = f"/api/v1/namespaces/{namespace}/pods"
    pod = {"metadata": {"name": "p"}, "spec": {"serviceAccountName": "trainer",
                                               "containers": [{"name": "c", "image": "i"}]}}
    status, body = raw_api.request("POST", pods, pod)
    assert status == 403 and 'serviceaccount "trainer" not found' in body["message"], body
    _create(raw_api, f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "trainer"}})
    assert _create(raw_api, pods, pod)["spec"]["serviceAccountName"] == "trainer"


def test_integral_floats_come_back_as_integers_like_kube_apiserver(raw_api):
    """kube-apiserver stores custom resources as unstructured JSON: 2.0 is served as 2."""
    pools = "/apis/genforge.dev/v1alpha1/acceleratorpools"
    created = _create(raw_api, pools, {"apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool",
                                       "metadata": {"name": "numbers"},
                                       "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "1",
                                                "relativeThroughput": 2.0}})
    try:
        assert created["spec"]["relativeThroughput"] == 2 and type(created["spec"]["relativeThroughput"]) is int
        status, read = raw_api.request("GET", f"{pools}/numbers")
        assert type(read["spec"]["relativeThroughput"]) is int
        status, patched = raw_api.request("PATCH", f"{pools}/numbers", {"spec": {"relativeThroughput": 2.5}},
                                          content_type="application/merge-patch+json")
        assert status == 200 and patched["spec"]["relativeThroughput"] == 2.5
    finally:
        raw_api.request("DELETE", f"{pools}/numbers")


def test_discovery_serves_the_genforge_kinds_and_their_status(raw_api):
    status, discovery = raw_api.request("GET", "/apis/genforge.dev/v1alpha1")
    assert status == 200
    resources = {r["name"]: r for r in discovery["resources"]}
    assert {"trainingruns", "trainingruns/status", "acceleratorpools"} <= set(resources)
    assert resources["trainingruns"]["namespaced"] and not resources["acceleratorpools"]["namespaced"]
    assert {"list", "watch", "patch"} <= set(resources["trainingruns"]["verbs"])


def test_injected_faults_answer_the_next_matching_requests(cluster, raw_api, namespace):
    runs = RUNS.format(ns=namespace)
    _create(raw_api, runs, run())
    fault = cluster.inject(status=500, times=2, verb="get", resource="trainingruns", name="r")
    try:
        assert [raw_api.request("GET", f"{runs}/r")[0] for _ in range(3)] == [500, 500, 200]
        assert fault.hits == 2
        cluster.inject(status=429, verb="list", namespace=namespace)
        assert raw_api.request("GET", runs)[0] == 429
        cluster.inject(status=None, delay=0.3, verb="get", resource="trainingruns")
        started = time.monotonic()
        assert raw_api.request("GET", f"{runs}/r")[0] == 200
        assert time.monotonic() - started >= 0.3
    finally:
        cluster.clear_faults()


def test_a_stalled_watch_delivers_nothing_until_released(cluster, raw_api, namespace):
    runs = RUNS.format(ns=namespace)
    stall = cluster.stall_watches(resource="trainingruns")
    try:
        _create(raw_api, runs, run())
        assert raw_api.watch(runs, count=1, timeout=0.5) == []
    finally:
        cluster.release_watches(stall)
    assert _events(raw_api.watch(runs, count=1)) == [("ADDED", "r")]


def test_request_logs_stay_bounded(cluster, raw_api):
    for _ in range(300):
        raw_api.request("GET", "/api")  # served by kmock, whose own log slows every request down
        raw_api.request("GET", "/api/v1/namespaces/default")
    kmock_log, our_log, limit = cluster.call(
        lambda handler: (len(handler._requests), len(handler.requests()), handler.request_log_size))
    assert kmock_log <= 10 and our_log <= limit


def test_status_fields_the_crd_lacks_are_pruned_and_named_at_teardown(cluster, raw_api, namespace):
    """The teardown check of every `namespace` test (tests/harness.py) is not blind: a status field
    the CRD lacks is pruned with a warning, as kube-apiserver does, and the check names it."""
    from harness import pruned_status_fields

    since = cluster.mark()
    status, _ = raw_api.request("POST", RUNS.format(ns=namespace), run("checked"))
    assert status == 201
    path = RUNS.format(ns=namespace) + "/checked/status"
    good = {"status": {"phase": "Running", "observedGeneration": 1}}
    assert raw_api.request("PATCH", path, good, content_type=MERGE)[0] == 200
    assert pruned_status_fields(cluster, namespace, since) == []
    status, stored = raw_api.request("PATCH", path, {"status": {"notInTheCrd": 1}}, content_type=MERGE)
    assert status == 200 and stored["status"] == good["status"], stored
    assert raw_api.warnings == ['299 - "unknown field \\"status.notInTheCrd\\""']
    [problem] = pruned_status_fields(cluster, namespace, since)
    assert problem.endswith('unknown field "status.notInTheCrd"'), problem


def test_the_finalizer_before_a_job_gets_the_answers_kube_apiserver_gives(api_client, namespace):
    """The same sequence in tests/real/test_api_server.py, against kube-apiserver."""
    from harness import FINALIZER_BEFORE_JOB_ANSWERS, finalizer_before_job_sequence

    assert finalizer_before_job_sequence(api_client, namespace, SPEC) == FINALIZER_BEFORE_JOB_ANSWERS
