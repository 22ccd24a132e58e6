"""`genforge render`: what the operator would create, offline, from the same builders."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from genforge_operator.cli import main

HERE = Path(__file__).parent
EXAMPLES = HERE.parents[1] / "examples"


def render(capsys, *files: str) -> tuple[int, list[dict], str]:
    code = main(["render", *(arg for f in files for arg in ("-f", f))])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d], err


def by(objects, kind, owner):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["ownerReferences"][0]["name"] == owner)


def test_examples_render_every_child(capsys):
    code, objects, err = render(capsys, str(EXAMPLES))
    assert code == 0, err
    owners = {(o["kind"], o["metadata"]["ownerReferences"][0]["kind"]) for o in objects}
    assert ("Job", "Dataset") in owners and ("Job", "TrainingRun") in owners and ("Job", "FineTune") in owners
    assert all(o["kind"] in ("ConfigMap", "Job", "Service") for o in objects)


def test_multi_node_tpu_and_kueue(capsys):
    code, objects, err = render(capsys, str(HERE / "manifests" / "scale.yaml"))
    assert code == 0, err
    multi = by(objects, "Job", "multi-node")
    assert multi["spec"]["completionMode"] == "Indexed" and multi["spec"]["completions"] == 4
    assert multi["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert by(objects, "Service", "multi-node")["spec"]["clusterIP"] == "None"
    assert multi["spec"]["activeDeadlineSeconds"] > 0

    tpu = by(objects, "Job", "on-tpu")["spec"]["template"]["spec"]
    assert tpu["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "2x4"}
    assert {"name": "PJRT_DEVICE", "value": "TPU"} in tpu["containers"][0]["env"]

    queued = by(objects, "Job", "queued")
    assert queued["spec"]["suspend"] is True
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"

    dataset = by(objects, "Job", "big")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "s3-creds"}} in dataset["envFrom"]


def test_missing_reference_is_an_error_not_a_crash(capsys, tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun",
                                   "metadata": {"name": "lost"},
                                   "spec": {"modelRef": {"name": "nope"}, "datasetRef": {"name": "nope"},
                                            "training": {"steps": 1}, "hardware": {"pool": "cpu"}}}))
    code, objects, err = render(capsys, str(run))
    assert code == 1 and not objects
    assert "ModelNotFound" in err


def test_invalid_yaml_and_missing_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed")
    assert main(["render", "-f", str(bad)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert main(["render", "-f", str(tmp_path / "none.yaml")]) == 2


def test_invalid_input_is_refused_with_every_field_error_and_nothing_rendered(capsys, tmp_path):
    """As the API server would refuse it (`schema.admit_object`: CRD schema, CEL rules, unknown fields as
    `kubectl apply` refuses them), so a typo never renders into a Job."""
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun",
                                   "metadata": {"name": "typo"},
                                   "spec": {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"},
                                            "training": {"steps": 0, "epochs": 3}, "hardware": {"pool": "cpu"}}}))
    code, objects, err = render(capsys, str(EXAMPLES), str(run))
    assert code == 2 and not objects, err
    assert 'error: TrainingRun "typo" is invalid: spec.training.epochs: unknown field "spec.training.epochs"' in err
    assert 'error: TrainingRun "typo" is invalid: spec.training.steps: Invalid value: 0' in err


def test_a_cel_rule_is_checked_too(capsys, tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"apiVersion": "genforge.dev/v1alpha1", "kind": "TrainingRun",
                                   "metadata": {"name": "auto"},
                                   "spec": {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"},
                                            "training": {"steps": 10}, "hardware": {"pool": "auto"}}}))
    code, _, err = render(capsys, str(run))
    assert code == 2 and 'TrainingRun "auto" is invalid: spec.hardware.deadline' in err, err


def test_without_the_validation_packages_render_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cel", None)  # not installed (the operator image has neither)
    code, objects, err = render(capsys, str(EXAMPLES))
    assert code == 2 and not objects
    assert "needs common-expression-language" in err and "pip install 'genforge[local]'" in err, err
    assert main(["render", "--no-validate", "-f", str(EXAMPLES)]) == 0
