"""The CRDs, the examples and the project's tables of valid and invalid resources, judged by a
real kube-apiserver: installation, defaulting, pruning, schema and CEL validation.

Every verdict of the offline checks (`genforge_operator.schema`: the JSON-schema conversion
and the CEL evaluator that `tests/api` runs) is replayed here: a case the project says is
rejected must be rejected by the API server at the same field, and a case it accepts must be
accepted. A disagreement is a bug in one of them.
"""

from __future__ import annotations

import copy
import json

import pytest
from api.builders import example_documents, make, resource_path, with_unique_name
from api.test_cel_rules import _OLD, ALLOWED, REJECTED, _updates
from api.test_invalid_resources import INVALID

from genforge_local.real_cluster import RealCluster
from genforge_operator import bundled, schema
from genforge_operator.api import KINDS, parse_resource

pytestmark = pytest.mark.kube


def _server_errors(body) -> str:
    """The API server's answer as one string: message plus every cause's field and message."""
    if not isinstance(body, dict):
        return str(body)
    parts = [body.get("message", "")]
    for cause in (body.get("details") or {}).get("causes") or []:
        parts.append(f"{cause.get('field', '')}: {cause.get('message', '')}")
    return "\n".join(parts)


def create(real: RealCluster, obj: dict, namespace: str, *, dry_run: bool = True) -> tuple[int, object]:
    query = "?fieldValidation=Strict" + ("&dryRun=All" if dry_run else "")
    return real.request("POST", resource_path(obj["kind"], namespace) + query, obj)


def _without_status(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "status"}


# ----------------------------------------------------------------------------- installation


def test_every_crd_is_established_with_its_names_accepted(kube):
    status, body = kube.real.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert status == 200
    installed = {crd["metadata"]["name"]: crd for crd in body["items"]}
    shipped = schema.load_crds()
    for kind, crd in shipped.items():
        name = crd["metadata"]["name"]
        assert name in installed, f"{kind}: CRD {name} is not installed"
        conditions = {c["type"]: c["status"] for c in installed[name]["status"]["conditions"]}
        assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True", conditions


@pytest.mark.parametrize("folder", ["crds", "charts/genforge/crds"])
def test_crds_apply_server_side_again_without_conflict(kube, folder):
    root = bundled.crd_dir().parent
    out = kube.real.kubectl("apply", "--server-side", "--force-conflicts=false", "-f", str(root / folder))
    assert "serverside-applied" in out.stdout, out.stdout


def test_the_crds_chart_renders_crds_the_server_accepts(kube):
    """charts/genforge-crds renders the same CRDs as templates (for GitOps that upgrade CRDs)."""
    root = bundled.charts_dir() / "genforge-crds"
    import helm_python

    with helm_python.Chart.load(str(root)) as loaded:
        files = loaded.render({}, name="genforge-crds", namespace="default")
    text = "".join(f"---\n{t}\n" for p, t in sorted(files.items()) if not p.endswith(".txt"))
    out = kube.real.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=text)
    assert out.stdout.count(".genforge.dev serverside-applied") == len(schema.load_crds()), out.stdout
    assert out.stdout.count(".kopf.dev serverside-applied") == 2, out.stdout  # kopf's peering CRDs


# ----------------------------------------------------------------------------- defaulting


EXAMPLES = example_documents()


@pytest.mark.parametrize(("file_name", "doc"), EXAMPLES,
                         ids=[f"{f}:{d['metadata']['name']}" for f, d in EXAMPLES])
def test_the_server_defaults_each_example_as_the_project_assumes(kube, module_namespace, file_name, doc):
    """What the API server stores equals `schema.apply_defaults` (what render, estimate, the
    emulator and the contract test assume), and parses to the same typed model."""
    obj = with_unique_name(doc)
    status, stored = create(kube.real, obj, module_namespace, dry_run=False)
    assert status == 201, _server_errors(stored)
    try:
        expected = schema.apply_defaults(obj)
        assert stored["spec"] == expected["spec"]
        assert parse_resource(stored).spec == parse_resource(expected).spec
    finally:
        if not KINDS[obj["kind"]].namespaced:
            kube.real.request("DELETE", resource_path(obj["kind"], None, obj["metadata"]["name"]))


