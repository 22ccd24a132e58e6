"""Admission: a run starts only when its estimate fits maxCost and every covering Budget."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from budget_builders import NOW, make_budget, make_model, make_pool, make_run, seg

from genforge_operator.api import LabelSelector, LabelSelectorRequirement
from genforge_operator.money import periods
from genforge_operator.money.admission import WAITING_RETRY_SECONDS, admit

MODEL = make_model()
# 100 samples/s on one accelerator at $3.60/h = $0.001/s: 1000 steps × 32 = 320 s + 120 s startup
# + 3 checkpoint writes (steps 500 and 1000, the final model) × 2 s = 446 s.
MEASURED = [{"architecture": "unet2d-ddpm", "resolution": 64, "samplesPerSecond": 100.0, "runs": 1}]
POOLS = [make_pool("gpu", price="3.60", measured=MEASURED)]
ESTIMATE = Decimal("0.446")
SECONDS_TO_DECEMBER = (datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds()


def spender(amount_hours: float, name: str = "other", **overrides):
    """A finished run in team-a that spent `amount_hours` × $3.60 today."""
    end = NOW.replace(hour=17)
    start = end.timestamp() - amount_hours * 3600
    start_text = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return make_run(name, segments=[seg(start_text, "17:00")], phase="Succeeded", **overrides)


@pytest.mark.parametrize(("run", "budgets", "others", "decision", "reason"), [
    pytest.param(make_run(), [], [], "Admit", "WithinBudget", id="no-limits"),
    pytest.param(make_run(max_cost="0.446"), [], [], "Admit", "WithinBudget", id="estimate-equals-max-cost"),
    pytest.param(make_run(max_cost="0.40"), [], [], "Failed", "EstimateExceedsMaxCost", id="over-max-cost"),
    pytest.param(make_run(max_cost="1", segments=[seg("17:00", "17:12")]), [], [], "Failed",
                 "EstimateExceedsMaxCost", id="accrued-plus-estimate-over-max-cost"),
    pytest.param(make_run(), [make_budget(limit="100")], [spender(27.7)], "Waiting", "InsufficientBudget",
                 id="budget-remainder-too-small"),
    pytest.param(make_run(), [make_budget(limit="100")], [spender(28)], "Waiting", "BudgetExhausted",
                 id="budget-exhausted"),
    pytest.param(make_run(), [make_budget(limit="0.30")], [], "Failed", "EstimateExceedsBudgetLimit",
                 id="over-the-whole-budget-limit"),
    pytest.param(make_run(), [make_budget(limit="100", period="Total")], [spender(27.7)], "Failed",
                 "InsufficientBudget", id="total-budget-never-rolls-over"),
    pytest.param(make_run(), [make_budget(limit="100", namespace="team-b")], [spender(28)], "Admit",
                 "WithinBudget", id="other-namespace-budget-ignored"),
    pytest.param(make_run(labels={"team": "a"}), [make_budget(limit="100", selector={"matchLabels": {"team": "b"}})],
                 [spender(28, labels={"team": "a"})], "Admit", "WithinBudget", id="selector-does-not-match"),
    pytest.param(make_run(labels={"team": "a"}), [make_budget(limit="100", selector={"matchLabels": {"team": "a"}})],
                 [spender(28, labels={"team": "a"})], "Waiting", "BudgetExhausted", id="selector-matches"),
    pytest.param(make_run(), [make_budget("big", limit="1000"), make_budget("small", limit="100")], [spender(27.7)],
                 "Waiting", "InsufficientBudget", id="several-budgets-all-must-allow"),
    pytest.param(make_run(), [make_budget("a", limit="1000"), make_budget("b", limit="500")], [spender(27.7)],
                 "Admit", "WithinBudget", id="several-budgets-all-allow"),
    pytest.param(make_run(), [make_budget(limit="100")],
                 [make_run("busy", phase="Running", estimated="99.70", segments=[seg("17:59")])], "Waiting",
                 "InsufficientBudget", id="reserved-by-a-running-run"),
    pytest.param(make_run(pool="nope"), [], [], "Waiting", "PoolNotFound", id="named-pool-missing"),
    pytest.param(make_run(deadline="1m"), [], [], "Failed", "DeadlineUnreachable", id="deadline-unreachable"),
])
def test_admit(run, budgets, others, decision, reason):
    admission = admit(run, MODEL, POOLS, budgets, NOW, runs=[run, *others])
    assert (admission.decision, admission.reason) == (decision, reason), admission.message
    assert admission.admitted == (decision == "Admit")
    assert (admission.pool is not None) == admission.admitted


def test_admitted_run_gets_its_estimate_and_a_backstop():
    admission = admit(make_run(max_cost="0.88"), MODEL, POOLS, [], NOW)
    assert admission.estimate.cost == ESTIMATE
    assert admission.estimate.duration_seconds == 446
    assert admission.active_deadline_seconds == 880  # $0.88 at $0.001/s


def test_waiting_message_has_the_numbers_and_the_rollover():
    admission = admit(make_run(), MODEL, POOLS, [make_budget(limit="100")], NOW, runs=[spender(27.7)])
    assert admission.phase == "Waiting"
    assert admission.requeue_after == SECONDS_TO_DECEMBER
    assert admission.message == (
        "estimated $0.45 on gpu exceeds Budget team's remainder $0.28 (limit $100.00, spent $99.72 this Monthly "
        "period); the period rolls over at 2026-12-01T00:00:00Z (in 3d06h)")


def test_reservations_retry_sooner_than_the_rollover():
    busy = make_run("busy", phase="Running", estimated="99.70", segments=[seg("17:59")])
    admission = admit(make_run(), MODEL, POOLS, [make_budget(limit="100")], NOW, runs=[busy])
    assert admission.requeue_after == WAITING_RETRY_SECONDS
    assert "spent $0.06 this Monthly period, $99.64 reserved by running runs" in admission.message


def test_budget_status_stands_in_when_runs_are_not_given():
    spent = make_budget(limit="100", status={"spent": "99.90"})
    assert admit(make_run(), MODEL, POOLS, [spent], NOW).reason == "InsufficientBudget"


def test_resumed_run_is_admitted_for_its_remaining_steps():
    run = make_run(max_cost="0.60", segments=[seg("17:00", "17:04")])  # $0.24 accrued
    assert admit(run, MODEL, POOLS, [], NOW).decision == "Failed"
    resumed = admit(run, MODEL, POOLS, [], NOW, completed_steps=500)  # 160 s + 120 s + 2 writes × 2 s = $0.284
    assert (resumed.decision, resumed.estimate.cost) == ("Admit", Decimal("0.284"))


def test_auto_picks_the_cheapest_pool_within_budget():
    pools = [make_pool("cheap", price="1.80", measured=MEASURED), make_pool("dear", price="7.20", measured=MEASURED)]
    admission = admit(make_run(), MODEL, pools, [], NOW)
    assert admission.pool == admission.auto_choice == "cheap"
    named = admit(make_run(pool="dear"), MODEL, pools, [], NOW)
    assert (named.pool, named.auto_choice) == ("dear", "cheap")


# ------------------------------------------------------------------ selectors and periods
def req(key, operator, *values):
    return LabelSelectorRequirement(key=key, operator=operator, values=list(values))


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    pytest.param(None, {}, True, id="no-selector-matches-all"),
    pytest.param(LabelSelector(), {"a": "1"}, True, id="empty-selector-matches-all"),
    pytest.param(LabelSelector(match_labels={"team": "a"}), {"team": "a", "x": "y"}, True, id="match-labels"),
    pytest.param(LabelSelector(match_labels={"team": "a"}), {"team": "b"}, False, id="match-labels-differ"),
    pytest.param(LabelSelector(match_expressions=[req("tier", "In", "gold", "silver")]), {"tier": "gold"}, True,
                 id="in"),
    pytest.param(LabelSelector(match_expressions=[req("tier", "In", "gold")]), {}, False, id="in-absent"),
    pytest.param(LabelSelector(match_expressions=[req("tier", "NotIn", "gold")]), {}, True, id="notin-absent"),
    pytest.param(LabelSelector(match_expressions=[req("tier", "NotIn", "gold")]), {"tier": "gold"}, False,
                 id="notin-present"),
    pytest.param(LabelSelector(match_expressions=[req("tier", "Exists")]), {"tier": ""}, True, id="exists"),
    pytest.param(LabelSelector(match_expressions=[req("tier", "DoesNotExist")]), {"tier": "x"}, False,
                 id="does-not-exist"),
    pytest.param(LabelSelector(match_labels={"team": "a"}, match_expressions=[req("tier", "Exists")]),
                 {"team": "a"}, False, id="all-terms-must-hold"),
])
def test_selector_matches(selector, labels, matches):
    assert periods.selector_matches(selector, labels) == matches


def utc(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("period", "now", "start", "end"), [
    pytest.param("Daily", utc(2026, 11, 27, 18), utc(2026, 11, 27), utc(2026, 11, 28), id="daily"),
    pytest.param("Weekly", utc(2026, 11, 27, 18), utc(2026, 11, 23), utc(2026, 11, 30), id="weekly-iso-monday"),
    pytest.param("Weekly", utc(2026, 11, 29, 23, 59), utc(2026, 11, 23), utc(2026, 11, 30), id="weekly-sunday"),
    pytest.param("Weekly", utc(2026, 11, 30, 0, 0), utc(2026, 11, 30), utc(2026, 12, 7), id="weekly-monday-midnight"),
    pytest.param("Monthly", utc(2026, 11, 27, 18), utc(2026, 11, 1), utc(2026, 12, 1), id="monthly"),
    pytest.param("Monthly", utc(2026, 12, 31, 23), utc(2026, 12, 1), utc(2027, 1, 1), id="monthly-december"),
    pytest.param("Total", utc(2026, 11, 27, 18), None, None, id="total"),
])
def test_period_window(period, now, start, end):
    assert periods.period_window(period, now) == periods.Window(start, end)


@pytest.mark.parametrize(("period", "spent"), [
    pytest.param("Daily", "7.20", id="daily-counts-only-today"),
    pytest.param("Total", "14.40", id="total-counts-everything"),
])
def test_spent_counts_only_the_part_inside_the_period(period, spent):
    straddler = make_run("night", segments=[seg("2026-11-26T22:00:00Z", "2026-11-27T02:00:00Z")])
    view = periods.budget_view(make_budget(period=period), [straddler], NOW)
    assert view.spent == Decimal(spent)
