"""Tools for the reliability tests: the operator as a process to kill, a request recorder,
clients that identify themselves, and the kubelet played by the test with exact timestamps.

The truth every cost check compares against is what these helpers write: each pod's
`startedAt` and `finishedAt`, at the kubelet's second resolution.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes
from harness import wait_for

from genforge_local import EmulatedCluster
from genforge_local.emulator import RequestRecord
from genforge_operator.api import KINDS

GROUP, VERSION = "genforge.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED = "app.kubernetes.io/managed-by=genforge"
LABEL_UID = "genforge.dev/owner-uid"
TEST_AGENT = "genforge-tests"  # the tests' own requests; everything else in the log is the operator's
OPERATOR_AGENTS = ("kopf", "genforge-operator")
#: Every resource kind the operator watches: it is ready once it watches them all.
WATCHED = {("genforge.dev", p) for p in ("trainingruns", "finetunes", "datasets", "genmodels", "budgets",
                                         "acceleratorpools")} | {("batch", "jobs"), ("", "pods")}


def is_operator(record: RequestRecord) -> bool:
    return record.user_agent.startswith(OPERATOR_AGENTS)


def operator_calls(records: Iterable[RequestRecord]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every API request the operator made."""
    return {(r.group or "", r.plural + (f"/{r.subresource}" if r.subresource else ""), r.verb)
            for r in records if is_operator(r) and r.verb and r.plural}


def chart_operator_grants() -> set[tuple[str, str, str]]:
    """What the chart's operator ClusterRole grants — the one place the operator's RBAC lives."""
    from chart.rendering import one, render
    from chart.test_rbac import triples

    return triples(one(render({}), "ClusterRole", "genforge-operator")["rules"])


def ungranted(records: Iterable[RequestRecord]) -> list[tuple[str, str, str]]:
    """The operator's calls that its ClusterRole would refuse (a real cluster answers them 403)."""
    return sorted(operator_calls(records) - chart_operator_grants())


