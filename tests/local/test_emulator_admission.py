"""The emulated API server admits custom resources as kube-apiserver does: prune, default, validate.

The verdicts are those of `genforge_operator.schema` (the same code runs in the emulator),
and tests/real/test_api_server.py replays the same tables against a real kube-apiserver:
what is accepted here is accepted there, what is refused is refused at the same field.
"""

from __future__ import annotations

import pytest
from api.builders import example_documents, make, resource_path, with_unique_name
from api.test_cel_rules import _OLD, ALLOWED, REJECTED, _updates
from api.test_invalid_resources import INVALID

from genforge_operator import schema
from genforge_operator.api import KINDS

#: These tests write status themselves (invalid on purpose).
pytestmark = pytest.mark.writes_status

MERGE = "application/merge-patch+json"
STRICT = {"fieldValidation": "Strict"}  # what kubectl sends


def _words(body) -> str:
    """The answer as one string: message plus every cause's field and message."""
    if not isinstance(body, dict):
        return str(body)
    causes = (body.get("details") or {}).get("causes") or []
    return "\n".join([body.get("message", "")] + [f"{c.get('field', '')}: {c.get('message', '')}" for c in causes])


@pytest.fixture
def created(raw_api, namespace):
    """Create objects (cluster-scoped ones are deleted afterwards); returns (status, body)."""
    cluster_scoped = []

    def create(obj: dict, params: dict | None = None) -> tuple[int, dict]:
        status, body = raw_api.request("POST", resource_path(obj["kind"], namespace), obj, params=params)
        if status == 201 and not KINDS[obj["kind"]].namespaced:
            cluster_scoped.append(resource_path(obj["kind"], None, body["metadata"]["name"]))
        return status, body

    yield create
    for path in cluster_scoped:
        raw_api.request("DELETE", path)


def _verdict(raw_api, namespace, create, obj: dict) -> tuple[bool, int, str]:
    """(accepted, HTTP status, the server's words), as tests/real asks the real server.
    Status is written through the status subresource."""
    if "status" in obj and isinstance(obj.get("metadata"), dict) and obj.get("spec") is not None:
        status, stored = create({k: v for k, v in obj.items() if k != "status"}, STRICT)
        assert status == 201, _words(stored)
        code, body = raw_api.request("PATCH", resource_path(obj["kind"], namespace, stored["metadata"]["name"], "status"),
                                     {"status": obj["status"]}, params=STRICT, content_type=MERGE)
        return code == 200, code, _words(body)
    code, body = create(obj, STRICT)
    return code == 201, code, _words(body)


def _replay_cases():
    for case_id, kind, changes, path, _message in INVALID:
        yield pytest.param(kind, changes, path, id=f"invalid-{case_id}")
    for case_id, kind, changes, path, _message in REJECTED:
        yield pytest.param(kind, changes, path, id=f"cel-{case_id}")
    for case_id, kind, changes in ALLOWED:
        yield pytest.param(kind, changes, None, id=f"allowed-{case_id}")


@pytest.mark.parametrize(("kind", "changes", "path"), list(_replay_cases()))
def test_the_emulator_agrees_with_the_offline_verdict(raw_api, namespace, created, kind, changes, path):
    obj = make(kind, changes)
    if not any(key.startswith("metadata") for key in changes):
        obj = with_unique_name(obj)
    accepted, code, words = _verdict(raw_api, namespace, created, obj)
    if path is None:
        assert accepted, f"the emulator refused a case the project accepts:\n{words}"
        return
    assert not accepted, f"the emulator accepted a case the project refuses ({path})"
    # An unknown field (Strict) or a body of another version cannot be decoded: 400; else 422 Invalid.
    assert code in (400, 422), words
    named = 'in version "' if path == "apiVersion" else path
    assert named in words, f"the emulator reported another field than {path}:\n{words}"


@pytest.mark.parametrize(("old_kind", "changes", "path"), [c[1:] for c in _updates()], ids=[c[0] for c in _updates()])
def test_the_emulator_agrees_on_updates(raw_api, namespace, created, old_kind, changes, path):
    kind, old_changes = _OLD[old_kind]
    status, stored = created(with_unique_name(make(kind, old_changes)), STRICT)
    assert status == 201, _words(stored)
    new = make(kind, {**old_changes, **changes})
    new["metadata"] = {**new.get("metadata", {}), "name": stored["metadata"]["name"],
                       "resourceVersion": stored["metadata"]["resourceVersion"]}
    code, body = raw_api.request("PUT", resource_path(kind, namespace, stored["metadata"]["name"]), new, params=STRICT)
    if path is None:
        assert code == 200, f"the emulator refused an update the project allows:\n{_words(body)}"
    else:
        assert code == 422, f"the emulator allowed an update the project refuses ({path})"
        assert path in _words(body) and "after creation" in _words(body), _words(body)


EXAMPLES = example_documents()


