"""Load: N TrainingRuns created at once → every run's Job, then every run finished.

    python benchmarks/bench_load.py --runs 1000                          # real control plane
    python benchmarks/bench_load.py --runs 1000 --control-plane emulated

`real` (the default): etcd, kube-apiserver and kube-controller-manager built from their Go
modules (`scripts/kube-binaries`), the operator as its own process authenticated as the Helm
chart's ServiceAccount (its RBAC applied), the local kubelet running the pods — exactly the
real-Kubernetes test tier's `LocalControlPlane(kube=True)`. `emulated`: the embedded API
server and local executor of `genforge local`. In both, a pod's `genforge-trainer train` is
a stand-in that exits 0 at once (the no-op command), while the one Dataset is prepared by
the real trainer; everything else — the operator, the Job controller, the kubelet's status
writes — is the product.

Runs are created from 8 client threads as fast as the API server accepts them. Watches
record when each run's Job appears and when each run reaches a final phase.

Prints one JSON document: time to create the runs, until every Job exists and until every
run is final; create→Job latency percentiles; duplicates (runs with more than one Job, Jobs
created twice, Jobs with more than one pod); the operator's RSS; CPU seconds per process
over the measured window (where the time goes on these cores); and, on the real control
plane, the operator's API requests from the audit log (count and latency per verb and
resource, throttled answers), the API server's watch events sent per kind, and the
operator's reconcile-duration histogram.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import signal
import stat
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

GROUP, VERSION, API = "genforge.dev", "v1alpha1", "genforge.dev/v1alpha1"
NS = "load"
FINAL_PHASES = {"Succeeded", "Failed", "BudgetExceeded"}
RUN_LABEL = "genforge.dev/name"

#: The no-op trainer: `prepare` runs the real one (the Dataset must be prepared for runs to
#: start); `train` writes the smallest result a trainer reports (its last step; without a
#: result the operator waits 30 s for one) and exits 0 at once.
STAND_IN = """#!/bin/sh
if [ "$1" = prepare ]; then exec "{real}" "$@"; fi
printf '{{"step": 10}}' > "${{GENFORGE_TERMINATION_LOG:-/dev/termination-log}}"
exit 0
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": round(percentile(values, 0.5), 3), "p90": round(percentile(values, 0.9), 3),
            "p99": round(percentile(values, 0.99), 3), "max": round(max(values), 3)}