# ------------------------------------------------------------------ clients
@dataclass
class Clients:
    api: kubernetes.client.ApiClient
    custom: kubernetes.client.CustomObjectsApi
    core: kubernetes.client.CoreV1Api
    batch: kubernetes.client.BatchV1Api

    @classmethod
    def connect(cls, url: str, agent: str = TEST_AGENT) -> Clients:
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        api = kubernetes.client.ApiClient(configuration)
        api.user_agent = agent
        return cls(api, kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api),
                   kubernetes.client.BatchV1Api(api))

    # genforge objects as plain dicts
    def create(self, namespace: str | None, kind: str, name: str, spec: dict, labels: dict | None = None) -> dict:
        plural = KINDS[kind].plural
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, "labels": labels or {}},
                "spec": spec}
        if namespace is None:
            return self.custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

    def get(self, namespace: str, plural: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, namespace: str, plural: str) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]

    def delete(self, namespace: str, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def jobs(self, namespace: str) -> list[dict]:
        jobs = self.batch.list_namespaced_job(namespace, label_selector=MANAGED)
        return self.api.sanitize_for_serialization(jobs)["items"]


# ------------------------------------------------------------------ request log
class RequestRecorder:
    """Keeps every request the emulator logs (its own log holds only the last 2,000).

    Polls in a thread; `records` is complete as long as fewer than 2,000 requests arrive
    between two polls, which `check_complete()` verifies from the ids (they are consecutive).
    """

    def __init__(self, cluster: EmulatedCluster, interval: float = 0.05):
        self.cluster, self.interval = cluster, interval
        self.start_id = cluster.mark()
        self._by_id: dict[int, RequestRecord] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        for record in self.cluster.requests(since=self.start_id):
            self._by_id[record.id] = record  # the same object: its status fills in when answered

    def stop(self) -> list[RequestRecord]:
        self._stop.set()
        self._thread.join()
        self.poll()
        return self.records

    @property
    def records(self) -> list[RequestRecord]:
        return [self._by_id[i] for i in sorted(self._by_id)]

    def check_complete(self) -> None:
        ids = sorted(self._by_id)
        missing = len(range(ids[0], ids[-1] + 1)) - len(ids) if ids else 0
        assert ids[0] == self.start_id if ids else True, "the recorder missed the first requests"
        assert missing == 0, f"the recorder missed {missing} requests"

    def matching(self, predicate: Callable[[RequestRecord], bool]) -> list[RequestRecord]:
        self.poll()
        return [r for r in self.records if predicate(r)]


# ------------------------------------------------------------------ the operator as a process
class OperatorProcess:
    """`python -m kopf run -A --standalone -m genforge_operator.main` against the emulated cluster.

    `kill()` is SIGKILL: no cleanup, no graceful shutdown — what a node loss or an OOM kill
    does. Every run's output goes to its own log file under `log_dir`.
    """

    def __init__(self, cluster: EmulatedCluster, log_dir: Path, env: dict[str, str] | None = None):
        self.cluster, self.log_dir = cluster, log_dir
        self.env = {**os.environ, "GENFORGE_API_SERVER": cluster.url or "", "GENFORGE_METRICS_PORT": "0",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.starts = self.kills = 0
        self._mark = 0

    def start(self, wait: bool = True, timeout: float = 30.0) -> OperatorProcess:
        assert self.process is None or self.process.poll() is not None, "the operator is already running"
        self._mark = self.cluster.mark()
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-A", "--standalone", "-m", "genforge_operator.main"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the operator watches every resource it handles (or fail with its log)."""
        def watching():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            seen = {(r.group, r.plural) for r in self.cluster.requests(since=self._mark)
                    if r.verb == "watch" and r.user_agent.startswith("kopf")}
            return WATCHED <= seen

        wait_for(watching, timeout=timeout, interval=0.02, message="the operator watches everything")

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.kills += 1

    def stop(self) -> int | None:
        """A graceful stop (SIGTERM), as a rolling update does; SIGKILL after 20 s."""
        if not self.running:
            return self.process.returncode if self.process else None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self, number: int | None = None) -> str:
        numbers = [number] if number else range(1, self.starts + 1)
        return "".join((self.log_dir / f"operator-{n}.log").read_text(errors="replace") for n in numbers
                       if (self.log_dir / f"operator-{n}.log").exists())

    def metrics_port(self) -> int:
        found = wait_for(lambda: re.findall(r"serving metrics on [\d.]+:(\d+)", self.log(self.starts)),
                         timeout=15, message="the operator's metrics port in its log")
        return int(found[-1])


# ------------------------------------------------------------------ time and money
def ts(offset: float = 0.0) -> str:
    """Now (plus `offset` seconds) at the kubelet's resolution (whole seconds), as it writes pod timestamps."""
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


now_ts = ts


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def seconds(start: str, end: str) -> int:
    return int((parse_ts(end) - parse_ts(start)).total_seconds())


# ------------------------------------------------------------------ the kubelet, played by the test
@dataclass
class PodLife:
    name: str
    started: str
    finished: str | None = None
    exit_code: int | None = None


@dataclass
class Kubelet:
    """Creates a Job's pods and writes their status the way the kubelet and Job controller do.

    Keeps every pod's life, so the truth of a run's time and cost is known exactly.
    """

    clients: Clients
    namespace: str
    lives: dict[str, list[PodLife]] = field(default_factory=dict)  # owner uid → its pods, oldest first

    def start_pod(self, job: dict, started: str | None = None) -> PodLife:
        meta = job["metadata"]
        owner = meta["labels"][LABEL_UID]
        lives = self.lives.setdefault(owner, [])
        life = PodLife(f"{meta['name']}-{len(lives)}", started or now_ts())
        template = job["spec"]["template"]
        self.clients.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": life.name, "labels": dict(template["metadata"]["labels"]),
                         "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True}]},
            "spec": {"containers": [{"name": "trainer", "image": "trainer"}]}})
        self._write(life, {"running": {"startedAt": life.started}}, "Running")
        lives.append(life)
        return life

    def finish_pod(self, life: PodLife, exit_code: int, message: dict | None = None,
                   finished: str | None = None) -> None:
        life.finished, life.exit_code = finished or now_ts(), exit_code
        state = {"terminated": {"startedAt": life.started, "finishedAt": life.finished, "exitCode": exit_code,
                                "message": json.dumps(message or {})}}
        self._write(life, state, "Succeeded" if exit_code == 0 else "Failed")

    def _write(self, life: PodLife, state: dict, phase: str) -> None:
        self.clients.core.patch_namespaced_pod_status(life.name, self.namespace, {"status": {
            "phase": phase, "podIP": "127.0.0.1", "startTime": life.started,
            "containerStatuses": [{"name": "trainer", "ready": phase == "Running", "restartCount": 0,
                                   "image": "trainer", "imageID": "", "state": state}]}})

    def finish_job(self, job: dict, condition: str, reason: str | None = None) -> None:
        status: dict[str, Any] = {"active": 0, "conditions": [{
            "type": condition, "status": "True", "lastTransitionTime": now_ts(),
            **({"reason": reason} if reason else {})}]}
        if condition == "Complete":
            status["completionTime"] = now_ts()
            status["succeeded"] = 1
        self.clients.batch.patch_namespaced_job_status(job["metadata"]["name"], self.namespace, {"status": status})

    def running_seconds(self, owner_uid: str) -> int:
        """The truth: the seconds this owner's pods ran (all of them finished)."""
        lives = self.lives.get(owner_uid, [])
        assert all(life.finished for life in lives), f"pods still running: {lives}"
        return sum(seconds(life.started, life.finished) for life in lives)  # type: ignore[arg-type]