def test_a_run_spec_rendered_from_the_server_object_is_the_offline_one(kube, kube_namespace):
    """The trainer contract: the run spec built from the API server's defaulted TrainingRun equals
    the one `genforge render` builds offline from the same YAML."""
    docs = [d for _, d in EXAMPLES]
    stored_docs = []
    for doc in docs:
        obj = copy.deepcopy(doc)
        if not KINDS[obj["kind"]].namespaced:
            stored_docs.append(schema.apply_defaults(obj))
            continue
        status, stored = create(kube.real, obj, kube_namespace)
        assert status == 201, _server_errors(stored)
        stored = {k: v for k, v in stored.items() if k in ("apiVersion", "kind", "spec")}
        stored["metadata"] = {"name": obj["metadata"]["name"]}
        stored_docs.append(stored)
    offline, offline_problems = _render(docs, kube_namespace)
    served, served_problems = _render(stored_docs, kube_namespace)
    assert offline and not offline_problems and not served_problems
    assert json.dumps(served, sort_keys=True) == json.dumps(offline, sort_keys=True)


def _render(docs: list[dict], namespace: str):
    """What `genforge render` prints for these documents (objects, problems)."""
    from genforge_operator.config import OperatorConfig
    from genforge_operator.render import render

    parsed = []
    for doc in copy.deepcopy(docs):
        meta = doc.setdefault("metadata", {})
        if KINDS[doc["kind"]].namespaced:
            meta["namespace"] = namespace
        meta["uid"] = f"render-{doc['kind'].lower()}-{meta['name']}"
        parsed.append(parse_resource(doc))
    objects, problems = render(parsed, OperatorConfig.from_env())
    return [o for _, o in objects], problems


# ----------------------------------------------------------------------------- validation


def _case_object(kind: str, changes: dict) -> dict:
    obj = make(kind, changes)
    if not any(key.startswith("metadata") for key in changes):
        obj = with_unique_name(obj)
    return obj


def _server_verdict(real: RealCluster, namespace: str, obj: dict) -> tuple[bool, str]:
    """(accepted, the server's words). Status is validated through the status subresource."""
    if "status" in obj and isinstance(obj.get("metadata"), dict) and obj.get("spec") is not None:
        status, created = create(real, _without_status(obj), namespace, dry_run=False)
        assert status == 201, _server_errors(created)
        name = created["metadata"]["name"]
        code, body = real.request("PATCH", resource_path(obj["kind"], namespace, name, "status")
                                  + "?dryRun=All&fieldValidation=Strict",
                                  {"status": obj["status"]}, content_type="application/merge-patch+json")
        return code == 200, _server_errors(body)
    code, body = create(real, obj, namespace)
    return code == 201, _server_errors(body)


def _replay_cases():
    for case_id, kind, changes, path, message in INVALID:
        yield pytest.param(kind, changes, path, message, id=f"invalid-{case_id}")
    for case_id, kind, changes, path, message in REJECTED:
        yield pytest.param(kind, changes, path, message, id=f"cel-{case_id}")
    for case_id, kind, changes in ALLOWED:
        yield pytest.param(kind, changes, None, None, id=f"allowed-{case_id}")


@pytest.mark.parametrize(("kind", "changes", "path", "message"), list(_replay_cases()))
def test_the_server_agrees_with_the_offline_verdict(kube, module_namespace, kind, changes, path, message):
    kube_namespace = module_namespace
    obj = _case_object(kind, changes)
    offline = schema.validate(obj)
    assert bool(offline) == (path is not None), offline  # the table itself is what tests/api checks
    accepted, words = _server_verdict(kube.real, kube_namespace, obj)
    if path is None:
        assert accepted, f"the API server rejected a case the project accepts:\n{words}"
        return
    assert not accepted, f"the API server accepted a case the project rejects ({path}: {message})"
    # A body whose apiVersion differs from the URL's cannot be decoded: the server names the version.
    named = 'in version "' if path == "apiVersion" else path
    assert named in words, f"the API server reported another field than {path}:\n{words}"


@pytest.mark.parametrize(("old_kind", "changes", "path"), [c[1:] for c in _updates()], ids=[c[0] for c in _updates()])
def test_the_server_agrees_on_updates(kube, module_namespace, old_kind, changes, path):
    kube_namespace = module_namespace
    kind, old_changes = _OLD[old_kind]
    old = with_unique_name(make(kind, old_changes))
    status, created = create(kube.real, old, kube_namespace, dry_run=False)
    assert status == 201, _server_errors(created)
    new = make(kind, {**old_changes, **changes})
    new["metadata"] = {**new.get("metadata", {}), "name": created["metadata"]["name"],
                       "resourceVersion": created["metadata"]["resourceVersion"]}
    code, body = kube.real.request(
        "PUT", resource_path(kind, kube_namespace, created["metadata"]["name"]) + "?dryRun=All&fieldValidation=Strict", new)
    words = _server_errors(body)
    if path is None:
        assert code == 200, f"the API server refused an update the project allows:\n{words}"
    else:
        assert code == 422, f"the API server allowed an update the project refuses ({path})"
        assert path in words and "after creation" in words, words


