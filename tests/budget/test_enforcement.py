"""Enforcement of a running run, the Job's backstop deadline, and Budget status/warnings."""

from __future__ import annotations

from decimal import Decimal

import pytest
from budget_builders import NOW, make_budget, make_run, seg

from genforge_operator.api import BudgetStatus
from genforge_operator.money import enforcement, periods

# Running since 17:00 at $3.60/h = $0.001/s: at NOW (18:00) $3.60 accrued over 3600 s.
RUNNING = [seg("17:00")]


def running(**overrides):
    return make_run(segments=RUNNING, phase="Running", **overrides)


@pytest.mark.parametrize(("run", "budgets", "allowed", "action", "reason", "requeue"), [
    pytest.param(running(), [], True, "Continue", "WithinBudget", 5.0, id="no-limits"),
    pytest.param(running(max_cost="10"), [], True, "Continue", "WithinBudget", 5.0, id="far-from-max-cost"),
    pytest.param(running(max_cost="3.602"), [], True, "Continue", "WithinBudget", 2.0,
                 id="requeue-just-in-time"),
    pytest.param(running(max_cost="3.60"), [], False, "Stop", "MaxCostReached", 5.0, id="max-cost-reached"),
    pytest.param(running(max_cost="3.60005"), [], False, "Stop", "MaxCostReached", 5.0,
                 id="max-cost-due-within-tolerance"),
    pytest.param(running(max_cost="1", on_exceeded="Suspend"), [], False, "Suspend", "MaxCostReached", 5.0,
                 id="over-max-cost-suspends"),
    pytest.param(running(max_duration="1h"), [], False, "Stop", "MaxDurationReached", 5.0,
                 id="max-duration-reached"),
    pytest.param(running(max_duration="1h0m3s"), [], True, "Continue", "WithinBudget", 3.0,
                 id="max-duration-soon"),
    pytest.param(running(), [make_budget(limit="3", on_exhausted="Stop")], False, "Stop", "BudgetExhausted", 5.0,
                 id="budget-exhausted-stops"),
    pytest.param(running(), [make_budget(limit="3", on_exhausted="Suspend")], False, "Suspend", "BudgetExhausted",
                 5.0, id="budget-exhausted-suspends"),
    pytest.param(running(), [make_budget(limit="3", on_exhausted="Alert")], True, "Continue", "WithinBudget", 5.0,
                 id="budget-exhausted-alert-only"),
    pytest.param(running(), [make_budget(limit="3.601")], True, "Continue", "WithinBudget", 1.0,
                 id="budget-runs-out-in-one-second"),
    pytest.param(make_run(segments=[seg("16:00", "17:00")], max_cost="10"), [], True, "Continue", "WithinBudget",
                 5.0, id="stopped-run-under-limits-may-resume"),
    pytest.param(make_run(segments=[seg("16:00", "17:00")], max_cost="3.60"), [], False, "Stop", "MaxCostReached",
                 5.0, id="stopped-run-at-limit-may-not-resume"),
])
def test_enforce(run, budgets, allowed, action, reason, requeue):
    verdict = enforcement.enforce(run, budgets, NOW, runs=[run])
    assert (verdict.allowed, verdict.action, verdict.reason) == (allowed, action, reason), verdict.message
    assert verdict.requeue_after == pytest.approx(requeue)


def test_enforce_message_has_the_numbers():
    verdict = enforcement.enforce(running(max_cost="3.60"), [], NOW)
    assert verdict.message == "accrued $3.60 of maxCost $3.60"
    assert verdict.accrued == Decimal("3.6")


def test_budget_burn_rate_counts_every_running_run_it_covers():
    run, other = running(), make_run("other", segments=RUNNING, phase="Running")
    verdict = enforcement.enforce(run, [make_budget(limit="7.21")], NOW, runs=[run, other])
    assert verdict.seconds_to_limit == pytest.approx(5.0)  # $0.01 left at $0.002/s


def test_interval_caps_the_requeue():
    assert enforcement.enforce(running(max_cost="10"), [], NOW, interval=1.0).requeue_after == 1.0