@pytest.mark.parametrize(("file_name", "doc"), EXAMPLES, ids=[f"{f}:{d['metadata']['name']}" for f, d in EXAMPLES])
def test_create_stores_the_schema_defaults(namespace, created, file_name, doc):
    """What the emulator stores is what kube-apiserver stores: `schema.apply_defaults` of the object."""
    obj = with_unique_name(doc)
    status, stored = created(obj)
    assert status == 201, _words(stored)
    assert stored["spec"] == schema.apply_defaults(obj)["spec"]


def test_unknown_fields_are_pruned_with_a_warning_refused_if_strict_and_dropped_silently_if_ignored(
        raw_api, namespace, created):
    run = make("TrainingRun", {"spec.gpus": 8, "spec.training.epochs": 3})
    status, stored = created(with_unique_name(run))
    assert status == 201 and "gpus" not in stored["spec"] and "epochs" not in stored["spec"]["training"]
    assert raw_api.warnings == ['299 - "unknown field \\"spec.gpus\\""',
                                '299 - "unknown field \\"spec.training.epochs\\""']
    status, body = created(with_unique_name(run), STRICT)
    assert status == 400 and body["reason"] == "BadRequest", body
    assert body["message"] == ('TrainingRun in version "v1alpha1" cannot be handled as a TrainingRun: strict decoding '
                               'error: unknown field "spec.gpus", unknown field "spec.training.epochs"')
    status, stored = created(with_unique_name(run), {"fieldValidation": "Ignore"})
    assert status == 201 and "gpus" not in stored["spec"] and raw_api.warnings == []
    # A patch: its result does not decode; kube-apiserver calls that an invalid `patch` (422)
    path = resource_path("TrainingRun", namespace, stored["metadata"]["name"])
    status, body = raw_api.request("PATCH", path, {"spec": {"gpus": 8}}, params=STRICT, content_type=MERGE)
    assert status == 422 and body["message"].startswith(' "" is invalid: patch: Invalid value: "{'), body
    assert body["message"].endswith(': strict decoding error: unknown field "spec.gpus"'), body
    assert [(c["reason"], c["field"]) for c in body["details"]["causes"]] == [("FieldValueInvalid", "patch")]


def test_an_invalid_status_write_is_refused_at_its_field_and_changes_nothing(raw_api, namespace, created):
    status, stored = created(with_unique_name(make("TrainingRun")))
    assert status == 201
    name = stored["metadata"]["name"]
    path = resource_path("TrainingRun", namespace, name, "status")
    assert raw_api.request("PATCH", path, {"status": {"phase": "Running"}}, content_type=MERGE)[0] == 200
    status, body = raw_api.request("PATCH", path, {"status": {"phase": "Exploded"}}, content_type=MERGE)
    assert status == 422 and body["reason"] == "Invalid", body
    assert body["message"].startswith(f'TrainingRun.genforge.dev "{name}" is invalid: [status.phase: Unsupported '
                                      "value: 'Exploded': supported values: "), body["message"]
    # As kube-apiserver says, the CEL rules were not run on an object the schema refused.
    assert body["message"].endswith(", <nil>: Invalid value: null: some validation rules were not checked because "
                                    "the object was invalid; correct the existing errors to complete validation]")
    assert [(c["reason"], c["field"]) for c in body["details"]["causes"]] == [
        ("FieldValueNotSupported", "status.phase"), ("FieldValueInvalid", "<nil>")]
    assert raw_api.request("GET", resource_path("TrainingRun", namespace, name))[1]["status"] == {"phase": "Running"}


def test_every_error_is_reported_at_once(namespace, created):
    obj = with_unique_name(make("TrainingRun", {"spec.training.steps": 0, "spec.budget.maxCost": "12,50"}))
    status, body = created(obj)
    assert status == 422, body
    assert body["message"].startswith(f'TrainingRun.genforge.dev "{obj["metadata"]["name"]}" is invalid: '
                                      "[spec.budget.maxCost: Invalid value: "), body["message"]
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.budget.maxCost", "spec.training.steps", "<nil>"]


def test_a_body_of_another_version_or_kind_is_refused(raw_api, namespace, created):
    """As kube-apiserver answers: a version it does not serve decodes without a schema, so under
    Strict its fields are unknown; else the versions are named."""
    other = with_unique_name(make("TrainingRun", {"apiVersion": "genforge.dev/v1"}))
    status, body = created(other, STRICT)
    assert status == 400 and body["message"] == ('TrainingRun in version "v1" cannot be handled as a TrainingRun: '
                                                 'strict decoding error: unknown field "spec"'), body
    status, body = created(other)
    assert status == 400 and body["message"] == ("the API version in the data (genforge.dev/v1) does not match the "
                                                 "expected API version (genforge.dev/v1alpha1)"), body
    assert raw_api.warnings == ['299 - "unknown field \\"spec\\""']
    run = with_unique_name(make("TrainingRun"))
    status, body = raw_api.request("POST", resource_path("TrainingRun", namespace), {**run, "kind": "Dataset"})
    assert status == 422 and body["message"] == (f'Dataset.genforge.dev "{run["metadata"]["name"]}" is invalid: '
                                                 'kind: Invalid value: "Dataset": must be TrainingRun'), body
