"""The local executor's overhead: how long a Job takes beyond its own process.

For each of N Jobs whose command is a trivial Python script (`python -c pass`), against
the emulated API server with the local executor (no operator), it records:

* **create → pod object**: the Job controller's part (watch event → Pod created);
* **create → pod Running**: + the kubelet's part (volumes, env, process spawned, status);
* **create → Job Complete**: the whole round trip a client sees;
* **process alone**: the same `python -c pass` run by `subprocess.run` here, interleaved
  with the Jobs, for scale;

and the finishing part on its own: pod Succeeded → Job Complete.
Jobs run one after another (sequential) and then M at once (a burst).

Usage::

    python benchmarks/bench_executor.py [--jobs 30] [--burst 10]

Prints a Markdown table for docs/benchmarks.md. No torch, no operator.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import kubernetes

from genforge_local.emulated_cluster import EmulatedCluster
from genforge_local.executor import LocalExecutor
from genforge_operator.bundled import crd_dir


def job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "trainer", "image": "local", "command": [sys.executable, "-c", "pass"]}]}}}}


class Timeline:
    """When each Job's pod appeared, started running, and the Job completed (from raw watch streams)."""

    def __init__(self, url: str):
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        self.client = kubernetes.client.ApiClient(configuration)
        self.host, self.port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        self.created: dict[str, float] = {}
        self.pod_seen: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.pod_done: dict[str, float] = {}
        self.complete: dict[str, float] = {}
        self.lock = threading.Condition()
        for path, handle in (("/api/v1/namespaces/default/pods", self._pod),
                             ("/apis/batch/v1/namespaces/default/jobs", self._job)):
            threading.Thread(target=self._watch, args=(path, handle), daemon=True).start()

    def _watch(self, path: str, handle) -> None:
        connection = http.client.HTTPConnection(self.host, self.port)
        connection.request("GET", f"{path}?watch=true")
        response = connection.getresponse()
        while line := response.readline():  # one event per line, read as soon as it is written
            now = time.monotonic()
            with self.lock:
                handle(json.loads(line)["object"], now)
                self.lock.notify_all()

    def _pod(self, pod: dict, now: float) -> None:
        job_name = (pod["metadata"].get("labels") or {}).get("job-name")
        self.pod_seen.setdefault(job_name, now)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            self.running.setdefault(job_name, now)
        if phase == "Succeeded":
            self.pod_done.setdefault(job_name, now)

    def _job(self, obj: dict, now: float) -> None:
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions):
            self.complete.setdefault(obj["metadata"]["name"], now)

    def create(self, name: str) -> None:
        batch = kubernetes.client.BatchV1Api(self.client)
        self.created[name] = time.monotonic()
        batch.create_namespaced_job("default", job(name))

    def wait(self, names: list[str], timeout: float = 120) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: all(n in self.complete for n in names), timeout):
                raise TimeoutError(f"Jobs not complete: {[n for n in names if n not in self.complete]}")


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="sequential Jobs")
    parser.add_argument("--burst", type=int, default=10, help="Jobs created at once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as data, EmulatedCluster(crd_dir=crd_dir()) as cluster, \
            LocalExecutor(cluster.url, data, backoff_base=0.1):
        timeline = Timeline(cluster.url)
        time.sleep(0.5)  # the watches are open
        sequential = [f"seq-{i}" for i in range(args.jobs)]
        alone = []
        for name in sequential:  # interleaved with the bare process, so both see the same machine
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            alone.append(time.monotonic() - started)
            timeline.create(name)
            timeline.wait([name])
        burst = [f"burst-{i}" for i in range(args.burst)]
        burst_started = time.monotonic()
        for name in burst:
            timeline.create(name)
        timeline.wait(burst)
        burst_wall = time.monotonic() - burst_started

    def row(label: str, names: list[str], until: dict[str, float]) -> str:
        p50, p95, worst = quantiles([until[n] - timeline.created[n] for n in names])
        return f"| {label} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms | {worst * 1000:.0f} ms |"

    def between(label: str, names: list[str], since: dict[str, float], until: dict[str, float]) -> str:
        p50, p95, worst = quantiles([until[n] - since[n] for n in names])
        return f"| {label} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms | {worst * 1000:.0f} ms |"

    p50, p95, worst = quantiles(alone)
    print(f"Local executor overhead, {args.jobs} sequential Jobs (`python -c pass`), "
          f"{platform.machine()} / Python {platform.python_version()}:\n")
    print("| | p50 | p95 | max |\n|---|---|---|---|")
    print(row("create → pod object (Job controller)", sequential, timeline.pod_seen))
    print(row("create → pod Running (+ kubelet: volumes, env, spawn)", sequential, timeline.running))
    print(between("pod Succeeded → Job Complete", sequential, timeline.pod_done, timeline.complete))
    print(row("create → Job Complete (total)", sequential, timeline.complete))
    print(f"| the same process alone (`subprocess.run`) | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms | "
          f"{worst * 1000:.0f} ms |")
    print(f"\nBurst: {args.burst} Jobs created at once, all Complete after {burst_wall:.2f} s "
          f"({burst_wall / args.burst * 1000:.0f} ms per Job).")
    print(row("burst: create → Job Complete", burst, timeline.complete))
    return 0


if __name__ == "__main__":
    sys.exit(main())
