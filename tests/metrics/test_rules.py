"""The alerting rules shipped with the chart (the PrometheusRule's spec.groups)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from . import promql

RULES = Path(__file__).resolve().parents[2] / "charts" / "genforge" / "rules" / "genforge-rules.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

REQUIRED_ALERTS = {
    "GenforgeBudgetWarning": {"genforge_budget_spent_dollars", "genforge_budget_warn_threshold_ratio"},
    "GenforgeBudgetExhausted": {"genforge_budget_spent_dollars", "genforge_budget_limit_dollars"},
    "GenforgeRunProgressStalled": {"genforge_run_progress_ratio", "genforge_run_phase"},
    "GenforgeRunsFailingRepeatedly": {"genforge_runs_finished_total"},
    "GenforgeReconcileErrors": {"genforge_reconcile_errors_total"},
}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_rules_file_is_prometheus_rule_groups():
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))
    for group in document["groups"]:
        assert group["rules"], group["name"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", "?"))
def test_alert_is_complete(rule):
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    assert re.match(r"^Genforge[A-Z][A-Za-z]+$", rule["alert"])
    assert DURATION.match(str(rule["for"])), rule["for"]
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()
    for text in rule["annotations"].values():
        assert promql.legend_labels(text.replace("$labels.", "")) <= promql.known_labels()


def test_alert_names_are_unique():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("alert", "uses"), REQUIRED_ALERTS.items(), ids=list(REQUIRED_ALERTS))
def test_required_alert_uses_its_metrics(alert, uses):
    by_name = {rule["alert"]: rule for rule in rules()}
    assert alert in by_name
    assert uses <= promql.metric_names(by_name[alert]["expr"])


def test_every_expression_uses_only_exported_metrics_and_labels():
    assert promql.problems([(rule["alert"], rule["expr"]) for rule in rules()]) == []


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", "?"))
def test_annotations_name_only_labels_the_alert_carries(rule):
    """`$labels.x` in a message must be a label the alert's series keep after aggregation."""
    carried = promql.result_labels(rule["expr"])
    assert carried, rule["expr"]
    for text in rule["annotations"].values():
        for label in re.findall(r"\$labels\.([a-z_]+)", text):
            assert label in carried, (rule["alert"], label, sorted(carried))


@pytest.mark.parametrize(("expr", "labels"), [
    ("sum by (kind) (increase(genforge_runs_finished_total[1h])) >= 3", {"kind"}),
    ("histogram_quantile(0.99, sum by (le, kind) (rate(genforge_reconcile_duration_seconds_bucket[5m])))", {"kind"}),
    ("genforge_run_progress_ratio and on (namespace) genforge_run_phase", {"namespace", "kind", "name"}),
    ("genforge_budget_spent_dollars >= on (namespace, name) group_right () genforge_budget_warn_threshold_ratio",
     {"namespace", "name", "threshold"}),
])
def test_result_labels_heuristic(expr, labels):
    assert promql.result_labels(expr) == labels
