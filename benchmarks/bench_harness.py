"""The emulated-cluster harness: API server latency, and how fast the real operator reacts.

    python benchmarks/bench_harness.py [--requests 1000] [--runs 20]

1. Request latency of the emulated API server (a GET of one object through the
   `kubernetes` client, keep-alive): requests 1-100, then 100 more after `--requests`
   mixed requests; beside it the same for plain kmock 0.8, whose request log makes every
   request slower than the last.
2. The real operator (`genforge_operator.main`, via the test harness's OperatorRunner):
   create a TrainingRun -> status.phase and observedGeneration recorded, seen on a watch.
3. A full cycle as the integration test does it: create -> recorded -> spec change ->
   observedGeneration 2 -> delete -> gone (kopf's finalizer handled), by polling.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

GROUP, VERSION, PLURAL = "genforge.dev", "v1alpha1", "trainingruns"


def say(text: str) -> None:
    """Print past KopfRunner, which captures sys.stdout while the operator runs."""
    print(text, file=sys.__stdout__, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:6.2f} ms  p95 {percentile(values, 0.95) * 1000:6.2f} ms"


def client_for(url: str):
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = url
    return kubernetes.client.ApiClient(configuration)


def make_run(name: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"modelRef": {"name": "shapes"}, "datasetRef": {"name": "shapes"},
                     "training": {"steps": 10, "batchSize": 4}, "hardware": {"pool": "cpu"},
                     "budget": {"maxCost": "1", "maxDuration": "1h"}}}


def timed_gets(api, count: int) -> list[float]:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        core.read_namespace("default")
        durations.append(time.perf_counter() - started)
    return durations


def mixed_requests(api, count: int) -> None:
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    for index in range(count):
        match index % 4:
            case 0:
                core.create_namespaced_config_map("default", {"metadata": {"name": f"bench-{index}"}})
            case 1:
                core.patch_namespaced_config_map(f"bench-{index - 1}", "default", {"data": {"a": str(index)}})
            case 2:
                core.list_namespaced_config_map("default", label_selector="app=none")
            case 3:
                core.read_namespaced_config_map(f"bench-{index - 3}", "default")


def emulator_latency(requests: int) -> None:
    from genforge_local import EmulatedCluster

    with EmulatedCluster() as cluster:
        api = client_for(cluster.url)
        timed_gets(api, 20)  # warm the client
        first = timed_gets(api, 100)
        mixed_requests(api, requests)
        later = timed_gets(api, 100)
        server = [r.duration for r in cluster.requests()[-100:] if r.duration is not None]
    say(f"genforge emulator, requests 1-100:          {ms(first)}")
    say(f"genforge emulator, after {requests} requests:  {ms(later)}   (server side {ms(server)})")


def plain_kmock_latency(requests: int) -> None:
    """kmock 0.8 unextended, for contrast (its emulator has no resourceVersion, so kopf cannot run on it)."""
    import kmock

    ready, stop = threading.Event(), threading.Event()
    box: dict = {}

    async def serve() -> None:
        handler = kmock.KubernetesEmulator()
        handler.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False)
        handler.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
        handler.objects["v1/namespaces", None, "default"] = {"metadata": {"name": "default"}}
        async with handler, kmock.Server(handler) as server:
            box["url"] = str(server.url).rstrip("/")
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    ready.wait(10)
    conn = http.client.HTTPConnection(box["url"].split("//")[1])

    def get(path: str) -> float:
        started = time.perf_counter()
        conn.request("GET", path)
        conn.getresponse().read()
        return time.perf_counter() - started

    first = [get("/api/v1/namespaces/default/configmaps/x") for _ in range(100)]
    for index in range(requests):
        conn.request("POST", "/api/v1/namespaces/default/configmaps",
                     body=json.dumps({"metadata": {"name": f"c{index}"}}), headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    later = [get("/api/v1/namespaces/default/configmaps/x") for _ in range(100)]
    stop.set()
    thread.join(5)
    say(f"plain kmock 0.8,   requests 1-100:          {ms(first)}")
    say(f"plain kmock 0.8,   after {requests} requests:  {ms(later)}")


def watch_recorded(url: str, namespace: str, seen: dict[str, float], done: threading.Event) -> None:
    host = url.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=60)
    conn.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}?watch=true")
    response = conn.getresponse()
    while not done.is_set() and (line := response.readline()):
        obj = json.loads(line)["object"]
        status, meta = obj.get("status") or {}, obj["metadata"]
        if status.get("phase") and status.get("observedGeneration") == meta.get("generation"):
            seen.setdefault(meta["name"], time.perf_counter())
    conn.close()


def operator_figures(runs: int) -> None:
    import kubernetes
    from harness import OperatorRunner, wait_for

    from genforge_local import EmulatedCluster
    from genforge_operator.bundled import crd_dir

    with EmulatedCluster(crd_dir=crd_dir()) as cluster:
        api = client_for(cluster.url)
        custom = kubernetes.client.CustomObjectsApi(api)
        kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench"}})
        started = time.perf_counter()
        operator = OperatorRunner(cluster).start()
        say(f"operator start (until it watches all it handles): {time.perf_counter() - started:.2f} s")
        try:
            seen: dict[str, float] = {}
            done = threading.Event()
            watcher = threading.Thread(target=watch_recorded, args=(cluster.url, "bench", seen, done), daemon=True)
            watcher.start()
            time.sleep(0.2)
            created: dict[str, float] = {}
            for index in range(runs):
                name = f"latency-{index}"
                created[name] = time.perf_counter()
                custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, make_run(name))
                wait_for(lambda name=name: name in seen, timeout=30)
            done.set()
            latencies = [seen[name] - created[name] for name in created]
            say(f"create -> status recorded (watch), {runs} runs:   {ms(latencies)}  max {max(latencies) * 1000:.1f} ms")

            def get(name: str) -> dict:
                return custom.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name)

            def gone(name: str) -> bool:
                try:
                    get(name)
                except kubernetes.client.ApiException as e:
                    return e.status == 404
                return False

            cycles = []
            for index in range(max(3, runs // 2)):
                name = f"cycle-{index}"
                started = time.perf_counter()
                custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, make_run(name))
                wait_for(lambda name=name: get(name)["status"]["observedGeneration"] == 1, timeout=30)
                custom.patch_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name,
                                                      {"spec": {"budget": {"maxCost": "2"}}})
                wait_for(lambda name=name: get(name)["status"]["observedGeneration"] == 2, timeout=30)
                custom.delete_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name)
                wait_for(lambda name=name: gone(name), timeout=30)
                cycles.append(time.perf_counter() - started)
            say(f"create/update/delete cycle, {len(cycles)} runs:      p50 {statistics.median(cycles):.3f} s  "
                  f"max {max(cycles):.3f} s")
            started = time.perf_counter()
            operator.restart()
            say(f"operator restart: {time.perf_counter() - started:.2f} s")
        finally:
            operator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    emulator_latency(args.requests)
    plain_kmock_latency(args.requests)
    operator_figures(args.runs)


if __name__ == "__main__":
    main()