@pytest.mark.parametrize(("run", "budgets", "kwargs", "deadline"), [
    pytest.param(running(), [], {}, None, id="no-limits"),
    pytest.param(running(max_duration="2h"), [], {}, 3600, id="max-duration-left"),
    pytest.param(running(max_cost="10"), [], {}, 6400, id="max-cost-at-burn-rate"),
    pytest.param(running(max_cost="10", max_duration="1h30m"), [], {}, 1800, id="nearest-limit"),
    pytest.param(running(max_cost="10.0005"), [], {}, 6401, id="rounded-up"),
    pytest.param(running(max_cost="1"), [], {}, 1, id="already-over-is-one"),
    pytest.param(running(), [make_budget(limit="5")], {}, 1400, id="budget-remainder"),
    pytest.param(running(), [make_budget(limit="5", on_exhausted="Alert")], {}, None, id="alert-budget-no-deadline"),
    pytest.param(running(max_cost="10"), [], {"job_start": "2026-11-27T17:30:00Z"}, 8200,
                 id="counts-from-job-start"),
    pytest.param(make_run(max_cost="1"), [], {"rate_per_second": Decimal("0.002")}, 500,
                 id="at-admission-with-estimated-rate"),
])
def test_active_deadline_seconds(run, budgets, kwargs, deadline):
    assert enforcement.active_deadline_seconds(run, budgets, NOW, runs=[run], **kwargs) == deadline


# ------------------------------------------------------------------ Budget status
def spent(dollars: str, **overrides):
    """A finished run that spent `dollars` today: one hour at that hourly price."""
    return make_run("spender", segments=[seg("16:00", "17:00", price=dollars)], phase="Succeeded", **overrides)


@pytest.mark.parametrize(("amount", "status", "new", "warned", "newly_exhausted", "reason"), [
    pytest.param("10", {}, [], [], False, "WithinBudget", id="under-thresholds"),
    pytest.param("85", {}, [50, 80], [50, 80], False, "BudgetWarning", id="crosses-two-at-once"),
    pytest.param("85", {"warned": [50], "periodStart": "2026-11-01T00:00:00Z"}, [80], [50, 80], False,
                 "BudgetWarning", id="announces-each-once"),
    pytest.param("100", {"warned": [50, 80], "periodStart": "2026-11-01T00:00:00Z"}, [], [50, 80, 100], True,
                 "BudgetExhausted", id="exhausted"),
    pytest.param("120", {"warned": [50, 80, 100], "periodStart": "2026-11-01T00:00:00Z"}, [], [50, 80, 100], False,
                 "BudgetExhausted", id="exhausted-announced-once"),
    pytest.param("10", {"warned": [50, 80, 100], "periodStart": "2026-10-01T00:00:00Z"}, [], [], False,
                 "WithinBudget", id="rollover-resets-warnings"),
])
def test_budget_report(amount, status, new, warned, newly_exhausted, reason):
    b = make_budget(limit="100", warn_at=[50, 80], status=status)
    report = periods.budget_report(b, [spent(amount)], NOW)
    assert report.view.spent == Decimal(amount)
    assert (report.new_warnings, report.warned, report.newly_exhausted, report.reason) == (
        new, warned, newly_exhausted, reason)
    assert report.rolled_over == (status.get("periodStart") == "2026-10-01T00:00:00Z")


def test_budget_report_status_and_action():
    report = periods.budget_report(make_budget(limit="100", on_exhausted="Suspend"), [spent("100")], NOW)
    assert report.action == "Suspend"
    assert report.status() == BudgetStatus(spent=Decimal("100"), remaining=Decimal("0"),
                                           period_start="2026-11-01T00:00:00Z", runs=1, warned=[50, 80, 100])
    assert report.message == ("spent $100.00 of $100.00 (100%): new runs wait, running runs are suspended; "
                              "the Monthly period rolls over at 2026-12-01T00:00:00Z")


def test_budget_report_requeues_at_the_next_threshold_at_the_burn_rate():
    report = periods.budget_report(make_budget(limit="10", warn_at=[50]), [running()], NOW)  # $3.60 at $0.001/s
    assert report.requeue_after == pytest.approx(1400)  # $5.00 (50 %) in 1400 s