def test_every_error_is_reported_at_once(kube, kube_namespace):
    obj = with_unique_name(make("TrainingRun", {"spec.training.steps": 0, "spec.budget.maxCost": "12,50"}))
    accepted, words = _server_verdict(kube.real, kube_namespace, obj)
    assert not accepted
    assert "spec.budget.maxCost" in words and "spec.training.steps" in words, words


# ----------------------------------------------------------------------------- pruning


def test_status_round_trip_prunes_only_undeclared_fields(kube, kube_namespace):
    """A status like the operator writes survives a round trip; a field the CRD lacks is pruned."""
    run = with_unique_name(make("TrainingRun", {}))
    status, created = create(kube.real, run, kube_namespace, dry_run=False)
    assert status == 201, _server_errors(created)
    name = created["metadata"]["name"]
    written = {
        "phase": "Running", "pool": "cpu", "observedGeneration": 1,
        "progress": {"step": 10, "totalSteps": 100, "percent": 10, "loss": 0.25},
        "cost": {"accrued": "0.0010", "estimated": "0.0100", "limit": "1"},
        "conditions": [{"type": "Admitted", "status": "True", "reason": "WithinBudget", "message": "fits",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    }
    code, body = kube.real.request("PATCH", resource_path("TrainingRun", kube_namespace, name, "status"),
                                   {"status": {**written, "notInTheSchema": {"x": 1}}},
                                   content_type="application/merge-patch+json")
    assert code == 200, _server_errors(body)
    stored = body["status"]
    assert "notInTheSchema" not in stored
    for key, _value in written.items():
        assert key in stored, f"status.{key} was pruned"
    assert stored["progress"] == written["progress"] and stored["conditions"] == written["conditions"]
    # The offline schema check agrees: the written status is valid, the extra field is not.
    assert [e for e in schema.validate_schema({**created, "status": written}) if e.path.startswith("status")] == []
    assert [e.path for e in schema.validate_schema({**created, "status": {"notInTheSchema": 1}})] == [
        "status.notInTheSchema"]


def test_unknown_spec_fields_are_refused_strictly_and_pruned_otherwise(kube, kube_namespace):
    run = with_unique_name(make("TrainingRun", {"spec.gpus": 8}))
    code, body = create(kube.real, run, kube_namespace)
    assert code in (400, 422) and "gpus" in _server_errors(body)
    code, body = kube.real.request("POST", resource_path("TrainingRun", kube_namespace) + "?fieldValidation=Ignore", run)
    assert code == 201 and "gpus" not in body["spec"]


def test_integral_floats_come_back_as_integers(kube):
    """What the emulator copies (tests/local/test_emulator.py): 2.0 is served as 2, 2.5 as 2.5."""
    pool = with_unique_name(make("AcceleratorPool", {"spec.relativeThroughput": 2.0}))
    status, created = create(kube.real, pool, None, dry_run=False)
    try:
        assert status == 201, _server_errors(created)
        assert type(created["spec"]["relativeThroughput"]) is int and created["spec"]["relativeThroughput"] == 2
        pool["spec"]["relativeThroughput"] = 2.5
        status, again = create(kube.real, with_unique_name(pool), None)
        assert status == 201 and again["spec"]["relativeThroughput"] == 2.5
    finally:
        kube.real.request("DELETE", resource_path("AcceleratorPool", None, pool["metadata"]["name"]))


def test_the_finalizer_before_a_job_gets_the_answers_the_emulator_gives(kube, kube_namespace):
    """`Kube.ensure_finalizer` (a run's finalizer before its first Job) against kube-apiserver:
    the guarded merge patch's 409, the re-read, no new finalizer on a run being deleted. The
    emulator's test (tests/local/test_emulator.py) asserts the same answers."""
    from harness import FINALIZER_BEFORE_JOB_ANSWERS, finalizer_before_job_sequence

    spec = make("TrainingRun", {})["spec"]
    with kube.real.api_client() as api_client:
        assert finalizer_before_job_sequence(api_client, kube_namespace, spec) == FINALIZER_BEFORE_JOB_ANSWERS
