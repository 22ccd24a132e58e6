"""From a resource and the catalogue of what it refers to, to the children it needs.

Pure. Shared by the operator's reconcile and by `genforge render`, so the two can never
disagree. What cannot be planned yet (a missing Dataset, a model version that does not
exist) comes back as a `Blocked` with a CamelCase reason and a message for the user.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from .api import ModelVersion, Resource
from .builders import Children, active_deadline_from_duration, build_children
from .config import OperatorConfig
from .runspec import (
    BaseChain,
    Placement,
    build_dataset_spec,
    build_training_spec,
    dataset_uri,
    run_output_uri,
)
from .vocabulary import DatasetPhase, Reason

#: fsspec schemes of object stores: outputs there outlive the pod.
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")


@dataclass
class Catalog:
    """The objects a resource may refer to, keyed by name (one namespace's view)."""

    pools: dict[str, Resource] = field(default_factory=dict)
    models: dict[str, Resource] = field(default_factory=dict)
    datasets: dict[str, Resource] = field(default_factory=dict)
    budgets: list[Resource] = field(default_factory=list)
    runs: list[Resource] = field(default_factory=list)  # TrainingRuns and FineTunes (Budget spending)

    @classmethod
    def from_resources(cls, resources: list[Resource], namespace: str | None) -> Catalog:
        catalog = cls()
        for r in resources:
            if r.kind == "AcceleratorPool":
                catalog.pools[r.name] = r
            elif r.namespace != namespace:
                continue  # references never cross namespaces
            elif r.kind == "GenModel":
                catalog.models[r.name] = r
            elif r.kind == "Dataset":
                catalog.datasets[r.name] = r
            elif r.kind == "Budget":
                catalog.budgets.append(r)
            elif r.kind in ("TrainingRun", "FineTune"):
                catalog.runs.append(r)
        return catalog


@dataclass(frozen=True)
class Blocked:
    reason: str
    message: str
    permanent: bool = False  # True: waiting cannot help (the run fails)


@dataclass(frozen=True)
class Planned:
    children: Children
    placement: Placement
    document: dict
    base: BaseChain | None = None

    @property
    def base_version(self) -> str | None:
        return self.base.version if self.base else None


FORMAT_LORA_ADAPTER = "lora-adapter"


def is_adapter(version: ModelVersion) -> bool:
    """Whether a version's artifact is a LoRA adapter folder (it needs its base's weights)
    rather than a complete model. Versions recorded before `format` existed: a LoRA
    FineTune's artifact is its `<output>/adapter` folder unless it was merged."""
    if version.format:
        return version.format == FORMAT_LORA_ADAPTER
    return version.method == "lora" and version.uri.rstrip("/").endswith("/adapter")


def resolve_base_version(run: Resource, model: Resource) -> BaseChain | Blocked:
    """A FineTune's starting point: the named version, else the promoted, else the latest.

    Any version will do, a LoRA adapter too: an adapter's `baseVersion` is followed (through
    further adapters) to the complete model it was trained on, and the chain goes to the
    trainer, which merges the adapters into that model before it fine-tunes.
    """
    return resolve_model_version(model, run.spec.base_model.version)


def resolve_model_version(model: Resource, pinned: str | None) -> BaseChain | Blocked:
    """A GenModel version as loadable weights: `pinned`, else promoted, else latest; an
    adapter resolved to its complete model plus the adapters to merge (see above)."""
    versions = {v.name: v for v in model.status.versions}
    wanted = pinned or model.status.promoted or model.status.latest
    if not wanted:
        return Blocked(Reason.BASE_VERSION_NOT_FOUND,
                       f"GenModel {model.name} has no versions yet; a FineTune needs a trained version")
    if wanted not in versions:
        known = ", ".join(versions) or "none"
        return Blocked(Reason.BASE_VERSION_NOT_FOUND,
                       f"GenModel {model.name} has no version {wanted!r} (versions: {known})")
    chain: list[ModelVersion] = []
    current = versions[wanted]
    while is_adapter(current):
        chain.append(current)
        parent = current.base_version
        if parent in versions and parent not in {v.name for v in chain}:
            current = versions[parent]
            continue
        which = "promoted" if wanted == model.status.promoted else "latest"
        how = "baseModel.version is" if pinned else f"the {which} version is"
        if not parent:
            missing = f"{current.name} records no baseVersion"
        elif parent in versions:
            missing = f"its chain of bases loops back to {parent}"
        else:
            missing = f"{current.name}'s base {parent} is no longer a version of GenModel {model.name}"
        return Blocked(Reason.ADAPTER_BASE_NOT_FOUND,
                       f"{how} {wanted}, a LoRA adapter, and the model it adapts is unknown: {missing}. "
                       f"Set baseModel.version to a complete version (one made with lora.merge: true "
                       f"or by another method)")
    return BaseChain(version=wanted, uri=current.uri, root=current.name,
                     adapters=tuple(v.uri for v in reversed(chain)),
                     through=tuple(v.name for v in reversed(chain)))


def model_name_of(run: Resource) -> str:
    """The GenModel a run trains (a FineTune's base model)."""
    return run.spec.base_model.name if run.kind == "FineTune" else run.spec.model_ref.name


def resolve_references(run: Resource, catalog: Catalog) -> tuple[Resource, Resource] | Blocked:
    """The GenModel and the Ready Dataset a TrainingRun/FineTune refers to."""
    model_name = model_name_of(run)
    model = catalog.models.get(model_name)
    if model is None:
        return Blocked(Reason.MODEL_NOT_FOUND, f"GenModel {model_name!r} not found in namespace {run.namespace}")
    if model.spec.architecture == "stable-diffusion" and not model.spec.base and run.kind == "TrainingRun":
        return Blocked(Reason.BASE_WEIGHTS_REQUIRED,
                       f"GenModel {model_name} is stable-diffusion and needs spec.base.uri", permanent=True)
    dataset_name = run.spec.dataset_ref.name
    dataset = catalog.datasets.get(dataset_name)
    if dataset is None:
        return Blocked(Reason.DATASET_NOT_FOUND, f"Dataset {dataset_name!r} not found in namespace {run.namespace}")
    if dataset.status.phase == DatasetPhase.FAILED:
        return Blocked(Reason.DATASET_FAILED, f"Dataset {dataset_name} failed to prepare")
    if dataset.status.phase != DatasetPhase.READY:
        return Blocked(Reason.DATASET_NOT_READY,
                       f"Dataset {dataset_name} is {dataset.status.phase or 'Pending'}; waiting until it is Ready")
    return model, dataset


def fixed_pool(run: Resource, catalog: Catalog) -> Resource | Blocked:
    name = run.spec.hardware.pool
    pool = catalog.pools.get(name)
    if pool is None:
        known = ", ".join(sorted(catalog.pools)) or "none"
        return Blocked(Reason.POOL_NOT_FOUND, f"AcceleratorPool {name!r} not found (pools: {known})")
    return pool


def placement_for(run: Resource, pool: Resource | None) -> Placement:
    hardware = run.spec.hardware
    return Placement(pool=pool, nodes=hardware.nodes, accelerators_per_node=hardware.accelerators_per_node)


def persistent_roots(config: OperatorConfig) -> list[str]:
    """Folders of a trainer pod whose files outlive it: the data PVC's mount (when there is one)."""
    return [config.storage.mount_path.rstrip("/") or "/"] if config.storage.pvc else []


def output_problem(uri: str, config: OperatorConfig) -> Blocked | None:
    """Why an output URI would lose its data with the pod (None when it is persistent).

    A `file://` path is only persistent on a volume every trainer pod mounts (the data PVC at
    `/data`); elsewhere (`/tmp` is the pod's scratch emptyDir) the Dataset would go Ready, or the
    run Succeed, and the files vanish with the pod. `memory://` and other schemes are refused too."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in OBJECT_STORE_SCHEMES:
        return None
    roots = persistent_roots(config)
    if sep and scheme == "file":
        path = posixpath.normpath("/" + rest.lstrip("/"))
        if any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
            return None
    allowed = [f"file://{root}/…" for root in roots] + [f"{s}://…" for s in OBJECT_STORE_SCHEMES[:2]]
    return Blocked(Reason.OUTPUT_NOT_PERSISTENT,
                   f"output {uri} is not on persistent storage: its files would vanish with the pod. "
                   f"Use a path under {' or '.join(allowed)} (or leave output.uri out for the default)",
                   permanent=True)


def plan_dataset(dataset: Resource, catalog: Catalog, config: OperatorConfig) -> Planned | Blocked:
    bad_output = output_problem(dataset_uri(dataset, config), config)
    if bad_output is not None:
        return bad_output
    pool = None
    if dataset.spec.hardware.pool:
        pool = catalog.pools.get(dataset.spec.hardware.pool)
        if pool is None:
            return Blocked(Reason.POOL_NOT_FOUND, f"AcceleratorPool {dataset.spec.hardware.pool!r} not found")
    placement = Placement(pool=pool)
    document = build_dataset_spec(dataset, config)
    secrets = [dataset.spec.source.secret_ref.name] if dataset.spec.source.secret_ref else []
    children = build_children(dataset, document, placement, config, secret_names=secrets)
    return Planned(children=children, placement=placement, document=document)


def plan_run(
    run: Resource,
    pool: Resource,
    catalog: Catalog,
    config: OperatorConfig,
    *,
    active_deadline_seconds: int | None = None,
    suspend: bool = False,
) -> Planned | Blocked:
    """Children of a TrainingRun/FineTune on a chosen pool."""
    bad_output = output_problem(run_output_uri(run, config), config)
    if bad_output is not None:
        return bad_output
    refs = resolve_references(run, catalog)
    if isinstance(refs, Blocked):
        return refs
    model, dataset = refs
    base = None
    if run.kind == "FineTune":
        base = resolve_base_version(run, model)
        if isinstance(base, Blocked):
            return base
    placement = placement_for(run, pool)
    document = build_training_spec(run, model, dataset, placement, config, base_version=base)
    if active_deadline_seconds is None:
        active_deadline_seconds = active_deadline_from_duration(run.spec.budget.max_duration_seconds)
    children = build_children(
        run, document, placement, config,
        active_deadline_seconds=active_deadline_seconds, suspend=suspend or run.spec.suspend,
    )
    return Planned(children=children, placement=placement, document=document, base=base)
