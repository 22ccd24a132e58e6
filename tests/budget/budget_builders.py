"""Small builders for the budget tests: a valid resource with overrides, parsed like the API's."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from genforge_operator.api import AccrualSegment, GenModelSpec, ModelConfig, Resource, parse_resource

NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)  # a Friday


def at(text: str) -> datetime:
    """`"18:30"` → that time on NOW's day; a full RFC 3339 string → that moment."""
    if "T" in text:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    hours, minutes, *seconds = (int(p) for p in text.split(":"))
    return NOW.replace(hour=hours, minute=minutes, second=seconds[0] if seconds else 0)


def ts(text: str) -> str:
    return at(text).strftime("%Y-%m-%dT%H:%M:%SZ")


def seg(start: str, end: str | None = None, *, pool: str = "gpu", accelerators: int = 1,
        price: str = "3.60") -> AccrualSegment:
    return AccrualSegment(start=ts(start), end=ts(end) if end else None, pool=pool, accelerators=accelerators,
                          price_per_hour=Decimal(price))


def make_pool(name: str = "gpu", *, type: str = "nvidia-l4", per_node: int = 4, price: str = "0.71",
              relative: float = 1.0, cpu: bool = False, measured: list[dict] | None = None,
              currency: str | None = None, cpus: int | None = None, calibration: dict | None = None) -> Resource:
    accelerator = {"type": "cpu"} if cpu else {"type": type, "resourceName": "nvidia.com/gpu", "perNode": per_node}
    spec = {"accelerator": accelerator, "pricePerHour": price, "relativeThroughput": relative}
    if currency:
        spec["currency"] = currency
    if cpus:
        spec["cpusPerNode"] = cpus
    status: dict = {"measured": measured or []}
    if calibration:
        status["calibration"] = calibration
    return parse_resource({"apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool",
                           "metadata": {"name": name}, "spec": spec, "status": status})


def make_model(architecture: str = "unet2d-ddpm", resolution: int = 64, **config) -> GenModelSpec:
    return GenModelSpec(architecture=architecture, resolution=resolution, config=ModelConfig(**config))


def make_run(name: str = "run", *, namespace: str = "team-a", labels: dict | None = None, kind: str = "TrainingRun",
             steps: int = 1000, batch: int = 32, accumulation: int = 1, precision: str = "bf16",
             pool: str = "auto", nodes: int = 1, per_node: int = 1, deadline: str | None = None,
             max_cost: str | None = None, max_duration: str | None = None, on_exceeded: str = "Stop",
             phase: str | None = None, segments: list[AccrualSegment] | None = None,
             estimated: str | None = None, method: str = "lora", evaluation: dict | None = None,
             checkpoint: dict | None = None) -> Resource:
    training = {"steps": steps, "batchSize": batch, "gradientAccumulation": accumulation,
                "mixedPrecision": precision}
    hardware = {"pool": pool, "nodes": nodes, "acceleratorsPerNode": per_node}
    if deadline:
        hardware["deadline"] = deadline
    budget = {"onExceeded": on_exceeded}
    if max_cost is not None:
        budget["maxCost"] = max_cost
    if max_duration:
        budget["maxDuration"] = max_duration
    spec = {"datasetRef": {"name": "data"}, "training": training, "hardware": hardware, "budget": budget}
    if evaluation is not None:
        spec["evaluation"] = evaluation
    if checkpoint is not None:
        spec["checkpoint"] = checkpoint
    if kind == "FineTune":
        spec.update(baseModel={"name": "model"}, method=method)
    else:
        spec["modelRef"] = {"name": "model"}
    status: dict = {}
    if phase:
        status["phase"] = phase
    if estimated:
        status["cost"] = {"estimated": estimated}
    resource = parse_resource({"apiVersion": "genforge.dev/v1alpha1", "kind": kind,
                               "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                               "spec": spec, "status": status})
    resource.status.segments = list(segments or [])
    return resource


def make_budget(name: str = "team", *, namespace: str = "team-a", limit: str = "100", period: str = "Monthly",
                selector: dict | None = None, warn_at: list[int] | None = None, on_exhausted: str = "Stop",
                status: dict | None = None) -> Resource:
    spec: dict = {"limit": limit, "period": period, "onExhausted": on_exhausted}
    if selector is not None:
        spec["selector"] = selector
    if warn_at is not None:
        spec["warnAt"] = warn_at
    return parse_resource({"apiVersion": "genforge.dev/v1alpha1", "kind": "Budget",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec,
                           "status": status or {}})
