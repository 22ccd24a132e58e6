"""The API server misbehaves; the operator retries with backoff and converges.

The emulated API server answers the operator's requests (and only the operator's: faults
match its user agents) with 500/503, 429 (with Retry-After), 409 conflicts and responses
slower than the operator's request timeout; it drops every watch stream again and again;
and it leaves a stream open but silent. Each time the runs still end Succeeded, with cost
equal to the pods' running time, and no duplicate Job.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from .kit import OperatorProcess, Story, World, make_world, money, run_spec, wait_until

pytestmark = [pytest.mark.integration]

# Short limits so that a test sees the operator give up on a request and retry.
FAST_ENV = {"GENFORGE_API_TIMEOUT": "2", "GENFORGE_WATCH_SERVER_TIMEOUT": "20", "GENFORGE_WATCH_CLIENT_TIMEOUT": "3"}


@pytest.fixture(scope="module")
def fast_operator(cluster, tmp_path_factory):
    """One operator process for the module's tests (each works in its own namespace)."""
    operator = OperatorProcess(cluster, tmp_path_factory.mktemp("api-faults"), env=FAST_ENV).start()
    yield operator
    operator.kill()


@pytest.fixture
def faulty(cluster, fast_operator, clients, kubelet, namespace, pool, recorder):
    make_world(clients, kubelet, namespace)
    world = World(clients, kubelet, namespace, cluster, recorder)
    yield world, fast_operator, pool
    cluster.clear_faults()
    print(f"--- operator log ---\n{fast_operator.log()[-15000:]}")


def start_runs(world: World, pool: str, count: int, prefix: str = "r", seconds: float = 1.0) -> list[Story]:
    stories = [Story(f"{prefix}{i}", "succeed", [seconds + (i % 3) * 0.5]) for i in range(count)]
    for story in stories:
        story.uid = world.clients.create(world.namespace, "TrainingRun", story.name, run_spec(pool))["metadata"]["uid"]
    return stories


def play_until_done(world: World, stories: list[Story], timeout: float, during=lambda: None) -> float:
    """Play the kubelet until every story ended; returns the seconds it took."""
    start = time.monotonic()
    while not all(s.done for s in stories):
        assert time.monotonic() - start < timeout, [s for s in stories if not s.done]
        during()
        world.observe_jobs()
        for story in stories:
            world.step(story)
        time.sleep(0.05)
    return time.monotonic() - start


def assert_converged(world: World, stories: list[Story], timeout: float = 30) -> float:
    """Every run Succeeded with the exact cost; one Job each. Returns the seconds to converge."""
    start = time.monotonic()

    def done():
        statuses = {s.name: (world.clients.get(world.namespace, "trainingruns", s.name) or {}).get("status") or {}
                    for s in stories}
        return statuses if all(st.get("phase") == "Succeeded" for st in statuses.values()) else None

    statuses = wait_until(done, timeout=timeout, message="every run Succeeded")
    for story in stories:
        truth = Decimal(world.kubelet.running_seconds(story.uid))
        assert money(statuses[story.name]["cost"]["accrued"]) == truth, (story, statuses[story.name])
    world.observe_jobs()
    assert all(len(world.job_uids[s.uid]) == 1 for s in stories), world.job_uids
    return time.monotonic() - start


def operator_answers(world: World, *statuses: int) -> int:
    return len(world.recorder.matching(lambda r: r.namespace == world.namespace and r.status in statuses
                                       and r.user_agent.startswith(("kopf", "genforge-operator"))))


def test_5xx_429_409_and_slow_responses_are_retried_until_the_runs_converge(faulty):
    world, operator, pool = faulty
    ns, inject = world.namespace, world.cluster.inject
    faults = [
        inject(500, times=3, verb="create", resource="jobs", namespace=ns, user_agent="genforge-operator"),
        inject(503, times=2, verb="create", resource="jobs", namespace=ns, user_agent="genforge-operator"),
        inject(429, times=4, verb="patch", resource="trainingruns", subresource="status", namespace=ns,
               user_agent="genforge-operator"),
        inject(409, times=3, verb="patch", resource="trainingruns", subresource="status", namespace=ns,
               user_agent="genforge-operator"),
        inject(500, times=3, verb="get", resource="trainingruns", namespace=ns, user_agent="genforge-operator"),
        inject(503, times=3, verb="patch", resource="trainingruns", namespace=ns, user_agent="kopf"),
        inject(409, times=2, verb="patch", resource="trainingruns", namespace=ns, user_agent="kopf"),
        # Slower than the operator's 2 s request timeout: it gives up and tries again.
        inject(None, delay=4.0, times=3, verb="get", resource="trainingruns", namespace=ns,
               user_agent="genforge-operator"),
    ]
    stories = start_runs(world, pool, 6)
    play_until_done(world, stories, timeout=90)
    seconds = assert_converged(world, stories, timeout=60)
    hit = sum(f.hits for f in faults)
    print("faults injected per kind:", [(f.status or f"{f.delay:.0f}s late", f.hits) for f in faults])
    print(f"faults injected: {hit}; error answers seen by the operator: "
          f"{operator_answers(world, 409, 429, 500, 503)}; converged {seconds:.1f} s after the last pod")
    assert all(f.spent for f in faults), [(f.status, f.hits, f.times) for f in faults]
    assert operator.running, "the operator never crashes on API errors"


def test_dropped_watch_streams_are_resumed_and_nothing_is_missed(faulty):
    world, operator, pool = faulty
    drops = {"count": 0, "next": time.monotonic()}

    def drop_streams():
        if time.monotonic() >= drops["next"]:
            world.cluster.call(lambda handler: handler.close_watches())
            drops["count"] += 1
            drops["next"] = time.monotonic() + 0.15

    drop_streams()
    stories = start_runs(world, pool, 5, seconds=2.5)

    play_until_done(world, stories, timeout=60, during=drop_streams)
    assert_converged(world, stories)
    reconnects = len(world.recorder.matching(lambda r: r.verb == "watch" and r.user_agent.startswith("kopf")))
    print(f"watch streams dropped {drops['count']} times; kopf opened {reconnects} watch streams")
    assert drops["count"] >= 10


def test_a_silent_watch_stream_is_cut_by_the_client_timeout(faulty):
    """A stream the server keeps open but never writes to (a dead load balancer, a half-open
    connection): kopf's client-side timeout ends it and the new stream delivers the events."""
    world, operator, pool = faulty
    cluster = world.cluster
    client_timeout = float(FAST_ENV["GENFORGE_WATCH_CLIENT_TIMEOUT"])
    mark = cluster.mark()
    silenced = [r for r in cluster.requests() if r.verb == "watch" and r.user_agent.startswith("kopf")
                and r.status is None]
    stalled = cluster.stall_watches(user_agent="kopf", match=lambda r: r.id < mark)  # the open streams only
    try:
        started = time.monotonic()
        stories = start_runs(world, pool, 2, prefix="silent")
        play_until_done(world, stories, timeout=30)
        waited = time.monotonic() - started
        assert_converged(world, stories)
        assert silenced and all(r.status is not None for r in silenced), "the silent streams were cut"
        assert max(r.duration for r in silenced) <= client_timeout + 1.0
        print(f"runs handled {waited:.1f} s after {len(silenced)} open streams went silent "
              f"(client timeout {client_timeout:.0f} s)")
    finally:
        cluster.release_watches(stalled)
