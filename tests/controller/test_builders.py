"""The pure builders: a resource + what it refers to → the Jobs, ConfigMaps and Services."""

from __future__ import annotations

import json

import pytest

from genforge_operator import builders
from genforge_operator.builders import CONTAINER, PERMANENT_EXIT_CODES, run_document
from genforge_operator.config import OperatorConfig, Storage
from genforge_operator.naming import LABEL_KUEUE_QUEUE, child_name
from genforge_operator.plan import (
    Blocked,
    Catalog,
    plan_dataset,
    plan_run,
)
from genforge_operator.vocabulary import Reason

from .factories import make_dataset, make_finetune, make_model, make_pool, make_run, uid_of

CONFIG = OperatorConfig(trainer_image="trainer:test")
VERSIONED = {"versions": [{"name": "v1", "source": {"kind": "TrainingRun", "name": "r"},
                           "uri": "file:///data/runs/team-a/trainingrun/r/model", "createdAt": "2026-01-01T00:00:00Z"}],
             "latest": "v1"}


def catalog(**kw) -> Catalog:
    pools = kw.pop("pools", ["cpu", "gpu-l4", "tpu-v5e"])
    return Catalog(pools={p: make_pool(p) for p in pools},
                   models={"shapes": kw.pop("model", make_model(status=VERSIONED))},
                   datasets={"shapes": kw.pop("dataset", make_dataset())})


def planned(run, pool="cpu", cat=None, config=CONFIG, **kw):
    cat = cat or catalog()
    result = plan_run(run, cat.pools[pool], cat, config, **kw)
    assert not isinstance(result, Blocked), result
    return result


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