def money(value: Any) -> Decimal:
    return Decimal(str(value))


def condition(status: dict, type_: str = "Ready") -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def chunks(items: Iterable[Any], size: int) -> list[list[Any]]:
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05) -> Any:
    return wait_for(predicate, timeout=timeout, interval=interval, message=message)


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 1)


# ------------------------------------------------------------------ a namespace ready to train
def make_world(clients: Clients, kubelet: Kubelet, namespace: str, *, budget_limit: str = "100000",
               model: str = "shapes", dataset: str = "shapes", budget: str | None = "team") -> dict:
    """A GenModel, a Ready Dataset (its Job finished by the kubelet) and a namespace Budget.

    Needs a running operator (it creates the Dataset's Job).
    """
    clients.create(namespace, "GenModel", model, {
        "purpose": "test", "architecture": "unet2d-ddpm", "resolution": 32,
        "config": {"blockOutChannels": [16, 32], "layersPerBlock": 1},
        "promotion": {"metric": "fid", "lowerIsBetter": True}})
    created = clients.create(namespace, "Dataset", dataset, {
        "source": {"uri": "synthetic://shapes?count=32&size=32"}, "preparation": {"resolution": 32}})
    uid = created["metadata"]["uid"]
    job = wait_until(lambda: next((j for j in clients.jobs(namespace)
                                   if j["metadata"]["labels"]["genforge.dev/owner-uid"] == uid), None),
                     timeout=30, message="the Dataset's preparation Job")
    pod = kubelet.start_pod(job)
    kubelet.finish_pod(pod, 0, {"outcome": "Succeeded", "items": {"total": 32, "kept": 32, "dropped": {}},
                                "bytes": 4096, "contentHash": "sha256:feed",
                                "uri": f"file:///data/datasets/{namespace}/{dataset}"})
    kubelet.finish_job(job, "Complete")
    wait_until(lambda: (clients.get(namespace, "datasets", dataset).get("status") or {}).get("phase") == "Ready",
               timeout=30, message="Dataset Ready")
    if budget:
        clients.create(namespace, "Budget", budget, {"limit": budget_limit, "period": "Monthly",
                                                    "onExhausted": "Stop"})
    return {"dataset_uid": uid}


def run_spec(pool: str, **overrides) -> dict:
    spec = {"modelRef": {"name": "shapes"}, "datasetRef": {"name": "shapes"},
            "training": {"steps": 20, "batchSize": 4}, "hardware": {"pool": pool},
            "budget": {"maxCost": "1000", "maxDuration": "1h"}, "checkpoint": {"everySteps": 10, "keep": 2}}
    spec.update(overrides)
    return spec


# ------------------------------------------------------------------ runs' stories, played by the kubelet
# Admission wants room for the estimate (about $31 here: the start-up allowance), so an
# enforced run's pod starts with most of its budget already spent: the limit is seconds away.
ENFORCED_MAX_COST = "36"
ENFORCED_HEAD_START = 33
HOLD = 8.0  # how long an injected slow response holds the operator's request (it is killed meanwhile)
# No samplesPerSecond: a measured throughput would change the estimates of the runs admitted later.
SUCCEEDED_WORDS = {"outcome": "Succeeded", "step": 20, "metrics": {"loss": 0.1, "fid": 50.0}}
DATA_ERROR_WORDS = {"outcome": "Failed", "reason": "DataError", "message": "cannot read file:///data/datasets/x: "
                    "unexpected end of archive"}


