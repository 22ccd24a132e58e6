"""The operator SIGKILLed at random and chosen points while 20 runs go through their lives.

The operator runs as a real process (`kopf run`), the test plays the kubelet and the Job
controller, and kills the operator: while it creates Jobs (its status write held back), at
random moments mid-run, while it stops an over-budget run (its Job patch held back), and
around deletions (down while pods end and runs are deleted; killed between recording a
deleted run on the Budget and releasing the run's finalizer). After each kill it starts a
new operator. Then, for every run:

* exactly one Job was ever created for it (Job uids seen per owner; Job creations that the
  API server answered 201 in its request log);
* it reached the phase its story ends in (no run stuck) — or, deleted, it is gone;
* `status.cost.accrued` and `status.acceleratorSeconds` equal the truth computed from the
  pod timestamps the kubelet wrote: to the micro-dollar, no second lost or counted twice;
  a deleted run's spending is on the Budget exactly once and exactly right;
* the namespace Budget's `spent` is the sum of all of that; the model registry has one
  version per succeeded run.

`-m soak` runs more rounds (GENFORGE_SOAK_ROUNDS, default 5) of the same with new seeds.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from genforge_operator.api import FINALIZER, GROUP, VERSION
from genforge_operator.naming import LABEL_UID

from .kit import (
    ENFORCED_MAX_COST,
    Clients,
    Kubelet,
    OperatorProcess,
    RequestRecorder,
    Story,
    World,
    condition,
    make_world,
    money,
    run_spec,
    seconds,
    ts,
    ungranted,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRICE_PER_SECOND = Decimal(1)  # the `pool` fixture: $3600/h, one unit per run
SCENARIOS = ["succeed"] * 6 + ["retry"] * 3 + ["fail"] * 3 + ["enforce"] * 4 + ["delete"] * 4
EXPECTED_PHASE = {"succeed": "Succeeded", "retry": "Succeeded", "fail": "Failed", "enforce": "BudgetExceeded"}


@dataclass
class Chaos:
    """The kills: scheduled ones at random moments, and restarts after a random downtime."""

    operator: OperatorProcess
    rng: random.Random
    kill_at: list[float] = field(default_factory=list)  # monotonic moments
    restart_at: float | None = None
    points: Counter = field(default_factory=Counter)

    def kill(self, point: str, downtime: tuple[float, float] = (0.1, 1.0)) -> None:
        self.operator.kill()
        self.points[point] += 1
        self.restart_at = time.monotonic() + self.rng.uniform(*downtime)

    def tick(self) -> None:
        now = time.monotonic()
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.operator.start(wait=False)
        elif self.restart_at is None and self.kill_at and now >= self.kill_at[0]:
            self.kill_at.pop(0)
            self.kill("random")

    def ensure_running(self) -> None:
        if not self.operator.running:
            self.restart_at = None
            self.operator.start(wait=False)


def play_round(clients: Clients, kubelet: Kubelet, namespace: str, pool: str, cluster, operator: OperatorProcess,
               recorder: RequestRecorder, rng: random.Random, random_kills: int = 3) -> dict:
    """One round: 20 runs through their lives while the operator is killed; returns the figures."""
    world = World(clients, kubelet, namespace, cluster, recorder)
    chaos = Chaos(operator, rng)
    operator.start()
    world_uids = make_world(clients, kubelet, namespace)
    scenarios = list(SCENARIOS)
    rng.shuffle(scenarios)
    stories = [Story(f"r{i:02d}", s, [rng.uniform(1.0, 4.0), rng.uniform(1.0, 3.0)])
               for i, s in enumerate(scenarios)]

    # Kill 1, creation: the operator's first status write after creating a Job is held back,
    # and the operator dies with the Job created but not recorded.
    held = world.hold(verb="patch", resource="trainingruns", subresource="status", user_agent="genforge-operator")
    for story in stories:
        budget = {"maxCost": ENFORCED_MAX_COST if story.scenario == "enforce" else "1000", "maxDuration": "1h"}
        story.uid = clients.create(namespace, "TrainingRun", story.name, run_spec(pool, budget=budget))["metadata"]["uid"]
    wait_until(lambda: held.in_flight, timeout=30, message="the held status write")
    chaos.kill("creation")

    start = time.monotonic()
    chaos.kill_at = sorted(start + rng.uniform(2.0, 10.0) for _ in range(random_kills))
    enforcement_hold = None
    deleted_once = deleted_down = False
    deleting: list[Story] = [s for s in stories if s.scenario == "delete"]

    def remaining() -> list[Story]:
        return [s for s in stories if not s.done]

    deadline = start + 90
    while remaining() or chaos.kill_at:
        assert time.monotonic() < deadline, f"the kubelet's stories did not end: {describe(clients, namespace, remaining())}"
        chaos.tick()
        world.observe_jobs()
        for story in stories:
            world.step(story)

        # Kill 2, enforcement: the operator's Job patch (the suspension) is held back; it dies meanwhile.
        if enforcement_hold is not None and enforcement_hold.records and not enforcement_hold.in_flight \
                and chaos.points["enforcement"] == 0:
            enforcement_hold = None  # a random kill got there first: hold the next one
        if enforcement_hold is None and chaos.restart_at is None and operator.running \
                and any(not s.done for s in stories if s.scenario == "enforce"):
            enforcement_hold = world.hold(verb="patch", resource="jobs", user_agent="genforge-operator")
        elif enforcement_hold is not None and chaos.points["enforcement"] == 0 and enforcement_hold.in_flight:
            chaos.kill("enforcement")

        # Kill 3, deletion, first run: killed after recording the run on the Budget, before
        # kopf releases its finalizer (kopf's patch is held back): the deletion handler runs again.
        first = deleting[0]
        if not deleted_once and first.ready_to_delete and operator.running and chaos.restart_at is None:
            lives = kubelet.lives[first.uid]
            kubelet.finish_pod(lives[-1], 143, {"outcome": "Stopped", "reason": "Stopped"})
            release = world.hold(verb="patch", resource="trainingruns", name=first.name, user_agent="kopf")
            clients.delete(namespace, "trainingruns", first.name)
            wait_until(lambda held=release: held.in_flight, timeout=30, message="kopf's held patch")
            chaos.kill("deletion")
            first.done = deleted_once = True

        # Kill 4, deletion, the others: down while their pods end and they are deleted.
        others = deleting[1:]
        if deleted_once and not deleted_down and all(s.ready_to_delete for s in others) and chaos.restart_at is None:
            chaos.kill("deletion")
            for story in others:
                kubelet.finish_pod(kubelet.lives[story.uid][-1], 143, {"outcome": "Stopped", "reason": "Stopped"})
                clients.delete(namespace, "trainingruns", story.name)
                story.done = True
            deleted_down = True
        time.sleep(0.05)

    chaos.ensure_running()
    cluster.clear_faults()
    return check(world, stories, operator, world_uids["dataset_uid"], chaos)


def describe(clients: Clients, namespace: str, stories: list[Story]) -> str:
    """What a failure message needs: each story and its run's phase and Ready condition."""
    out = []
    for story in stories:
        status = (clients.get(namespace, "trainingruns", story.name) or {}).get("status") or {}
        out.append(f"\n{story.name} {story.scenario} stage={story.stage} done={story.done}: {status.get('phase')} "
                   f"{condition(status).get('reason')} job={status.get('job')} pool={bool(status.get('pool'))} "
                   f"segments={[(g.get('start'), g.get('end')) for g in status.get('segments') or []]} "
                   f"accrued={(status.get('cost') or {}).get('accrued')}")
    return "".join(out)