def stand_in_bin(folder: Path) -> Path:
    real = Path(sys.executable).parent / "genforge-trainer"
    if not real.exists():
        raise SystemExit(f"{real} is missing: install genforge (pip install -e '.[all]')")
    script = folder / "genforge-trainer"
    script.write_text(STAND_IN.format(real=real))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--control-plane", choices=("real", "emulated"), default="real")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every run to finish")
    parser.add_argument("--controller-manager-qps", type=int, default=None,
                        help="kube-controller-manager's --kube-api-qps (burst 1.5×); default: its own (20)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the operator process (repeatable)")
    parser.add_argument("--workers", type=int, default=None,
                        help="the operator's GENFORGE_WORKERS (kopf's thread pool; default: the operator's)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control plane on the way out

    from kubernetes import client

    from genforge_local.control_plane import LocalControlPlane

    real = args.control_plane == "real"
    if real:
        from genforge_local import kube_binaries

        if kube_binaries.find() is None:
            raise SystemExit("the Kubernetes binaries are not built: run scripts/kube-binaries")
    work = Path(tempfile.mkdtemp(prefix="genforge-bench-load-"))
    (work / "bin").mkdir()
    bin_dir = stand_in_bin(work / "bin")
    operator_env = {"GENFORGE_WORKERS": str(args.workers)} if args.workers else {}
    operator_env.update(item.split("=", 1) for item in args.operator_env)
    kube_options = {}
    if real and args.controller_manager_qps:
        qps = args.controller_manager_qps
        kube_options["extra_controller_manager_flags"] = [f"--kube-api-qps={qps}",
                                                          f"--kube-api-burst={int(qps * 1.5)}"]
    plane = LocalControlPlane(work / "data", kube=real, operator_env=operator_env,
                              executor_options={"bin_dir": bin_dir}, kube_options=kube_options)
    plane.start(timeout=180)
    try:
        api = plane.real.api_client() if real else _emulated_client(plane.url)
        custom, core, batch = client.CustomObjectsApi(api), client.CoreV1Api(api), client.BatchV1Api(api)
        _setup(plane, custom, core, real)
        operator = psutil.Process(plane.operator_process.pid)
        components = {"operator": operator, "benchmark (clients, kubelet/executor thread"
                      + ("" if real else ", emulated API server") + ")": psutil.Process()}
        if real:
            components.update({c.name: psutil.Process(c.process.pid) for c in plane.real.components})
        rss_before = operator.memory_info().rss
        peak_rss = rss_before
        stop_sampling = threading.Event()

        def sample() -> None:
            nonlocal peak_rss
            while not stop_sampling.is_set():
                try:
                    peak_rss = max(peak_rss, operator.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()

        job_uids: dict[str, set[str]] = collections.defaultdict(set)  # run -> uids of its Jobs
        job_seen: dict[str, float] = {}
        final_at: dict[str, float] = {}
        final_phase: dict[str, str] = {}
        created: dict[str, float] = {}
        all_jobs, all_final, stopping = threading.Event(), threading.Event(), threading.Event()

        def on_job(obj: dict) -> None:
            meta = obj.get("metadata") or {}
            name = (meta.get("labels") or {}).get(RUN_LABEL)
            if name:
                job_uids[name].add(meta.get("uid"))
                job_seen.setdefault(name, time.monotonic())
                if len(job_seen) >= args.runs:
                    all_jobs.set()

        def on_run(obj: dict) -> None:
            name = obj["metadata"]["name"]
            phase = (obj.get("status") or {}).get("phase")
            if phase in FINAL_PHASES and name not in final_at:
                final_at[name] = time.monotonic()
                final_phase[name] = phase
                if len(final_at) >= args.runs:
                    all_final.set()

        def watch_jobs() -> None:
            _follow(lambda **kw: batch.list_namespaced_job(NS, label_selector="genforge.dev/kind=TrainingRun", **kw),
                    on_job, all_jobs, stopping)

        def watch_runs() -> None:
            _follow(lambda **kw: custom.list_namespaced_custom_object(GROUP, VERSION, NS, "trainingruns", **kw),
                    on_run, all_final, stopping)

        watchers = [threading.Thread(target=f, daemon=True) for f in (watch_jobs, watch_runs)]
        for t in watchers:
            t.start()
        time.sleep(1.0)
        cpu_before = _cpu(components)
        audit_mark = plane.real.audit_mark() if real else 0
        api_metrics_before = _api_server_metrics(plane) if real else {}

        def create(i: int) -> None:
            name = f"run-{i:05d}"
            created[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingruns", {
                "apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name},
                "spec": {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"},
                         "training": {"steps": 10, "batchSize": 1}, "hardware": {"pool": "cpu"},
                         "budget": {"maxCost": "10"}}})

        load_before = os.getloadavg()[0]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.runs)))
        created_all = time.monotonic() - started
        all_jobs.wait(args.timeout)
        jobs_at = time.monotonic() - started
        all_final.wait(max(1.0, args.timeout - jobs_at))
        final_all = time.monotonic() - started
        cpu_after = _cpu(components)
        stop_sampling.set()
        stopping.set()
        time.sleep(2.0)  # let late duplicates, if any, show up before counting

        jobs = _list_items(batch.list_namespaced_job(NS, label_selector="genforge.dev/kind=TrainingRun",
                                                     _preload_content=False))
        jobs_per_run = collections.Counter((j["metadata"].get("labels") or {}).get(RUN_LABEL) for j in jobs)
        pods = _list_items(core.list_namespaced_pod(NS, _preload_content=False))
        pods_per_job = collections.Counter((p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
                                           for p in pods)
        trainer_job_names = {j["metadata"]["name"] for j in jobs}
        result = {
            "controlPlane": args.control_plane,
            "controllerManagerQps": args.controller_manager_qps or (20 if real else None),
            "operatorEnv": operator_env,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "loadAverage1m": {"atStart": round(load_before, 2), "atEnd": round(os.getloadavg()[0], 2)},
            "secondsToCreateAllRuns": round(created_all, 2),
            "secondsUntilAllJobs": round(jobs_at, 2) if len(job_seen) >= args.runs else None,
            "secondsUntilAllRunsFinal": round(final_all, 2) if len(final_at) >= args.runs else None,
            "jobsSeen": len(job_seen),
            "runsFinal": len(final_at),
            "finalPhases": dict(collections.Counter(final_phase.values())),
            "createToJobSeconds": spread([job_seen[n] - created[n] for n in job_seen if n in created]),
            "createToFinalSeconds": spread([final_at[n] - created[n] for n in final_at if n in created]),
            "duplicates": {
                "runsWithMoreThanOneJob": sorted(n for n, c in jobs_per_run.items() if c > 1),
                "runsWhoseJobWasCreatedAgain": sorted(n for n, uids in job_uids.items() if len(uids) > 1),
                "jobsWithMoreThanOnePod": sorted(n for n in trainer_job_names if pods_per_job[n] > 1),
            },
            "operatorRssMiB": {"beforeRuns": round(rss_before / 2**20, 1), "peak": round(peak_rss / 2**20, 1)},
            "cpuSeconds": {name: round(cpu_after[name] - cpu_before[name], 1) for name in components},
            "operatorReconciles": _reconcile_histogram(plane.metrics_url),
        }
        if real:
            result["operatorApiRequests"] = _audit_summary(plane.real.audit_events(audit_mark), plane)
            after = _api_server_metrics(plane)
            result["apiServerWatchEventsSent"] = {
                kind: int(after.get(kind, 0) - api_metrics_before.get(kind, 0)) for kind in sorted(after)
                if after.get(kind, 0) - api_metrics_before.get(kind, 0) > 0}
    finally:
        plane.stop()
    print(json.dumps(result, indent=2))
    complete = (result["secondsUntilAllJobs"] is not None and result["secondsUntilAllRunsFinal"] is not None
                and not any(result["duplicates"].values()))
    return 0 if complete else 1


def _follow(list_objects, on_object, done: threading.Event, stopping: threading.Event) -> None:
    """List, then watch from the list's resourceVersion; again whenever the stream breaks (an
    API server under load ends watches), until `done` or `stopping`."""
    from kubernetes import watch

    while not (done.is_set() or stopping.is_set()):
        try:
            listing = json.loads(list_objects(_preload_content=False).data)
            for item in listing["items"]:
                on_object(item)
            w = watch.Watch()
            for event in w.stream(list_objects, resource_version=listing["metadata"]["resourceVersion"],
                                  timeout_seconds=120, deserialize=False):
                if event.get("type") in ("ADDED", "MODIFIED"):
                    on_object(event.get("object") or {})  # deserialize=False: the JSON as sent
                if done.is_set() or stopping.is_set():
                    w.stop()
        except Exception:  # the stream broke, or the control plane is stopping
            time.sleep(0.5)


def _list_items(response) -> list[dict]:
    return json.loads(response.data)["items"]


def _emulated_client(url: str):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)


