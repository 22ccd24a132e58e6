"""`genforge estimate -f FILE…` — duration and cost of each run on every pool, offline.

Reads files and prints; every number comes from the operator's own admission
(`money.admission.admit`), so the CLI and the operator agree. Exit code 2 on input it cannot use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime

from ..api import Resource
from ..config import OperatorConfig
from ..formats import human_duration, money, parse_timestamp
from ..manifests import ManifestError, load_resources
from ..money.admission import admit
from ..money.estimate import AUTO
from ..plan import model_name_of, output_problem
from ..runspec import run_output_uri
from ..units import MICRO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True,
                        help="YAML file or folder: pools, GenModels, Budgets and the run(s) (repeatable)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-n", "--namespace", default="default", help="namespace for resources without one")
    parser.add_argument("--now", help="evaluate Budgets at this RFC 3339 time (default: now)")


class EstimateError(ValueError):
    """Input `genforge estimate` cannot work with (exit code 2)."""


def estimate_runs(resources: list[Resource], now: datetime) -> list[dict]:
    """Per run: the run, its admission (with every pool's estimate) and its model."""
    config = OperatorConfig.from_env()  # the storage settings the operator would use

    pools = [r for r in resources if r.kind == "AcceleratorPool"]
    runs = [r for r in resources if r.kind in ("TrainingRun", "FineTune")]
    if not runs:
        raise EstimateError("no TrainingRun or FineTune in the files")
    if not pools:
        raise EstimateError("no AcceleratorPool in the files")
    pool_names = {p.name for p in pools}
    results = []
    for run in runs:
        models = {r.name: r for r in resources if r.kind == "GenModel" and r.namespace == run.namespace}
        model = models.get(model_name_of(run))
        where = f"{run.kind} {run.namespace}/{run.name}"
        if model is None:
            raise EstimateError(f"{where}: GenModel {model_name_of(run)!r} not found in the files "
                                f"(namespace {run.namespace})")
        if run.spec.hardware.pool != AUTO and run.spec.hardware.pool not in pool_names:
            raise EstimateError(f"{where}: AcceleratorPool {run.spec.hardware.pool!r} not found in the files "
                                f"(pools: {', '.join(sorted(pool_names))})")
        bad_output = output_problem(run_output_uri(run, config), config)
        if bad_output is not None:  # the operator refuses it before any Job: so does the estimate
            raise EstimateError(f"{where}: {bad_output.reason}: {bad_output.message}")
        budgets = [r for r in resources if r.kind == "Budget"]
        admission = admit(run, model.spec, pools, budgets, now, runs=runs)
        results.append({"run": run, "model": model, "admission": admission})
    return results


def _json_result(result: dict) -> dict:
    admission = result["admission"]
    return {
        "run": result["run"].name,
        "choice": admission.auto_choice,
        "estimates": [
            {"pool": e.pool, "accelerators": e.accelerators, "durationSeconds": e.duration_seconds,
             "minSeconds": e.min_seconds, "maxSeconds": e.max_seconds,
             "cost": float(e.cost.quantize(MICRO)), "minCost": float(e.min_cost.quantize(MICRO)),
             "maxCost": float(e.max_cost.quantize(MICRO)), "meetsDeadline": e.meets_deadline,
             "withinBudget": e.within_budget,
             "parts": [{"part": p.name, "seconds": round(p.seconds, 1), "basis": p.basis, "runs": p.runs}
                       for p in e.parts]}
            for e in admission.estimates
        ],
    }


def _table(result: dict) -> str:
    run, model, admission = result["run"], result["model"], result["admission"]
    spec = run.spec
    training = spec.training
    deadline = spec.hardware.deadline
    limits = [f"deadline {deadline} ({human_duration(spec.hardware.deadline_seconds)})" if deadline else "no deadline",
              f"maxCost {money(spec.budget.max_cost)}" if spec.budget.max_cost is not None else "no maxCost"]
    lines = [
        f"{run.kind} {run.namespace}/{run.name}: {model.spec.architecture} at {model.spec.resolution}px, "
        f"{training.steps:,} steps × batch {training.batch_size} × accumulation {training.gradient_accumulation} "
        f"per process; {spec.hardware.nodes} node(s) × {spec.hardware.accelerators_per_node} per node; "
        + ", ".join(limits),
        "",
    ]
    header = ["MODE", "POOL", "ACCELERATOR", "COUNT", "SAMPLES", "SAMPLES/S", "DURATION", "RANGE", "ACCEL-HOURS",
              "COST", "DEADLINE", "BUDGET", "NOTE"]
    rows = [header]
    for e in admission.estimates:
        rows.append([
            e.mode, e.pool, e.accelerator_type, str(e.accelerators), _count(e.samples),
            f"{e.samples_per_second:,.1f}" + (" measured" if e.throughput_source == "measured" else ""),
            human_duration(e.duration_seconds),
            f"{human_duration(e.min_seconds)}–{human_duration(e.max_seconds)}",
            f"{e.accelerator_hours:,.1f}", money(e.cost, e.currency),
            "yes" if e.meets_deadline else "no", "yes" if e.within_budget else "no", e.note,
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = {3, 4, 5, 8, 9}
    for r in rows:
        cells = [c.rjust(widths[i]) if i in numeric and r is not header else c.ljust(widths[i])
                 for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.append("basis (each part's seconds; measured on the pool, or the prior):")
    for e in admission.estimates:
        lines.append(f"  {e.pool}: " + ", ".join(_part(p) for p in e.parts) + f"; prior: {e.prior_basis}")
    lines.append("")
    lines.append(f"auto would choose: {admission.auto_choice or 'none'}"
                 + ("" if admission.auto_choice else f" ({admission.auto_reason}: {admission.auto_message})"))
    if spec.hardware.pool != AUTO:
        lines.append(f"the run asks for pool: {spec.hardware.pool}")
    lines.append(f"admission: {admission.decision} ({admission.reason}): {admission.message}")
    return "\n".join(lines)


def _part(part) -> str:
    runs = f" ({part.runs} run{'s' * (part.runs != 1)})" if part.basis == "measured" else ""
    return f"{part.name} {human_duration(math.ceil(part.seconds))} {part.basis}{runs}"


def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    try:
        now = parse_timestamp(args.now) if args.now else datetime.now(UTC)
        resources = load_resources(args.filename, args.namespace)
        results = estimate_runs(resources, now)
    except (ManifestError, EstimateError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        documents = [_json_result(r) for r in results]
        print(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    else:
        print("\n\n".join(_table(r) for r in results))
    return 0