def check(world: World, stories: list[Story], operator: OperatorProcess, dataset_uid: str, chaos: Chaos) -> dict:
    clients, namespace, kubelet = world.clients, world.namespace, world.kubelet
    kept = [s for s in stories if s.scenario != "delete"]
    deleted = [s for s in stories if s.scenario == "delete"]

    def settled():
        runs = {r["metadata"]["name"]: r for r in clients.list(namespace, "trainingruns")}
        wrong = {s.name: (runs.get(s.name, {}).get("status") or {}).get("phase") for s in kept
                 if (runs.get(s.name, {}).get("status") or {}).get("phase") != EXPECTED_PHASE[s.scenario]}
        open_segments = [s.name for s in kept if any(
            seg.get("end") is None for seg in (runs.get(s.name, {}).get("status") or {}).get("segments") or [{}])]
        lingering = [s.name for s in deleted if s.name in runs]
        return runs if not (wrong or open_segments or lingering) else None

    try:
        runs = wait_until(settled, timeout=60, message="every run settled")
    except TimeoutError:
        raise AssertionError(f"runs not settled: {describe(clients, namespace, stories)}") from None
    world.observe_jobs()

    truth = {s.uid: kubelet.running_seconds(s.uid) for s in stories}
    drift = Decimal(0)
    for story in kept:
        status = runs[story.name]["status"]
        accrued = money(status["cost"]["accrued"])
        drift += abs(accrued - truth[story.uid] * PRICE_PER_SECOND)
        why = (f"{story.name} ({story.scenario}): accrued {accrued}, truth {truth[story.uid]} s; segments "
               f"{[(g['start'], g.get('end')) for g in status.get('segments') or []]}; pods "
               f"{[(p.started, p.finished, p.exit_code) for p in kubelet.lives[story.uid]]}")
        assert accrued == truth[story.uid] * PRICE_PER_SECOND, why
        assert status["acceleratorSeconds"] == truth[story.uid], why
        if story.scenario == "fail":
            assert condition(status)["reason"] == "DataError", status
        if story.scenario == "enforce":
            assert condition(status)["reason"] == "MaxCostReached", status

    # One Job per owner, ever; and one successful Job creation each in the API server's log.
    owners = [s.uid for s in stories] + [dataset_uid]
    duplicates = {uid: uids for uid, uids in world.job_uids.items() if len(uids) != 1}
    assert not duplicates, duplicates
    assert set(world.job_uids) == set(owners)
    created = world.recorder.matching(lambda r: r.verb == "create" and r.plural == "jobs"
                                      and r.namespace == namespace and r.status == 201)
    assert len(created) == len(owners), f"{len(created)} Jobs created for {len(owners)} owners"

    # The Budget: deleted runs recorded once each, exactly; spent is the sum of everything.
    expected_spent = sum(truth.values()) * PRICE_PER_SECOND

    def budget_settled():
        status = clients.get(namespace, "budgets", "team").get("status") or {}
        return status if money(status.get("spent", -1)) == expected_spent else None

    try:
        budget = wait_until(budget_settled, timeout=30, message="Budget spent = Σ truth")
    except TimeoutError:
        status = clients.get(namespace, "budgets", "team").get("status")
        raise AssertionError(f"Budget spent {status.get('spent')} != {expected_spent}: {status}") from None
    retired = Counter(r["uid"] for r in budget.get("retired") or [])
    assert retired == Counter(s.uid for s in deleted), retired
    for entry in budget["retired"]:
        assert retired_cost(entry) == truth[entry["uid"]] * PRICE_PER_SECOND, entry

    # The registry: one version per succeeded run, none twice.
    model = clients.get(namespace, "genmodels", "shapes")["status"]
    sources = Counter(v["source"]["name"] for v in model["versions"])
    succeeded = {s.name for s in stories if EXPECTED_PHASE.get(s.scenario) == "Succeeded"}
    assert set(sources) == succeeded and max(sources.values()) == 1, sources
    # Every call of this chaotic traffic (retries, resumes, deletions) is one RBAC grants.
    assert not ungranted(world.recorder.records), ungranted(world.recorder.records)
    return {"runs": len(stories), "kills": dict(chaos.points), "duplicates": len(duplicates),
            "drift": drift, "jobs_created": len(created), "operator_starts": operator.starts}