def _setup(plane, custom, core, real: bool) -> None:
    """A namespace, the `cpu` pool, a small GenModel and a prepared Dataset (the real trainer)."""
    if real:
        plane.real.kubectl("create", "namespace", NS)
        plane.real.wait_namespace_ready(NS)
    else:
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
    deadline = time.monotonic() + 300
    while (custom.get_namespaced_custom_object(GROUP, VERSION, NS, "datasets", "d").get("status") or {}
           ).get("phase") != "Ready":
        if time.monotonic() > deadline:
            raise SystemExit("the Dataset was not Ready within 300 s; see " + str(plane.logs_dir))
        time.sleep(0.2)
    time.sleep(1.0)


def _cpu(components: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in components.items():
        try:
            times = proc.cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def _reconcile_histogram(metrics_url: str) -> dict[str, dict[str, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "genforge_reconcile_duration_seconds":
            continue
        for s in family.samples:
            kind = s.labels.get("kind", "")
            if s.name.endswith("_count"):
                out.setdefault(kind, {})["count"] = s.value
            elif s.name.endswith("_sum"):
                out.setdefault(kind, {})["seconds"] = round(s.value, 2)
    for entry in out.values():
        if entry.get("count"):
            entry["meanMs"] = round(1000 * entry["seconds"] / entry["count"], 1)
    return out


def _parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _audit_summary(events: list[dict], plane) -> dict:
    """The operator's requests in the window: count, latency (received → response) per verb and resource."""
    account = "system:serviceaccount:{}:{}".format(*plane.operator_account)
    by_key: dict[str, list[float]] = collections.defaultdict(list)
    codes: collections.Counter[int] = collections.Counter()
    for e in events:
        if (e.get("user") or {}).get("username") != account or e.get("stage") != "ResponseComplete":
            continue
        ref = e.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = f"{e.get('verb')} {resource}"
        code = (e.get("responseStatus") or {}).get("code", 0)
        codes[code] += 1
        if e.get("verb") == "watch":
            by_key[key].append(0.0)
            continue
        by_key[key].append(_parse_time(e["stageTimestamp"]) - _parse_time(e["requestReceivedTimestamp"]))
    return {
        "byVerbAndResource": {key: {"count": len(v), **({"latencySeconds": spread(v)}
                                                        if not key.startswith("watch") else {})}
                              for key, v in sorted(by_key.items(), key=lambda kv: -len(kv[1]))},
        "responseCodes": {str(k): v for k, v in sorted(codes.items())},
    }


_WATCH_EVENTS = re.compile(r'^apiserver_watch_events_total\{([^}]*)\}\s+([0-9.e+]+)', re.M)


def _api_server_metrics(plane) -> dict[str, float]:
    """`apiserver_watch_events_total` by kind (events sent to every watcher)."""
    status, body = plane.real.request("GET", "/metrics")
    if status != 200 or not isinstance(body, str):
        return {}
    out: dict[str, float] = collections.defaultdict(float)
    for labels, value in _WATCH_EVENTS.findall(body):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[fields.get("kind") or fields.get("resource", "?")] += float(value)
    return dict(out)


if __name__ == "__main__":
    sys.exit(main())
