"""Which weights a FineTune starts from, when the version it resolves to is a LoRA adapter.

A `lora` FineTune without `lora.merge` leaves an adapter folder, not a model, as its
GenModel version (`format: lora-adapter`). Such a version may be promoted, be the latest,
or be pinned in `baseModel.version`; a FineTune from it must still start: the operator
follows the adapter's `baseVersion` (through further adapters) to the complete model it
was trained on, and the run spec carries that model as `model.baseUri` and the adapters
as `model.baseAdapters`, which the trainer merges in, oldest first, before it fine-tunes.
"""

from __future__ import annotations

import pytest

from genforge_operator.api import ModelVersion, SourceRef
from genforge_operator.builders import run_document
from genforge_operator.plan import Blocked, is_adapter, resolve_base_version
from genforge_operator.reconcile import reconcile_run
from genforge_trainer.config import parse_run_spec

from .factories import make_finetune, make_model, make_run
from .test_reconcile_run import CONFIG, RUNNING, catalog, condition, job, observe, pod

V1 = "file:///data/runs/team-a/trainingrun/base/model"
V2 = "file:///data/runs/team-a/finetune/style/adapter"
V3 = "file:///data/runs/team-a/finetune/style2/adapter"


def version(name, uri, kind="FineTune", source=None, **extra):
    return {"name": name, "source": {"kind": kind, "name": source or name}, "uri": uri,
            "createdAt": "2026-01-01T00:00:00Z", **extra}


BASE = version("v1", V1, kind="TrainingRun", source="base", format="model", metrics={"fid": 90.0})
ADAPTER = version("v2", V2, method="lora", baseVersion="v1", format="lora-adapter", metrics={"fid": 40.0})
ADAPTER_ON_ADAPTER = version("v3", V3, method="lora", baseVersion="v2", format="lora-adapter")


def model_with(*versions, promoted=None):
    return make_model(status={"versions": list(versions), "latest": versions[-1]["name"],
                              **({"promoted": promoted} if promoted else {})})


def document(out) -> dict:
    return run_document(out.create)


def test_a_complete_version_is_its_own_base():
    base = resolve_base_version(make_finetune(), model_with(BASE))
    assert (base.version, base.uri, base.root, base.adapters) == ("v1", V1, "v1", ())


def test_a_promoted_adapter_resolves_to_its_base_model_plus_the_adapter():
    base = resolve_base_version(make_finetune(), model_with(BASE, ADAPTER, promoted="v2"))
    assert base.version == "v2" and base.uri == V1 and base.root == "v1"
    assert base.adapters == (V2,) and base.through == ("v2",)


def test_a_pinned_adapter_on_an_adapter_merges_both_oldest_first():
    ft = make_finetune(baseModel={"name": "shapes", "version": "v3"})
    base = resolve_base_version(ft, model_with(BASE, ADAPTER, ADAPTER_ON_ADAPTER, promoted="v1"))
    assert base.version == "v3" and base.uri == V1 and base.root == "v1"
    assert base.adapters == (V2, V3) and base.through == ("v2", "v3")


def test_versions_recorded_before_format_are_told_apart_by_method_and_artifact():
    def legacy(uri, method):
        return ModelVersion(name="v9", source=SourceRef("FineTune", "x"), uri=uri, created_at="", method=method)

    assert is_adapter(legacy("file:///data/runs/ns/finetune/x/adapter", "lora"))
    assert not is_adapter(legacy("file:///data/runs/ns/finetune/x/model", "lora"))  # lora.merge: true
    assert not is_adapter(legacy("file:///data/runs/ns/finetune/x/adapter", "full"))
    legacy_adapter = version("v2", V2, method="lora", baseVersion="v1")  # no format
    base = resolve_base_version(make_finetune(), model_with(BASE, legacy_adapter, promoted="v2"))
    assert base.uri == V1 and base.adapters == (V2,)