def retired_cost(entry: dict) -> Decimal:
    """What a Budget's `status.retired` entry counts: its segments' seconds × units × price."""
    return sum((seconds(seg["start"], seg["end"]) * seg["accelerators"] * money(seg["pricePerHour"]) / 3600
                for seg in entry["segments"]), Decimal(0))


def assert_retired_once(clients: Clients, namespace: str, uid: str, truth: Decimal) -> None:
    """The deleted run `uid` is on the Budget "team" once, costing `truth`, and `spent` is that."""
    def retired():
        status = clients.get(namespace, "budgets", "team").get("status") or {}
        entries = [r for r in status.get("retired") or [] if r["uid"] == uid]
        return entries if entries and money(status.get("spent", -1)) == truth else None

    [entry] = wait_until(retired, timeout=30, message="the deleted run's spending on the Budget")
    assert retired_cost(entry) == truth, entry


def test_operator_killed_at_random_and_chosen_points_loses_and_duplicates_nothing(
        clients, kubelet, namespace, pool, cluster, operator_process, recorder, rng):
    figures = play_round(clients, kubelet, namespace, pool, cluster, operator_process, recorder, rng)
    print("reliability figures:", figures)
    assert sum(figures["kills"].values()) >= 6 and figures["drift"] == 0 and figures["duplicates"] == 0


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_operator_kills(clients, pool, cluster, core_api, recorder, rng, tmp_path):
    """More rounds of the same, each in a fresh namespace with its own seed-derived schedule."""
    totals: Counter = Counter()
    for round_number in range(int(os.environ.get("GENFORGE_SOAK_ROUNDS", "5"))):
        namespace = f"soak-{round_number}-{rng.randrange(10**6)}"
        core_api.create_namespace({"metadata": {"name": namespace}})
        operator = OperatorProcess(cluster, tmp_path / namespace)
        (tmp_path / namespace).mkdir()
        try:
            figures = play_round(clients, Kubelet(clients, namespace), namespace, pool, cluster, operator, recorder,
                                 rng, random_kills=6)
        finally:
            operator.kill()
            cluster.call(lambda handler, ns=namespace: handler.purge_namespace(ns))
        totals["runs"] += figures["runs"]
        totals["kills"] += sum(figures["kills"].values())
        totals["duplicates"] += figures["duplicates"]
        totals["drift"] += figures["drift"]
        totals["jobs_created"] += figures["jobs_created"]
        print(f"round {round_number}: {figures}")
    print("soak totals:", dict(totals))
    assert totals["duplicates"] == 0 and totals["drift"] == 0