CASES = {
    "cpu": dict(run=make_run(), pool="cpu",
                expect=dict(resources={"requests": {"cpu": "1", "memory": "2Gi"}}, node_selector=None,
                            completions=1, indexed=False, command0="genforge-trainer", service=False)),
    "gpu-single-node-2-gpus": dict(
        run=make_run(hardware={"pool": "gpu-l4", "acceleratorsPerNode": 2}), pool="gpu-l4",
        expect=dict(resources={"requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "2"},
                               "limits": {"nvidia.com/gpu": "2"}},
                    node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
                    completions=1, indexed=False, command0="torchrun", service=False)),
    "gpu-multi-node": dict(
        run=make_run(hardware={"pool": "gpu-l4", "nodes": 3, "acceleratorsPerNode": 4}), pool="gpu-l4",
        expect=dict(resources={"requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "4"},
                               "limits": {"nvidia.com/gpu": "4"}},
                    node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
                    completions=3, indexed=True, command0="torchrun", service=True)),
    "tpu": dict(
        run=make_run(hardware={"pool": "tpu-v5e", "acceleratorsPerNode": 4}), pool="tpu-v5e",
        expect=dict(resources={"requests": {"cpu": "1", "memory": "2Gi", "google.com/tpu": "4"},
                               "limits": {"google.com/tpu": "4"}},
                    node_selector={"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "2x2"},
                    completions=1, indexed=False, command0="torchrun", service=False)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_job_shape_per_pool(case):
    result = planned(case["run"], case["pool"])
    job = result.children.job
    expect = case["expect"]
    assert container(job)["resources"] == expect["resources"]
    assert job["spec"]["template"]["spec"].get("nodeSelector") == expect["node_selector"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == expect["completions"]
    assert (job["spec"].get("completionMode") == "Indexed") == expect["indexed"]
    assert container(job)["command"][0] == expect["command0"]
    assert (result.children.service is not None) == expect["service"]


def test_multi_node_rendezvous_env_and_headless_service():
    run = make_run(hardware={"pool": "gpu-l4", "nodes": 2, "acceleratorsPerNode": 4})
    result = planned(run, "gpu-l4")
    job, service = result.children.job, result.children.service
    name = child_name("TrainingRun", "run-1")
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{name}.team-a.svc"
    assert env["NNODES"]["value"] == "2" and env["NPROC_PER_NODE"]["value"] == "4"
    assert env["WORLD_SIZE"]["value"] == "8"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert job["spec"]["template"]["spec"]["subdomain"] == name == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    cmd = container(job)["command"]
    assert "--node_rank=$(NODE_RANK)" in cmd and "--no-python" in cmd and "genforge-trainer" in cmd


def test_tpu_gets_toleration_and_pjrt():
    result = planned(make_run(hardware={"pool": "tpu-v5e", "acceleratorsPerNode": 4}), "tpu-v5e")
    pod = result.children.job["spec"]["template"]["spec"]
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container(result.children.job)["env"]}
    assert env["PJRT_DEVICE"] == "TPU"


def test_gpu_pool_tolerations_copied():
    pod = planned(make_run(hardware={"pool": "gpu-l4"}), "gpu-l4").children.job["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_kueue_queue_label_and_created_suspended():
    job = planned(make_run(queueName="team-a-queue")).children.job
    assert job["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a-queue"
    assert job["spec"]["suspend"] is True


def test_without_queue_job_is_not_suspended():
    job = planned(make_run()).children.job
    assert "suspend" not in job["spec"]
    assert LABEL_KUEUE_QUEUE not in job["metadata"]["labels"]


def test_restricted_pod_security_everywhere():
    job = planned(make_run()).children.job
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(job)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container(job)["volumeMounts"]}
    assert {"/tmp", "/etc/genforge", "/data"} <= mounts


def test_failure_policy_fails_fast_on_config_errors_and_ignores_disruptions():
    job = planned(make_run()).children.job
    rules = job["spec"]["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": CONTAINER, "operator": "In",
                                   "values": list(PERMANENT_EXIT_CODES)}
    ignore = next(r for r in rules if r["action"] == "Ignore")
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("max_duration,expected", [("1h", 3600), ("90m", 5400), (None, None)],
                         ids=["1h", "90m", "none"])
def test_active_deadline_from_max_duration(max_duration, expected):
    job = planned(make_run(budget={"maxDuration": max_duration})).children.job
    assert job["spec"].get("activeDeadlineSeconds") == expected


def test_owner_reference_and_labels():
    result = planned(make_run())
    for obj in result.children.objects():
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun", "name": "run-1",
                       "uid": uid_of("TrainingRun", "run-1"), "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["labels"]["genforge.dev/owner-uid"] == uid_of("TrainingRun", "run-1")


@pytest.mark.parametrize("storage,expect_pvc,expect_env_from", [
    (Storage(), True, None),
    (Storage(uri="s3://bucket/genforge", pvc=None, secret_name="s3-creds"), False, [{"secretRef": {"name": "s3-creds"}}]),
], ids=["pvc", "object-store"])
def test_storage_kinds(storage, expect_pvc, expect_env_from):
    config = OperatorConfig(storage=storage)
    result = planned(make_run(), config=config)
    job = result.children.job
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert ("data" in volumes) == expect_pvc
    assert container(job).get("envFrom") == expect_env_from
    doc = result.document
    assert doc["output"]["uri"].startswith(storage.uri)


def test_run_spec_document_in_the_pods_annotation_read_through_the_downward_api():
    result = planned(make_run(evaluation={"samples": 4, "metrics": ["loss", "fid"]}))
    assert result.children.config_map is None  # no object of its own per run
    template = result.children.job["spec"]["template"]
    doc = json.loads(template["metadata"]["annotations"]["genforge.dev/run-spec"])
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "run-spec"]
    assert volume["downwardAPI"]["items"] == [{"path": "run.json", "fieldRef": {
        "fieldPath": "metadata.annotations['genforge.dev/run-spec']"}}]
    assert {"name": "run-spec", "mountPath": "/etc/genforge", "readOnly": True} in container(
        result.children.job)["volumeMounts"]
    assert doc == result.document == run_document(result.children.objects())
    assert doc["schemaVersion"] == "genforge.dev/v1alpha1" and doc["command"] == "train"
    assert doc["training"]["steps"] == 100 and doc["training"]["batchSize"] == 8
    assert doc["dataset"]["uri"] == "file:///data/datasets/team-a/shapes"
    assert doc["model"]["config"]["blockOutChannels"] == [16, 32]
    assert doc["evaluation"] == {"samples": 4, "metrics": ["loss", "fid"], "heldOutFraction": 0.1}
    assert doc["checkpoint"]["everySteps"] == 50
    assert container(result.children.job)["command"][-2:] == ["--config", "/etc/genforge/run.json"]


def test_a_run_document_too_large_for_an_annotation_goes_in_a_configmap_mounted_in_its_place(monkeypatch):
    small = planned(make_run())
    monkeypatch.setattr(builders, "RUN_SPEC_ANNOTATION_MAX_BYTES", len(json.dumps(small.document, indent=2)) - 1)
    result = planned(make_run())
    cm, job = result.children.config_map, result.children.job
    assert result.children.objects()[0] is cm  # created before the Job that mounts it
    assert "annotations" not in job["spec"]["template"]["metadata"]
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "run-spec"]
    assert volume == {"name": "run-spec", "configMap": {"name": cm["metadata"]["name"]}}
    assert cm["metadata"]["name"].startswith(job["metadata"]["name"] + "-")  # named after its content
    assert json.loads(cm["data"]["run.json"]) == result.document == run_document(result.children.objects())


def test_missing_optional_blocks():
    run = make_run(evaluation=None, checkpoint=None, budget=None)
    result = planned(run)
    assert result.document["evaluation"] is None
    assert result.document["checkpoint"]["everySteps"] == 500  # the schema's default
    assert "activeDeadlineSeconds" not in result.children.job["spec"]


def test_finetune_uses_promoted_else_latest_version():
    ft = make_finetune(lora={"rank": 4})
    result = planned(ft)
    assert result.document["command"] == "finetune"
    assert result.document["finetune"] == {"method": "lora", "baseVersion": "v1", "lora": {
        "rank": 4, "alpha": 16, "merge": False}}
    assert result.document["model"]["baseUri"] == "file:///data/runs/team-a/trainingrun/r/model"


@pytest.mark.parametrize("run,cat,reason", [
    (make_run(), catalog(dataset=make_dataset(phase="Running")), Reason.DATASET_NOT_READY),
    (make_run(modelRef={"name": "nope"}), None, Reason.MODEL_NOT_FOUND),
    (make_finetune(), catalog(model=make_model()), Reason.BASE_VERSION_NOT_FOUND),
    (make_finetune(baseModel={"version": "v9"}), None, Reason.BASE_VERSION_NOT_FOUND),
], ids=["dataset-not-ready", "model-missing", "no-versions", "unknown-version"])
def test_blocked_references(run, cat, reason):
    cat = cat or catalog()
    result = plan_run(run, cat.pools["cpu"], cat, CONFIG)
    assert isinstance(result, Blocked) and result.reason == reason
    assert result.message


def test_dataset_job_with_source_secret():
    ds = make_dataset(source={"uri": "s3://bucket/raw", "secretRef": {"name": "s3-creds"}}, phase=None)
    result = plan_dataset(ds, catalog(), CONFIG)
    assert result.document["command"] == "prepare"
    assert result.document["prepare"]["source"] == {"uri": "s3://bucket/raw"}  # no secret in the document
    assert container(result.children.job)["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert result.document["output"]["uri"] == "file:///data/datasets/team-a/shapes"


def test_long_names_fit_kubernetes_limits():
    long_name = "a" * 200
    result = planned(make_run(name=long_name))
    job_name = result.children.job["metadata"]["name"]
    assert len(job_name) <= 51  # room for the pod suffix within 63
    for value in result.children.job["metadata"]["labels"].values():
        assert len(value) <= 63
    other = planned(make_run(name="a" * 199 + "b")).children.job["metadata"]["name"]
    assert other != job_name


def test_evaluation_knobs_of_the_api_reach_the_trainer():
    """Issue 15 item 9: feature extractor, held-out fraction and sampling steps are API fields."""
    from genforge_trainer.config import parse_run_spec

    knobs = {"samples": 8, "metrics": ["fid", "kid"], "heldOutFraction": 0.25,
             "featureExtractorUri": "file:///data/extractors/inception-2015-12-05.pt", "inferenceSteps": 50}
    doc = planned(make_run(evaluation=knobs)).document
    assert doc["evaluation"] == knobs
    ev = parse_run_spec(doc).evaluation
    assert (ev.held_out_fraction, ev.feature_extractor_uri, ev.inference_steps) == (
        0.25, "file:///data/extractors/inception-2015-12-05.pt", 50)


def test_preference_beta_default_is_the_measured_one_and_reaches_the_trainer():
    """Issue 15 item 8: beta defaults to 5000 (docs/benchmarks.md, "Preference fine-tuning's
    beta"), in the CRD, the operator's API and the trainer alike."""
    from genforge_operator import schema
    from genforge_trainer.config import PreferenceSpec, parse_run_spec

    from .factories import make_finetune

    crd = schema.crd_for("FineTune")
    beta = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "preference"]["properties"]["beta"]
    assert beta["default"] == 5000 == PreferenceSpec("x").beta
    ft = make_finetune(method="preference", preference={"feedbackUri": "file:///data/f.jsonl"}, lora=None)
    doc = planned(ft).document
    assert doc["finetune"]["preference"]["beta"] == 5000
    assert parse_run_spec(doc).finetune.preference.beta == 5000