@pytest.mark.parametrize("adapter,words", [
    ({k: v for k, v in ADAPTER.items() if k != "baseVersion"}, "v2 records no baseVersion"),
    ({**ADAPTER, "baseVersion": "v0"}, "v2's base v0 is no longer a version of GenModel shapes"),
    ({**ADAPTER, "baseVersion": "v2"}, "loops back to v2"),
], ids=["no-base-recorded", "base-gone", "loop"])
def test_an_adapter_whose_base_is_unknown_blocks_the_finetune_with_a_reason(adapter, words):
    ft = make_finetune(budget={"maxCost": "1000"}, baseModel={"name": "shapes", "version": "v2"})
    model = model_with(BASE, adapter)
    blocked = resolve_base_version(ft, model)
    assert isinstance(blocked, Blocked) and blocked.reason == "AdapterBaseNotFound"
    assert words in blocked.message and "baseModel.version is v2, a LoRA adapter" in blocked.message
    assert "lora.merge: true" in blocked.message
    out = reconcile_run(observe(ft, cat=catalog(model=model)), CONFIG)
    assert not out.create and out.status["phase"] == "Waiting"
    ready = condition(out, "Ready")
    assert ready["reason"] == "AdapterBaseNotFound" and words in ready["message"]


def test_finetune_from_an_adapter_version_sends_the_base_model_and_the_adapter_to_the_trainer():
    cat = catalog(model=model_with(BASE, ADAPTER, promoted="v2"))
    out = reconcile_run(observe(make_finetune(budget={"maxCost": "1000"}, method="full"), cat=cat), CONFIG)
    assert out.status["phase"] == "Running"
    doc = document(out)
    assert doc["model"]["baseUri"] == V1 and doc["model"]["baseAdapters"] == [V2]
    assert doc["finetune"]["baseVersion"] == "v2"
    created = next(o for o in out.create if o["kind"] == "Job")
    assert created["metadata"]["annotations"]["genforge.dev/base-version"] == "v2"
    assert any(e.reason == "BaseIsAdapter" and "merges v2 into v1's weights" in e.message for e in out.events)
    spec = parse_run_spec(doc)  # the trainer accepts it
    assert spec.model.base_uri == V1 and spec.model.base_adapters == (V2,)


def test_a_training_run_and_a_complete_base_send_no_adapters():
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"})), CONFIG)
    assert document(out)["model"]["baseAdapters"] == []
    out = reconcile_run(observe(make_finetune(budget={"maxCost": "1000"}), cat=catalog(model=model_with(BASE))),
                        CONFIG)
    assert document(out)["model"]["baseAdapters"] == [] and document(out)["model"]["baseUri"] == V1
    assert not [e for e in out.events if e.reason == "BaseIsAdapter"]


@pytest.mark.parametrize("method,blocks,artifact,fmt", [
    ("lora", {}, "file:///data/runs/ft/adapter", "lora-adapter"),
    ("lora", {"lora": {"merge": False}}, "file:///data/runs/ft/adapter", "lora-adapter"),
    ("lora", {"lora": {"merge": True}}, "file:///data/runs/ft/model", "model"),
    ("full", {}, "file:///data/runs/ft/model", "model"),
], ids=["lora", "lora-unmerged", "lora-merged", "full"])
def test_a_finetune_version_records_the_format_of_its_artifact(method, blocks, artifact, fmt):
    ft = make_finetune(budget={"maxCost": "1000"}, method=method, **blocks)
    cat = catalog(model=model_with(BASE))
    done = job(conditions=[("Complete", "")])
    words = {"outcome": "Succeeded", "step": 50, "artifact": artifact}
    out = reconcile_run(observe(ft, RUNNING, done, [pod(0, 8, exit_code=0, message=words)], at=10, cat=cat),
                        CONFIG)
    assert out.status["phase"] == "Succeeded"
    assert out.new_version["format"] == fmt and out.new_version["uri"] == artifact


def test_a_training_run_version_is_a_model():
    done = job(conditions=[("Complete", "")])
    words = {"outcome": "Succeeded", "step": 100, "artifact": "file:///data/runs/x/model"}
    out = reconcile_run(observe(make_run(budget={"maxCost": "1000"}), RUNNING, done,
                                [pod(0, 8, exit_code=0, message=words)], at=10), CONFIG)
    assert out.new_version["format"] == "model" and "method" not in out.new_version
