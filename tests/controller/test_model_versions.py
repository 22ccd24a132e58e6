"""Promotion (issue 15 item 7): the defaults agree (evaluation measures fid, promotion compares
fid), a version without the promotion metric is not promoted silently, and FID is compared only
between versions measured with the same feature extractor, reference set and sample count."""

from __future__ import annotations

from datetime import UTC, datetime

from genforge_operator.api import EvaluationSpec, Promotion
from genforge_operator.model_versions import promotion_note, register

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SAME = {"featureExtractor": "random-conv-v1", "referenceSet": "sha256:aaaa", "samples": 16, "heldOut": 4}


def model(*versions, promoted=None, promotion=None):
    status = {"versions": list(versions), **({"promoted": promoted} if promoted else {})}
    spec = {"architecture": "unet2d-ddpm", **({"promotion": promotion} if promotion else {})}
    return {"metadata": {"resourceVersion": "1"}, "spec": spec, "status": status}


def version(name, metrics, evaluation=SAME, run=None):
    return {"name": name, "source": {"kind": "TrainingRun", "name": run or name}, "uri": f"file:///data/{name}",
            "createdAt": "2026-01-01T00:00:00Z", "metrics": metrics,
            **({"evaluation": evaluation} if evaluation else {})}


def add(body, metrics, evaluation=SAME, run="new"):
    patch, name = register(body, {k: v for k, v in version(run, metrics, evaluation).items() if k != "name"}, NOW)
    promoted = next(c for c in patch["conditions"] if c["type"] == "Promoted")
    return patch.get("promoted"), name, promoted, patch


def test_the_default_evaluation_measures_the_default_promotion_metric():
    assert Promotion().metric in EvaluationSpec().metrics


def test_the_best_comparable_version_is_promoted_and_the_condition_says_why():
    body = model(version("v1", {"fid": 40.0}), promoted="v1")
    promoted, name, condition, _ = add(body, {"fid": 30.0})
    assert (promoted, name) == ("v2", "v2")
    assert condition["status"] == "True" and condition["reason"] == "Promoted" and "lowest fid" in condition["message"]
    promoted, _, condition, _ = add(body, {"fid": 50.0})
    assert promoted == "v1" and condition["reason"] == "Kept"


def test_a_version_without_the_promotion_metric_leaves_the_promotion_and_says_so():
    body = model(version("v1", {"fid": 40.0}), promoted="v1")
    promoted, _, condition, patch = add(body, {"loss": 0.02})
    assert promoted == "v1"  # not the latest, silently
    assert condition["status"] == "False" and condition["reason"] == "MetricMissing"
    assert "has no 'fid' metric" in condition["message"] and "loss" in condition["message"]
    assert promotion_note(patch) == condition  # the operator posts it as a Warning Event
    # The first version of a model without the metric: nothing is promoted (latest still names it).
    first_promoted, name, condition, patch = add(model(), {"loss": 0.02})
    assert first_promoted is None and "promoted" not in patch and patch["latest"] == name
    assert condition["reason"] == "MetricMissing"


def test_fid_of_another_extractor_reference_set_or_sample_count_is_not_compared():
    body = model(version("v1", {"fid": 40.0}), promoted="v1")
    for change in ({"featureExtractor": "inception-torchscript:inception-2015-12-05.pt"},
                   {"referenceSet": "sha256:bbbb"}, {"samples": 64}):
        promoted, _, condition, _ = add(body, {"fid": 1.0}, {**SAME, **change})
        key = next(iter(change))
        assert promoted == "v1", change
        assert condition["reason"] == "NotComparable" and key in condition["message"], condition
    # Loss needs the same reference images only: another extractor does not matter.
    loss_model = model(version("v1", {"loss": 0.05}), promoted="v1", promotion={"metric": "loss"})
    promoted, _, condition, _ = add(loss_model, {"loss": 0.01}, {**SAME, "featureExtractor": "other"})
    assert promoted == "v2" and condition["reason"] == "Promoted"


def test_versions_recorded_before_evaluation_identities_compare_as_before():
    body = model(version("v1", {"fid": 40.0}, evaluation=None), promoted="v1")
    promoted, _, condition, _ = add(body, {"fid": 30.0})
    assert promoted == "v2" and condition["reason"] == "Promoted"


def test_a_repeated_registration_changes_nothing():
    body = model(version("v1", {"fid": 40.0}, run="r1"), promoted="v1")
    patch, name = register(body, {k: v for k, v in version("x", {"fid": 1.0}, run="r1").items() if k != "name"}, NOW)
    assert patch is None and name == "v1"
