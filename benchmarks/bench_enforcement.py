"""Budget enforcement: stop latency and overspend across many enforcement events.

The real kopf operator runs against the emulated API server (as in the integration
tests). N runs on a pool priced at $1 per second each get a running pod (this program
plays the kubelet) and a maxCost a few seconds away. For every run it records when the
limit was truly reached (pod start + maxCost / rate) and when the operator suspended the
Job (the graceful stop: in a cluster the trainer then checkpoints on SIGTERM), and the
cost the operator wrote into status at that moment.

    python benchmarks/bench_enforcement.py --runs 20 [--interval 5]

Prints stop-latency percentiles and overspend (in dollars and as a share of maxCost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

GROUP, VERSION, API = "genforge.dev", "v1alpha1", "genforge.dev/v1alpha1"
RATE = 1.0  # dollars per second: pricePerHour 3600 on a one-node CPU pool
PRESPENT = 40


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="the operator's enforcement interval (s)")
    args = parser.parse_args()
    os.environ["GENFORGE_ENFORCEMENT_INTERVAL"] = str(args.interval)

    from harness import OperatorRunner
    from kubernetes import client

    from genforge_local import EmulatedCluster
    from genforge_operator.bundled import crd_dir

    cluster = EmulatedCluster(crd_dir=crd_dir())
    cluster.start()
    configuration = client.Configuration()
    configuration.host = cluster.url
    api = client.ApiClient(configuration)
    custom, core, batch = client.CustomObjectsApi(api), client.CoreV1Api(api), client.BatchV1Api(api)
    runner = OperatorRunner(cluster).start()
    ns = "bench"
    try:
        core.create_namespace({"metadata": {"name": ns}})
        custom.create_cluster_custom_object(GROUP, VERSION, "acceleratorpools", {
            "apiVersion": API, "kind": "AcceleratorPool", "metadata": {"name": "dear"},
            "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "3600", "relativeThroughput": 1000.0}})
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "genmodels", {
            "apiVersion": API, "kind": "GenModel", "metadata": {"name": "m"},
            "spec": {"architecture": "unet2d-ddpm", "resolution": 32, "config": {"blockOutChannels": [16, 32]}}})
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "datasets", {
            "apiVersion": API, "kind": "Dataset", "metadata": {"name": "d"},
            "spec": {"source": {"uri": "synthetic://shapes?count=8&size=32"}}})
        ds_job = _wait(lambda: _job(batch, ns, "Dataset"))
        _pod(core, ns, ds_job, datetime.now(UTC), finished=True,
             message={"items": {"total": 8, "kept": 8, "dropped": {}}, "uri": "file:///data/d"})
        batch.patch_namespaced_job_status(ds_job.metadata.name, ns, {"status": {"conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": ts(datetime.now(UTC))}]}})
        _wait(lambda: (custom.get_namespaced_custom_object(GROUP, VERSION, ns, "datasets", "d").get("status") or {})
              .get("phase") == "Ready")

        limits: dict[str, float] = {}
        for i in range(args.runs):
            name = f"run-{i:03d}"
            # The estimate bills ~30 s of start-up, so maxCost must exceed that to be admitted;
            # pods "started" PRESPENT seconds ago put every limit 3..8 s in the future.
            max_cost = PRESPENT + 3 + (i % 6)
            limits[name] = max_cost
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "trainingruns", {
                "apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name},
                "spec": {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"},
                         "training": {"steps": 10, "batchSize": 1}, "hardware": {"pool": "dear"},
                         "budget": {"maxCost": str(max_cost)}}})
        starts: dict[str, datetime] = {}
        for name in limits:
            job = _wait(lambda n=name: next((j for j in _jobs(batch, ns) if j.metadata.labels.get(
                "genforge.dev/name") == n), None))
            start = datetime.fromtimestamp(int(time.time()) - PRESPENT, UTC)
            _pod(core, ns, job, start)
            starts[name] = start

        stopped: dict[str, tuple[float, float]] = {}  # name → (wall time of suspend seen, accrued in status)
        deadline = time.time() + 60 + 2 * args.interval
        while len(stopped) < len(limits) and time.time() < deadline:
            for job in _jobs(batch, ns):
                name = job.metadata.labels.get("genforge.dev/name")
                if name in limits and name not in stopped and job.spec.suspend:
                    run = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "trainingruns", name)
                    accrued = float(((run.get("status") or {}).get("cost") or {}).get("accrued", "nan"))
                    stopped[name] = (time.time(), accrued)
            time.sleep(0.05)
    finally:
        runner.stop(reraise=False)
        cluster.stop()

    latencies, overspend, overspend_share, recorded = [], [], [], []
    for name, (seen, accrued) in stopped.items():
        limit_at = starts[name].timestamp() + limits[name] / RATE
        latency = seen - limit_at
        latencies.append(latency)
        overspend.append(max(0.0, latency) * RATE)
        overspend_share.append(max(0.0, latency) * RATE / limits[name])
        recorded.append(accrued - limits[name])
    result = {
        "runs": args.runs, "stopped": len(stopped), "intervalSeconds": args.interval,
        "stopLatencySeconds": {"p50": round(percentile(latencies, 0.5), 3), "p95": round(percentile(latencies, 0.95), 3),
                               "max": round(max(latencies), 3), "mean": round(statistics.mean(latencies), 3)},
        "overspendDollars": {"p50": round(percentile(overspend, 0.5), 3), "max": round(max(overspend), 3)},
        "overspendShareOfMaxCost": {"p50": round(percentile(overspend_share, 0.5), 3),
                                    "max": round(max(overspend_share), 3)},
        "accruedMinusMaxCostInStatus": {"min": round(min(recorded), 3), "max": round(max(recorded), 3)},
    }
    print(json.dumps(result, indent=2))
    return 0 if len(stopped) == args.runs else 1


def _jobs(batch, ns):
    return batch.list_namespaced_job(ns, label_selector="app.kubernetes.io/managed-by=genforge").items


def _job(batch, ns, kind):
    return next((j for j in _jobs(batch, ns) if j.metadata.labels.get("genforge.dev/kind") == kind), None)


def _wait(predicate, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("benchmark setup timed out")


def _pod(core, ns, job, start: datetime, finished: bool = False, message: dict | None = None) -> None:
    name = f"{job.metadata.name}-{int(start.timestamp()) % 100000}"
    core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "labels": dict(job.spec.template.metadata.labels)},
                                    "spec": {"containers": [{"name": "trainer", "image": "t"}]}})
    state = ({"terminated": {"startedAt": ts(start), "finishedAt": ts(start), "exitCode": 0,
                             "message": json.dumps(message or {})}} if finished
             else {"running": {"startedAt": ts(start)}})
    core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Succeeded" if finished else "Running", "podIP": "127.0.0.1", "startTime": ts(start),
        "containerStatuses": [{"name": "trainer", "ready": not finished, "restartCount": 0, "image": "t",
                               "imageID": "", "state": state}]}})


if __name__ == "__main__":
    sys.exit(main())
