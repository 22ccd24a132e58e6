"""Estimate vs actual on `genforge local` with real trainer processes, one run at a time.

    python benchmarks/bench_estimates.py [--base-steps 150] [--scales 0.3 3] [--wide] [--widths 24x48 32x64]

Starts the local control plane (the emulated API server, the real operator, trainer Jobs
as local processes), applies the examples' Dataset, GenModel `shapes` and `cpu` pool
(its prior from `cpusPerNode`), then runs TrainingRuns one after another and prints, for
each, the estimate the operator admitted it with (seconds, range, basis, cost) beside what
it took (status.runningSeconds, accrued cost) and the error (status.cost.estimateError):

1. `base` — `--base-steps` steps of the example run: estimated from the pool's prior
   (the "before any run" figure), and the run that calibrates the pool;
2. the same model with each of `--scales` × the steps (estimated from what `base` measured);
3. `--wide`: a GenModel with channels 32/64 instead of 16/32 (≈4× the FLOPs per sample),
   `--base-steps` steps on the same pool, estimated from the small model's measurement;
   `--widths 24x48 32x64`: one such model per channel pair.

The runs keep the example's evaluation (64 images × 25 steps) and checkpoints. Each run's
figures come from the run's own status; nothing here is timed by the benchmark itself.
The operator estimates each run from every run before it; the `1-run est.` column is the
estimate from the pool as `base` alone left it (`estimate.estimate_on_pool`, the code
admission runs), so the "after one run" targets are read there for every row.
Keep one invocation under ten minutes on a shared machine (split the scales over several).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [str(ROOT / package) for package in ("operator", "trainer", "local")]
sys.path[:0] = PACKAGES
# the operator and the trainers run as child processes: they import this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(PACKAGES + [p for p in [os.environ.get("PYTHONPATH")] if p])

from genforge_local.control_plane import LocalControlPlane  # noqa: E402
from genforge_operator.api import parse_resource  # noqa: E402
from genforge_operator.money import estimate, throughput  # noqa: E402

FINAL = {"Succeeded", "Failed", "BudgetExceeded"}


def example(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d]


def wide_model(model: dict, channels: tuple[int, int] = (32, 64)) -> dict:
    wide = copy.deepcopy(model)
    wide["metadata"] = {"name": "shapes-wide" if channels == (32, 64) else f"shapes-{channels[0]}x{channels[1]}"}
    wide["spec"]["config"]["blockOutChannels"] = list(channels)
    return wide


def channels(text: str) -> tuple[int, int]:
    low, high = text.lower().split("x")
    return int(low), int(high)


def training_run(base: dict, name: str, steps: int, model: str = "shapes") -> dict:
    run = copy.deepcopy(base)
    run["metadata"] = {"name": name}
    run["spec"]["modelRef"] = {"name": model}
    training = run["spec"]["training"]
    training["steps"] = steps
    training["lrWarmupSteps"] = min(int(training.get("lrWarmupSteps", 0)), steps)
    run["spec"]["checkpoint"]["everySteps"] = max(1, min(int(run["spec"]["checkpoint"]["everySteps"]), steps))
    return run


def wait_final(api, kind: str, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = next((o for o in api.items(kind) if o["metadata"]["name"] == name), None)
        if obj and (obj.get("status") or {}).get("phase") in FINAL | {"Ready"}:
            time.sleep(2.0)  # the operator's last status round (pool calibration, error)
            return next(o for o in api.items(kind) if o["metadata"]["name"] == name)
        time.sleep(0.5)
    raise TimeoutError(f"{kind} {name} did not finish in {timeout:.0f} s")


def flops_ratio(small: dict, wide: dict) -> float:
    def spec(body):
        return parse_resource({**body, "apiVersion": "genforge.dev/v1alpha1"}).spec
    return throughput.train_flops_per_sample(spec(wide)) / throughput.train_flops_per_sample(spec(small))


def after_one_run(pool_after_base: dict | None, run: dict, models: dict[str, dict]) -> float | None:
    """The run's estimate from the pool as `base` alone left it (one run measured): what a
    user would have been told had this run come second. The operator's own estimate (the
    `estimate` column) uses every run before it."""
    if pool_after_base is None:
        return None
    def parsed(body):
        return parse_resource({**body, "apiVersion": "genforge.dev/v1alpha1"})
    model = models[run["spec"]["modelRef"]["name"]]
    return float(estimate.estimate_on_pool(parsed(pool_after_base), parsed(run).spec, parsed(model).spec)
                 .duration_seconds)


class CpuAccount:
    """Who used the machine's CPUs while a run ran: its trainer, this benchmark's control plane
    (the API server and the operator: this process and its other descendants), and every
    other process on the machine (another user's work), and the hypervisor's steal time. Samples /proc every second; a
    process's CPU time between samples goes to its group (one that exits between two
    samples loses its last second)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval, self.me = interval, os.getpid()
        self.seconds = {"trainer": 0.0, "control plane": 0.0, "others": 0.0, "steal": 0.0}
        self._last_steal = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _scan(self) -> dict[int, tuple[int, float, str]]:
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read(400).replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick, command)
        return out

    def _group(self, pid: int, table: dict) -> str:
        if "genforge-trainer" in table[pid][2] or "genforge_trainer" in table[pid][2]:
            return "trainer"
        seen = 0
        while pid in table and seen < 64:
            if pid == self.me:
                return "control plane"
            pid, seen = table[pid][0], seen + 1
        return "others"

    def _steal(self) -> float:
        """CPU seconds the hypervisor gave this machine's vCPUs to others (/proc/stat's steal)."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                return int(f.readline().split()[8]) / self._tick
        except (OSError, IndexError, ValueError):
            return 0.0

    def _sample(self, count: bool) -> None:
        steal = self._steal()
        if count:
            self.seconds["steal"] += steal - self._last_steal
        self._last_steal = steal
        table = self._scan()
        for pid, (_, cpu, _) in table.items():
            if count and pid in self._last:
                self.seconds[self._group(pid, table)] += max(0.0, cpu - self._last[pid])
        self._last = {pid: cpu for pid, (_, cpu, _) in table.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(True)

    def __enter__(self) -> CpuAccount:
        self._started = time.monotonic()
        self._sample(False)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(True)
        self.wall = time.monotonic() - self._started

    def cores(self) -> dict[str, float]:
        """Average cores each group used over the run."""
        return {group: seconds / self.wall for group, seconds in self.seconds.items()}


def trainer_timing(api, run: dict) -> dict:
    """The trainer's own `timing` (its termination message) for the run's succeeded pod."""
    job = (run.get("status") or {}).get("job")
    pods = api.request("GET", f"/api/v1/namespaces/{run['metadata'].get('namespace', 'default')}/pods").get("items")
    for pod in pods or []:
        if (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") != job:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            try:
                timing = json.loads(message or "{}").get("timing")
            except ValueError:
                continue
            if timing:
                return timing
    return {}


def row(label: str, run: dict, one_run: float | None = None, timing: dict | None = None) -> dict:
    status = run.get("status") or {}
    cost, estimate_ = status.get("cost") or {}, status.get("estimate") or {}
    actual = status.get("runningSeconds")
    return {"run": label, "steps": run["spec"]["training"]["steps"], "phase": status.get("phase"),
            "estimate": cost.get("estimatedSeconds"), "min": estimate_.get("minSeconds"),
            "max": estimate_.get("maxSeconds"), "basis": estimate_.get("basis", ""),
            "actual": actual, "error": cost.get("estimateError"),
            "estimatedCost": cost.get("estimated"), "cost": cost.get("accrued"),
            "oneRun": one_run, "oneRunError": (actual - one_run) / one_run if one_run and actual else None,
            "parts": {p["part"]: p["seconds"] for p in estimate_.get("parts") or []},
            "timing": timing or {}}


def print_table(rows: list[dict]) -> None:
    print(f"{'run':<22} {'steps':>6} {'estimate s':>10} {'range s':>12} {'actual s':>9} {'error':>7} "
          f"{'1-run est.':>10} {'1-run err':>9} {'est. $':>9} {'actual $':>9}  basis")
    for r in rows:
        span = f"{r['min']:.0f}–{r['max']:.0f}" if r["min"] is not None else "-"
        error = f"{r['error']:+.1%}" if r["error"] is not None else "-"
        one = f"{r['oneRun']:.0f}" if r["oneRun"] is not None else "-"
        one_error = f"{r['oneRunError']:+.1%}" if r["oneRunError"] is not None else "-"
        print(f"{r['run']:<22} {r['steps']:>6} {r['estimate'] or 0:>10.0f} {span:>12} {r['actual'] or 0:>9.0f} "
              f"{error:>7} {one:>10} {one_error:>9} {r['estimatedCost'] or '-':>9} {r['cost'] or '-':>9}  {r['basis']}")
    print("trainer timing (mean step = trainingSeconds ÷ steps after the first; steady step = median of "
          "16-step windows' means): " + "; ".join(
              f"{r['run']}: start-up {t.get('startupSeconds', 0):.1f} s, mean step "
              f"{t['trainingSeconds'] / max(1, r['steps'] - 1) * 1000:.1f} ms, steady step "
              f"{t.get('steadyStepSeconds', 0) * 1000:.1f} ms, checkpoints {t.get('checkpointSeconds', 0):.2f} s, "
              f"evaluation {t.get('evaluationSeconds', 0):.1f} s"
              for r in rows if (t := r["timing"]) and "trainingSeconds" in t))
    print("cores used while each run ran (trainer / control plane / other processes on the machine / stolen by "
          "the hypervisor): " + "; ".join(
        f"{r['run']}: {c['trainer']:.2f} / {c['control plane']:.2f} / {c['others']:.2f} / {c['steal']:.3f}"
        for r in rows if (c := r.get("cores"))))
    print("estimate parts (s): " + "; ".join(
        f"{r['run']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items()) for r in rows))


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--scales", type=float, nargs="*", default=[0.3, 3.0])
    parser.add_argument("--wide", action="store_true", help="also a model with ~4x the FLOPs per sample")
    parser.add_argument("--widths", type=channels, nargs="*", default=[], metavar="WxW",
                        help="also models with these channels, e.g. 24x48 (2.2x the FLOPs) 32x64 (3.8x)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run")
    args = parser.parse_args(argv)
    # a `timeout` or kill stops the control plane too (its operator and trainers are children)
    signal.signal(signal.SIGTERM, _interrupt)

    pools = [p for p in example("pools.yaml") if p["metadata"]["name"] == "cpu"]
    model = example("model.yaml")[0]
    run_example = example("trainingrun.yaml")[0]
    widths = list(dict.fromkeys([*args.widths, *([(32, 64)] if args.wide else [])]))
    others = [wide_model(model, c) for c in widths]
    data = Path(tempfile.mkdtemp(prefix="genforge-bench-estimates-"))
    plane = LocalControlPlane(data)
    rows = []
    try:
        plane.start()
        api = plane.api()
        for obj in [*pools, model, *others, *example("dataset.yaml")]:
            api.apply(obj)
        wait_final(api, "Dataset", "shapes", args.timeout)
        plan = [("base", args.base_steps, "shapes")]
        plan += [(f"x{scale:g}", max(1, round(args.base_steps * scale)), "shapes") for scale in args.scales]
        for other in others:
            plan.append((f"{other['metadata']['name']} (x{flops_ratio(model, other):.1f} FLOPs)", args.base_steps,
                         other["metadata"]["name"]))
        models = {m["metadata"]["name"]: m for m in [model, *others]}
        pool_after_base = None
        for i, (label, steps, model_name) in enumerate(plan):
            name = f"bench-{i}"
            with CpuAccount() as account:
                api.apply(training_run(run_example, name, steps, model_name))
                finished = wait_final(api, "TrainingRun", name, args.timeout)
            rows.append(row(label, finished, after_one_run(pool_after_base, finished, models),
                            trainer_timing(api, finished)))
            rows[-1]["cores"] = account.cores()
            print(f"{label}: {rows[-1]}", file=sys.stderr, flush=True)
            if i == 0:
                pool_after_base = next(p for p in api.items("AcceleratorPool") if p["metadata"]["name"] == "cpu")
        pool = next(p for p in api.items("AcceleratorPool") if p["metadata"]["name"] == "cpu")
    finally:
        plane.stop()
    revision = ROOT / "REVISION"  # a snapshot of a commit (git archive) says which
    if revision.exists():
        print(f"revision {revision.read_text().strip()}")
    print(f"genforge local, pool cpu (cpusPerNode {pools[0]['spec'].get('cpusPerNode')}), "
          f"example run at batch {run_example['spec']['training']['batchSize']}, one run at a time")
    print_table(rows)
    calibration = (pool.get("status") or {}).get("calibration") or {}
    for field, part in calibration.items():
        print(f"pool cpu {field}: {part['value']:.4g} (median of {part['used']} of {part['runs']} runs, "
              f"kept {part['low']:.4g}–{part['high']:.4g})")
    print(f"data and logs: {data}")
    return 0 if all(r["phase"] == "Succeeded" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
