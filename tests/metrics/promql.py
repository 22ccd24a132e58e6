"""A small PromQL linter for the dashboard and the rules: the names they use must exist.

Not a parser: it pulls out metric names (`genforge_…` identifiers outside quoted strings)
and label names (in `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists and
`{…}` matchers), and checks brackets balance. Enough to fail on a typo in a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from genforge_operator import metrics

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![A-Za-z0-9_:])(genforge_[a-z0-9_]+)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# Labels Prometheus itself adds (target labels, histogram buckets).
PROMETHEUS_LABELS = frozenset({"le", "job", "instance", "pod", "container", "namespace"})


def _names_of(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("_sum", "_count", "_created")}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    return names


def known_metrics() -> frozenset[str]:
    """Every genforge sample name: the operator's (metrics.py) and the trainer's (progress.py)."""
    from genforge_trainer.progress import TrainerMetrics

    return metrics.exposed_names() | frozenset(_names_of(TrainerMetrics().registry))


def known_labels() -> frozenset[str]:
    return metrics.ALLOWED_LABELS | PROMETHEUS_LABELS


def strip_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(strip_strings(expr)))


def label_names(expr: str) -> set[str]:
    text = strip_strings(expr)
    found: set[str] = set()
    for group in _GROUPING.findall(text):
        found |= {part.strip() for part in group.split(",") if part.strip()}
    for matchers in _MATCHERS.findall(text):
        found |= set(_MATCHER_LABEL.findall(matchers))
    return found


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND_LABEL.findall(legend or ""))


def declared_labels() -> dict[str, frozenset[str]]:
    """Label names of every genforge sample name, as metrics.py declares them."""
    out = {g.name: frozenset(g.labels) for g in metrics.STATUS_GAUGES}
    for metric in metrics.ACTIVITY_METRICS:
        labels = frozenset(metric._labelnames)  # prometheus_client keeps them here
        for family in metric.describe():
            for suffix in ("_total", "_bucket", "_sum", "_count"):
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


_LEADING_AGGREGATION = re.compile(r"^\s*(?:sum|max|min|avg|count)\s+by\s*\(([^)]*)\)")
_QUANTILE = re.compile(r"^\s*histogram_quantile\s*\(")


def result_labels(expr: str) -> frozenset[str]:
    """The labels an expression's result series carry (a heuristic good for our rules):
    a leading `sum by (…)` (also inside `histogram_quantile`) decides; otherwise the labels
    of the first metric, or of the last one after a `group_right`."""
    text = strip_strings(expr)
    if _QUANTILE.match(text):
        grouping = _GROUPING.search(text)
        return frozenset(p.strip() for p in grouping.group(1).split(",")) - {"le"} if grouping else frozenset()
    leading = _LEADING_AGGREGATION.match(text)
    if leading:
        return frozenset(p.strip() for p in leading.group(1).split(",") if p.strip())
    names = _METRIC.findall(text)
    if not names:
        return frozenset()
    declared = declared_labels()
    return declared.get(names[-1] if "group_right" in text else names[0], frozenset())


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack


def problems(exprs: Iterable[tuple[str, str]]) -> list[str]:
    """(where, expr) pairs → what is wrong with them; empty when all is well."""
    metric_set, label_set = known_metrics(), known_labels()
    out = []
    for where, expr in exprs:
        if not expr.strip():
            out.append(f"{where}: empty expression")
            continue
        if not balanced(expr):
            out.append(f"{where}: unbalanced brackets in {expr!r}")
        names = metric_names(expr)
        if not names:
            out.append(f"{where}: uses no genforge metric: {expr!r}")
        for name in sorted(names - metric_set):
            out.append(f"{where}: unknown metric {name}")
        for label in sorted(label_names(expr) - label_set):
            out.append(f"{where}: unknown label {label}")
    return out
