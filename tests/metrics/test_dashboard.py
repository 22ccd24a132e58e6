"""The Grafana dashboard shipped with the chart: it loads, has the panels platform teams
need, and every expression uses only metrics and labels genforge exports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from . import promql

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "genforge" / "dashboards" / "genforge.json"

REQUIRED_PANELS = [
    ("cost per namespace", "genforge_run_cost_dollars"),
    ("cost per pool", "genforge_run_cost_dollars"),
    ("budget burn-down", "genforge_budget_spent_dollars"),
    ("budget burn-down", "genforge_budget_limit_dollars"),
    ("runs by phase", "genforge_run_phase"),
    ("run progress", "genforge_run_progress_ratio"),
    ("throughput per pool", "genforge_pool_throughput_samples_per_second"),
    ("estimate vs actual: cost", "genforge_run_estimated_cost_dollars"),
    ("estimate vs actual: time", "genforge_run_estimated_duration_seconds"),
    ("accelerators in use", "genforge_pool_accelerators_in_use"),
    ("reconcile errors", "genforge_reconcile_errors_total"),
    ("sample quality of finished runs", "genforge_run_evaluation"),
    ("estimate error per pool", "genforge_run_estimate_error_ratio"),
    ("calibration runs per pool", "genforge_pool_calibration_runs"),
]


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    exprs = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append((f"variable {var['name']}", query))
    return exprs


def test_dashboard_loads_with_a_datasource_variable():
    dashboard = load()
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique_and_placed():
    all_panels = panels(load())
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    for panel in all_panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize(("title", "metric"), REQUIRED_PANELS)
def test_required_panel_shows_its_metric(title, metric):
    by_title = {p["title"].lower(): p for p in panels(load())}
    assert title in by_title, f"no panel {title!r}; panels: {sorted(by_title)}"
    used = set().union(*(promql.metric_names(t["expr"]) for t in by_title[title]["targets"]))
    assert metric in used


def test_every_expression_uses_only_exported_metrics_and_labels():
    assert promql.problems(expressions(load())) == []


def test_every_legend_uses_only_exported_labels():
    for panel in panels(load()):
        for target in panel.get("targets", []):
            assert promql.legend_labels(target.get("legendFormat", "")) <= promql.known_labels(), panel["title"]


@pytest.mark.parametrize(("wrong", "right"), [
    ("genforge_run_cost_dollar", "genforge_run_cost_dollars"),
    ("genforge_budget_spend_dollars", "genforge_budget_spent_dollars"),
    ("genforge_reconcile_duration_seconds_buckets", "genforge_reconcile_duration_seconds_bucket"),
])
def test_a_typo_in_a_metric_name_is_caught(wrong, right):
    dashboard = copy.deepcopy(load())
    target = next(t for p in panels(dashboard) for t in p.get("targets", []) if right in t["expr"])
    target["expr"] = target["expr"].replace(right, wrong)
    assert any(f"unknown metric {wrong}" in problem for problem in promql.problems(expressions(dashboard)))


def test_a_typo_in_a_label_is_caught():
    assert promql.problems([("x", 'sum by (namepsace) (genforge_run_cost_dollars{phase="Running"})')]) == [
        "x: unknown label namepsace"]
