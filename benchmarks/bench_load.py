"""Load: N TrainingRuns created at once → time until every one has its Job.

The operator runs as its own process (`kopf run -A --standalone -m genforge_operator.main`)
against the emulated API server, so its resident memory can be sampled. Runs are created
from a thread pool as fast as the API accepts them; a watch on Jobs records when each
run's Job appeared.

    python benchmarks/bench_load.py --runs 1000

Prints: time until all Jobs exist, create→Job latency percentiles, the operator's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

GROUP, VERSION, API = "genforge.dev", "v1alpha1", "genforge.dev/v1alpha1"
NS = "load"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    from kubernetes import client, watch

    from genforge_local import EmulatedCluster
    from genforge_operator.bundled import crd_dir

    cluster = EmulatedCluster(crd_dir=crd_dir())
    cluster.start()
    configuration = client.Configuration()
    configuration.host = cluster.url
    api = client.ApiClient(configuration)
    custom, core, batch = client.CustomObjectsApi(api), client.CoreV1Api(api), client.BatchV1Api(api)
    env = {**os.environ, "GENFORGE_API_SERVER": cluster.url, "GENFORGE_METRICS_PORT": "0",
           "PYTHONUNBUFFERED": "1"}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / "genforge-bench-load-operator.log", "w")
    operator = subprocess.Popen([sys.executable, "-m", "kopf", "run", "-A", "--standalone", "--quiet",
                                 "-m", "genforge_operator.main"], env=env, stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(operator.pid)
    peak_rss = 0
    stop_sampling = threading.Event()

    def sample():
        nonlocal peak_rss
        while not stop_sampling.is_set():
            try:
                peak_rss = max(peak_rss, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    try:
        core.create_namespace({"metadata": {"name": NS}})
        custom.create_cluster_custom_object(GROUP, VERSION, "acceleratorpools", {
            "apiVersion": API, "kind": "AcceleratorPool", "metadata": {"name": "cpu"},
            "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "0.10"}})
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "genmodels", {
            "apiVersion": API, "kind": "GenModel", "metadata": {"name": "m"},
            "spec": {"architecture": "unet2d-ddpm", "resolution": 32, "config": {"blockOutChannels": [16, 32]}}})
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "datasets", {
            "apiVersion": API, "kind": "Dataset", "metadata": {"name": "d"},
            "spec": {"source": {"uri": "synthetic://shapes?count=8&size=32"}}})
        ds_job = _wait(lambda: next(iter(batch.list_namespaced_job(NS).items), None), 60)
        _finish_dataset(core, batch, ds_job)
        _wait(lambda: (custom.get_namespaced_custom_object(GROUP, VERSION, NS, "datasets", "d").get("status") or {})
              .get("phase") == "Ready", 60)
        time.sleep(1.0)
        rss_before = proc.memory_info().rss

        seen: dict[str, float] = {}
        created: dict[str, float] = {}
        done = threading.Event()

        def watch_jobs():
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, NS, label_selector="genforge.dev/kind=TrainingRun",
                                  timeout_seconds=int(args.timeout)):
                name = event["object"].metadata.labels.get("genforge.dev/name")
                if event["type"] == "ADDED" and name not in seen:
                    seen[name] = time.monotonic()
                    if len(seen) >= args.runs:
                        done.set()
                        w.stop()

        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        time.sleep(0.5)

        def create(i: int):
            name = f"run-{i:04d}"
            created[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingruns", {
                "apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name},
                "spec": {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"},
                         "training": {"steps": 10, "batchSize": 1}, "hardware": {"pool": "cpu"},
                         "budget": {"maxCost": "10"}}})

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.runs)))
        created_all = time.monotonic() - started
        done.wait(args.timeout)
        total = time.monotonic() - started
        latencies = [seen[n] - created[n] for n in seen if n in created]
        jobs = len(batch.list_namespaced_job(NS, label_selector="genforge.dev/kind=TrainingRun").items)
    finally:
        stop_sampling.set()
        operator.terminate()
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
        cluster.stop()
    result = {
        "runs": args.runs,
        "jobsCreated": jobs,
        "secondsToCreateAllRuns": round(created_all, 2),
        "secondsUntilAllJobs": round(total, 2) if len(seen) >= args.runs else None,
        "createToJobSeconds": {"p50": round(percentile(latencies, 0.5), 3), "p90": round(percentile(latencies, 0.9), 3),
                               "p99": round(percentile(latencies, 0.99), 3), "max": round(max(latencies), 3)}
        if latencies else None,
        "operatorRssMiB": {"beforeRuns": round(rss_before / 2**20, 1), "peak": round(peak_rss / 2**20, 1)},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0 if jobs >= args.runs else 1


def _wait(predicate, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("setup timed out")


def _finish_dataset(core, batch, job) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    name = f"{job.metadata.name}-done"
    core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "labels": dict(job.spec.template.metadata.labels)},
                                    "spec": {"containers": [{"name": "trainer", "image": "t"}]}})
    message = json.dumps({"items": {"total": 8, "kept": 8, "dropped": {}}, "uri": "file:///data/d"})
    core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "ready": False, "restartCount": 0, "image": "t", "imageID": "",
         "state": {"terminated": {"startedAt": stamp, "finishedAt": stamp, "exitCode": 0, "message": message}}}]}})
    batch.patch_namespaced_job_status(job.metadata.name, NS, {"status": {"conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": stamp}]}})


if __name__ == "__main__":
    sys.exit(main())