@dataclass
class Story:
    """One run's life as the kubelet plays it."""

    name: str
    scenario: str
    durations: list[float]  # how long each pod runs (retry: two pods)
    uid: str = ""
    stage: int = 0
    since: float = 0.0  # monotonic time the current stage began
    done: bool = False  # the kubelet has nothing more to do

    @property
    def ready_to_delete(self) -> bool:
        return self.scenario == "delete" and self.stage == 1 and time.monotonic() - self.since >= self.durations[0]


@dataclass
class Held:
    """A request held back by an injected delay."""

    records: list = field(default_factory=list)

    def capture(self, record) -> bool:
        self.records.append(record)
        return True

    @property
    def in_flight(self) -> bool:
        return bool(self.records) and self.records[0].status is None


class World:
    """The namespace, its runs, and the kubelet's view of their Jobs."""

    def __init__(self, clients: Clients, kubelet: Kubelet, namespace: str, cluster, recorder: RequestRecorder):
        self.clients, self.kubelet, self.namespace = clients, kubelet, namespace
        self.cluster, self.recorder = cluster, recorder
        self.job_uids: dict[str, set[str]] = defaultdict(set)  # owner uid → every Job uid ever seen
        self.jobs: dict[str, dict] = {}

    def observe_jobs(self) -> None:
        self.jobs = {}
        for job in self.clients.jobs(self.namespace):
            owner = job["metadata"]["labels"][LABEL_UID]
            self.job_uids[owner].add(job["metadata"]["uid"])
            self.jobs[owner] = job

    def hold(self, **criteria) -> Held:
        """Hold back the operator's next matching request (answered HOLD s later, if still wanted)."""
        held = Held()
        self.cluster.inject(status=None, delay=HOLD, times=1, namespace=self.namespace, match=held.capture,
                            **criteria)
        return held

    def step(self, story: Story) -> None:
        """Play the kubelet for one run: start, end and retry its pods as its story says."""
        job = self.jobs.get(story.uid)
        if story.done or job is None:
            return
        now = time.monotonic()
        lives = self.kubelet.lives.get(story.uid, [])
        if story.stage == 0:
            head_start = ENFORCED_HEAD_START if story.scenario == "enforce" else 0
            self.kubelet.start_pod(job, started=ts(-head_start))
            story.stage, story.since = 1, now
        elif story.scenario == "succeed" and now - story.since >= story.durations[0]:
            self.kubelet.finish_pod(lives[-1], 0, {**SUCCEEDED_WORDS, "artifact": f"file:///data/{story.name}"})
            self.kubelet.finish_job(job, "Complete")
            story.done = True
        elif story.scenario == "retry":
            if story.stage == 1 and now - story.since >= story.durations[0]:
                self.kubelet.finish_pod(lives[-1], 1, {"outcome": "Failed", "reason": "Error", "message": "boom"})
                story.stage, story.since = 2, now
            elif story.stage == 2 and now - story.since >= 1.2:  # the Job controller's backoff
                self.kubelet.start_pod(job)
                story.stage, story.since = 3, now
            elif story.stage == 3 and now - story.since >= story.durations[1]:
                self.kubelet.finish_pod(lives[-1], 0, {**SUCCEEDED_WORDS, "artifact": f"file:///data/{story.name}"})
                self.kubelet.finish_job(job, "Complete")
                story.done = True
        elif story.scenario == "fail" and now - story.since >= story.durations[0]:
            self.kubelet.finish_pod(lives[-1], 3, DATA_ERROR_WORDS)
            self.kubelet.finish_job(job, "Failed", reason="PodFailurePolicy")
            story.done = True
        elif story.scenario == "enforce" and job["spec"].get("suspend"):
            # The Job controller deletes a suspended Job's pods: the trainer checkpoints and stops.
            self.kubelet.finish_pod(lives[-1], 143, {"outcome": "Stopped", "reason": "Stopped", "step": 7})
            self.clients.batch.patch_namespaced_job_status(job["metadata"]["name"], self.namespace,
                                                           {"status": {"active": 0}})
            story.done = True


