"""Emulated API server: the cost of one write of a genforge custom resource.

N TrainingRuns created, then each one's status merge-patched (as the operator writes it)
and its (mutable) budget merge-patched, one request at a time over HTTP from one client, so the
figures are the server's time per write plus one loopback round trip.

    python benchmarks/bench_emulator_writes.py --runs 500

Prints: requests per second and per-request latency percentiles for each kind of write.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

GROUP, VERSION, API = "genforge.dev", "v1alpha1", "genforge.dev/v1alpha1"
NS = "bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def training_run(name: str) -> dict:
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"modelRef": {"name": "m"}, "datasetRef": {"name": "d"},
                     "training": {"steps": 100, "batchSize": 4}, "hardware": {"pool": "cpu"},
                     "budget": {"maxCost": "10"}}}


def status(step: int) -> dict:
    return {"status": {
        "phase": "Running", "pool": "cpu", "observedGeneration": 1,
        "progress": {"step": step, "totalSteps": 100, "percent": step, "loss": 0.25},
        "cost": {"accrued": "0.0010", "estimated": "0.0100", "limit": "10"},
        "conditions": [{"type": "Admitted", "status": "True", "reason": "WithinBudget", "message": "fits",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()

    from genforge_local import EmulatedCluster
    from genforge_operator.bundled import crd_dir

    with EmulatedCluster(crd_dir=crd_dir()) as cluster:
        url = urllib.parse.urlsplit(cluster.url)
        conn = http.client.HTTPConnection(url.hostname, url.port)

        def request(method: str, path: str, body: object, content_type: str = "application/json") -> float:
            started = time.perf_counter()
            conn.request(method, path, json.dumps(body), {"Content-Type": content_type})
            response = conn.getresponse()
            payload = response.read()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
            return time.perf_counter() - started

        request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/trainingruns"
        merge = "application/merge-patch+json"
        timings: dict[str, list[float]] = {"create": [], "status patch": [], "spec patch": []}
        started = time.perf_counter()
        for i in range(args.runs):
            timings["create"].append(request("POST", base, training_run(f"run-{i:05d}")))
        for i in range(args.runs):
            timings["status patch"].append(request("PATCH", f"{base}/run-{i:05d}/status", status(i % 100), merge))
        for i in range(args.runs):
            timings["spec patch"].append(request("PATCH", f"{base}/run-{i:05d}",
                                                 {"spec": {"budget": {"maxCost": "11"}}}, merge))
        total = time.perf_counter() - started
    result = {
        "runs": args.runs,
        "writesPerSecond": round(3 * args.runs / total, 1),
        "milliseconds": {kind: {"p50": round(1000 * percentile(v, 0.5), 2), "p90": round(1000 * percentile(v, 0.9), 2),
                                "p99": round(1000 * percentile(v, 0.99), 2)} for kind, v in timings.items()},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