def test_a_run_deleted_before_kopf_adds_its_finalizer_still_reaches_its_budget(
        clients, kubelet, namespace, pool, cluster, operator_process, recorder):
    """kopf adds its finalizer only after a run's first event handler, and a run's Job starts
    from that handler's re-check: with kopf's finalizer patch held back, the run must still
    carry the finalizer before its Job exists, so deleting it then ends in the deletion
    handler that puts what it spent on the Budget. (Found by the kill test above: operators
    killed within a second of starting never got to the finalizer, and deleted runs' spending
    fell off the Budget.)"""
    world = World(clients, kubelet, namespace, cluster, recorder)
    operator_process.start()
    make_world(clients, kubelet, namespace)
    kopf_finalizer = world.hold(verb="patch", resource="trainingruns", name="early", user_agent="kopf")
    uid = clients.create(namespace, "TrainingRun", "early", run_spec(pool))["metadata"]["uid"]
    job = wait_until(lambda: next((j for j in clients.jobs(namespace)
                                   if j["metadata"]["labels"][LABEL_UID] == uid), None),
                     timeout=30, message="the run's Job")
    assert kopf_finalizer.in_flight, "kopf's finalizer patch was not held back while the Job was created"
    assert FINALIZER in (clients.get(namespace, "trainingruns", "early")["metadata"].get("finalizers") or [])

    life = kubelet.start_pod(job, started=ts(-3))
    kubelet.finish_pod(life, 143, {"outcome": "Stopped", "reason": "Stopped"})
    clients.delete(namespace, "trainingruns", "early")
    assert kopf_finalizer.in_flight, "the run was deleted after kopf's finalizer patch went through"
    wait_until(lambda: clients.get(namespace, "trainingruns", "early") is None, timeout=30,
               message="the deleted run gone")

    truth = kubelet.running_seconds(uid) * PRICE_PER_SECOND
    assert truth > 0

    assert_retired_once(clients, namespace, uid, truth)


def test_a_run_whose_finalizer_is_taken_off_by_hand_still_reaches_its_budget(
        clients, kubelet, namespace, pool, cluster, operator_process, recorder):
    """`kubectl patch trainingrun … -p '{"metadata":{"finalizers":null}}'` then delete (a runner
    may patch runs): the deletion handler never runs, and the run's spending, as its status
    has it, must still end up on the Budget, exactly, once."""
    world = World(clients, kubelet, namespace, cluster, recorder)
    operator_process.start()
    make_world(clients, kubelet, namespace)
    uid = clients.create(namespace, "TrainingRun", "bypass", run_spec(pool))["metadata"]["uid"]
    job = wait_until(lambda: next((j for j in clients.jobs(namespace)
                                   if j["metadata"]["labels"][LABEL_UID] == uid), None),
                     timeout=30, message="the run's Job")
    life = kubelet.start_pod(job, started=ts(-4))
    kubelet.finish_pod(life, 143, {"outcome": "Stopped", "reason": "Stopped"})
    # What the fallback has to go on is the run's status (its Job and pods go with it at once):
    # here the operator has seen the pod end.
    def recorded():
        run = clients.get(namespace, "trainingruns", "bypass")
        segments = (run.get("status") or {}).get("segments") or []
        return FINALIZER in (run["metadata"].get("finalizers") or []) and segments and segments[-1].get("end")

    wait_until(recorded, timeout=30, message="the run's finalizer and its pod's time in its status")
    clients.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "bypass",
                                                  {"metadata": {"finalizers": None}})
    clients.delete(namespace, "trainingruns", "bypass")
    assert clients.get(namespace, "trainingruns", "bypass") is None  # gone at once: no handler ran
    truth = kubelet.running_seconds(uid) * PRICE_PER_SECOND
    assert truth > 0

    assert_retired_once(clients, namespace, uid, truth)
    assert not ungranted(world.recorder.records), ungranted(world.recorder.records)
