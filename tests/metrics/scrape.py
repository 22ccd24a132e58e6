"""Read a Prometheus exposition and compare it with resources' status.

A run's cost families carry a `pool` label (one series per pool it has used); the
comparisons here add them up, as `sum by (namespace, kind, name)` does.

For the unit tests here and for the integration test that scrapes the running operator:

    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert_run_matches_status(samples, custom_api.get_namespaced_custom_object(...))

A finished run compares exactly (its segments are closed); a running one's live values
are a little ahead of the last status write, so pass `slack_seconds` (the time since the
status was written, e.g. the enforcement interval) to allow for what accrued since.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]

MONEY_TOLERANCE = 1e-6     # status keeps micro-dollars
SECONDS_TOLERANCE = 1e-3   # status keeps milliseconds
RATIO_TOLERANCE = 1e-3     # status keeps percent with one decimal


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8"))


def select(samples: Samples, metric: str, /, **labels: str) -> dict[Labels, float]:
    """The samples of `metric` whose labels include `labels`."""
    return {lbls: value for (n, lbls), value in samples.items()
            if n == metric and all(dict(lbls).get(k) == v for k, v in labels.items())}


def one(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The value of the one series of `metric` with `labels` (None when there is none)."""
    found = select(samples, metric, **labels)
    if len(found) > 1:
        raise AssertionError(f"{metric} {labels}: {len(found)} series, expected one: {sorted(found)}")
    return next(iter(found.values()), None)


def total(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The sum over the series of `metric` with `labels` (a run's cost over its pools); None if none."""
    found = select(samples, metric, **labels)
    return sum(found.values()) if found else None


def _money(value) -> float | None:
    return None if value is None else float(value)


def expected_run(body: Mapping) -> dict[str, float | None]:
    """What the run's gauges should show, read straight from its status (and spec limits)."""
    status = body.get("status") or {}
    cost = status.get("cost") or {}
    progress = status.get("progress")
    if progress is None:
        ratio = 1.0 if status.get("phase") == "Succeeded" else 0.0
    elif progress.get("totalSteps"):
        ratio = min(1.0, progress.get("step", 0) / progress["totalSteps"])
    else:
        ratio = progress.get("percent", 0.0) / 100.0
    limit = cost.get("limit", (body.get("spec") or {}).get("budget", {}).get("maxCost"))
    return {
        "genforge_run_cost_dollars": _money(cost.get("accrued")) or 0.0,
        "genforge_run_estimated_cost_dollars": _money(cost.get("estimated")),
        "genforge_run_estimated_duration_seconds": cost.get("estimatedSeconds"),
        "genforge_run_cost_limit_dollars": _money(limit),
        "genforge_run_accelerator_seconds": float(status.get("acceleratorSeconds") or 0.0),
        "genforge_run_running_seconds": float(status.get("runningSeconds") or 0.0),
        "genforge_run_progress_ratio": ratio,
        "genforge_run_restarts": float(status.get("restarts") or 0),
    }


_TOLERANCE = {"dollars": MONEY_TOLERANCE, "seconds": SECONDS_TOLERANCE, "ratio": RATIO_TOLERANCE}


def _tolerance(name: str) -> float:
    return next((t for suffix, t in _TOLERANCE.items() if name.endswith(suffix)), 0.0)


def assert_run_matches_status(samples: Samples, body: Mapping, *, slack_seconds: float = 0.0) -> None:
    """The run's gauges equal its status within rounding (plus what `slack_seconds` can accrue)."""
    meta = body["metadata"]
    who = {"kind": body["kind"], "namespace": meta["namespace"], "name": meta["name"]}
    status = body.get("status") or {}
    rate_per_second = (total(samples, "genforge_run_cost_rate_dollars_per_hour", **who) or 0.0) / 3600
    accelerators = sum(s.get("accelerators", 0) for s in status.get("segments") or [] if not s.get("end"))
    growth = {
        "genforge_run_cost_dollars": rate_per_second * slack_seconds,
        "genforge_run_accelerator_seconds": accelerators * slack_seconds,
        "genforge_run_running_seconds": slack_seconds if accelerators else 0.0,
    }
    problems = []
    for name, want in expected_run(body).items():
        got = total(samples, name, **who)
        if want is None:
            if got is not None:
                problems.append(f"{name}: {got}, expected no series")
            continue
        if got is None:
            problems.append(f"{name}: missing, expected {want}")
            continue
        low, high = want - _tolerance(name), want + _tolerance(name) + growth.get(name, 0.0)
        if not low <= got <= high:
            problems.append(f"{name}: {got}, expected {want}" + (f" (up to {high})" if high > want else ""))
    phase = status.get("phase") or "Pending"
    phases = {dict(lbls)["phase"]: v for lbls, v in select(samples, "genforge_run_phase", **who).items()}
    if phases.get(phase) != 1.0 or sum(phases.values()) != 1.0:
        problems.append(f"genforge_run_phase: {phases}, expected {phase}=1 only")
    assert not problems, f"{who}: " + "; ".join(problems)


def assert_budget_matches_status(samples: Samples, body: Mapping) -> None:
    meta, status = body["metadata"], body.get("status") or {}
    who = {"namespace": meta["namespace"], "name": meta["name"]}
    expected = {
        "genforge_budget_limit_dollars": _money(body["spec"]["limit"]),
        "genforge_budget_spent_dollars": _money(status.get("spent")),
        "genforge_budget_remaining_dollars": _money(status.get("remaining")),
    }
    for name, want in expected.items():
        got = one(samples, name, **who)
        if want is None:
            assert got is None, f"{who} {name}: {got}, expected no series"
        else:
            assert got is not None and abs(got - want) <= MONEY_TOLERANCE, f"{who} {name}: {got}, expected {want}"


def run_series(samples: Samples, kind: str, namespace: str, name: str) -> Samples:
    """Every sample about one run (to check it is gone after a delete)."""
    return {key: value for key, value in samples.items()
            if dict(key[1]).get("kind") == kind and dict(key[1]).get("namespace") == namespace
            and dict(key[1]).get("name") == name}
