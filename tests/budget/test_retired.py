"""Deleting a run is no way around a Budget: its spending stays counted in the period."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

from budget_builders import NOW, make_budget, make_run, seg

from genforge_operator.api import BudgetStatus, RetiredRun, from_dict
from genforge_operator.money import periods


def _with_retired(b, retired):
    status = dataclasses.replace(b.status or BudgetStatus(),
                                 retired=[from_dict(RetiredRun, r, "retired") for r in retired])
    return dataclasses.replace(b, status=status)


def test_deleted_run_keeps_counting():
    run = dataclasses.replace(make_run("gone", phase="Succeeded", segments=[seg("16:00", "17:00")]), uid="u-1")
    b = make_budget(limit="100")
    before = periods.budget_view(b, [run], NOW).spent
    retired = periods.retire(b, run, NOW)
    after = periods.budget_view(_with_retired(b, retired), [], NOW).spent
    assert before == after == Decimal("3.60")


def test_open_segment_is_closed_at_deletion():
    run = dataclasses.replace(make_run("live", phase="Running", segments=[seg("17:00")]), uid="u-2")
    retired = periods.retire(make_budget(), run, NOW)
    assert retired[0]["segments"][0]["end"] == "2026-11-27T18:00:00Z"
    later = NOW + timedelta(hours=5)
    view = periods.budget_view(_with_retired(make_budget(), retired), [], later)
    assert view.spent == Decimal("3.60")  # one hour, not six


def test_run_still_listed_is_not_counted_twice():
    run = dataclasses.replace(make_run("dying", phase="Succeeded", segments=[seg("16:00", "17:00")]), uid="u-3")
    b = _with_retired(make_budget(), periods.retire(make_budget(), run, NOW))
    assert periods.budget_view(b, [run], NOW).spent == Decimal("3.60")


def test_uncovered_or_costless_runs_are_not_retired():
    other_ns = dataclasses.replace(make_run("x", namespace="team-b", segments=[seg("16:00", "17:00")]), uid="u")
    assert periods.retire(make_budget(), other_ns, NOW) is None
    assert periods.retire(make_budget(), dataclasses.replace(make_run("y"), uid="v"), NOW) is None


def test_retired_entries_leave_with_their_period():
    run = dataclasses.replace(make_run("old", phase="Succeeded", segments=[seg("16:00", "17:00")]), uid="u-4")
    b = _with_retired(make_budget(period="Daily"), periods.retire(make_budget(period="Daily"), run, NOW))
    tomorrow = NOW + timedelta(days=1)
    report = periods.budget_report(b, [], tomorrow)
    assert report.view.spent == 0 and report.status(b.status).retired == []
