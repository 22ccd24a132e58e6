"""The run spec document: the one contract between operator and trainer (docs/contract.md).

Pure: a resource plus the objects it refers to → the JSON document the trainer reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api import API_VERSION, DreamboothSpec, LoraSpec, Resource, to_dict
from .config import OperatorConfig

SCHEMA_VERSION = API_VERSION
COMMANDS = {"Dataset": "prepare", "TrainingRun": "train", "FineTune": "finetune"}
# Methods whose block is optional; `embedding` and `preference` require theirs (CRD rule).
METHOD_DEFAULTS = {"lora": LoraSpec, "dreambooth": DreamboothSpec}


@dataclass(frozen=True)
class BaseChain:
    """Where a FineTune's weights start: the GenModel version it names (`version`) and how
    to rebuild that version's weights — the complete model of version `root` at `uri`, with
    the LoRA `adapters` (artifact URIs, oldest first; of the versions `through`) merged into
    it. A complete version is its own root and has no adapters."""

    version: str
    uri: str
    root: str
    adapters: tuple[str, ...] = ()
    through: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where a run executes: the chosen pool and how many processes it spans."""

    pool: Resource | None
    nodes: int = 1
    accelerators_per_node: int = 1

    @property
    def accelerator_type(self) -> str:
        return self.pool.spec.accelerator.type if self.pool else "cpu"

    @property
    def processes_per_node(self) -> int:
        # CPU pools run one process per node; accelerator pools one per device.
        if self.pool is None or self.pool.spec.accelerator.is_cpu:
            return 1
        return self.accelerators_per_node


def storage_uri(config: OperatorConfig, *parts: str) -> str:
    return "/".join([config.storage.uri.rstrip("/"), *parts])


def dataset_uri(dataset: Resource, config: OperatorConfig) -> str:
    """Where a Dataset's prepared output lives (spec.output.uri wins)."""
    return dataset.spec.output.uri or storage_uri(config, "datasets", dataset.namespace or "", dataset.name)


def run_output_uri(run: Resource, config: OperatorConfig) -> str:
    """Where a run writes checkpoints, samples and its artifact.

    The default is keyed by the object's uid (`runs/<ns>/<kind>/<name>/<uid>`): a run deleted
    and created again under the same name starts afresh instead of resuming the old run's
    checkpoints, and the old run's registered artifact is never overwritten. (Offline
    `render`/`estimate` have no uid: `runs/<ns>/<kind>/<name>`.) An explicit `output.uri`
    reused by another run is caught by the trainer, which refuses checkpoints of another uid.
    """
    parts = ["runs", run.namespace or "", run.kind.lower(), run.name]
    return run.spec.output.uri or storage_uri(config, *parts, *([run.uid] if run.uid else []))


def _identity(resource: Resource) -> dict:
    return {"kind": resource.kind, "namespace": resource.namespace, "name": resource.name, "uid": resource.uid}


def build_dataset_spec(dataset: Resource, config: OperatorConfig) -> dict:
    spec = dataset.spec
    out = dataset_uri(dataset, config)
    source = {"uri": spec.source.uri}
    return {
        "schemaVersion": SCHEMA_VERSION,
        "command": "prepare",
        "run": _identity(dataset),
        "output": {"uri": out},
        "prepare": {
            "source": source,
            "preparation": to_dict(spec.preparation),
            "privacy": to_dict(spec.privacy),
            "license": to_dict(spec.license),
        },
    }


def _model_block(model: Resource, base_uri: str | None, adapters: tuple[str, ...] = ()) -> dict:
    spec = model.spec
    return {
        "name": model.name,
        "architecture": spec.architecture,
        "resolution": spec.resolution,
        "config": to_dict(spec.config),
        "baseUri": base_uri,
        "baseAdapters": list(adapters),
    }


def build_training_spec(
    run: Resource,
    model: Resource,
    dataset: Resource,
    placement: Placement,
    config: OperatorConfig,
    *,
    base_version: BaseChain | None = None,
) -> dict:
    """The document for a TrainingRun or a FineTune.

    `base_version` is the GenModel version a FineTune starts from (`plan.resolve_base_version`):
    `model.baseUri` is its complete model, `model.baseAdapters` the LoRA adapters the trainer
    merges into it first (when the version is an adapter). A TrainingRun starts from
    `GenModel.spec.base.uri` when given.
    """
    spec = run.spec
    out = run_output_uri(run, config)
    base_uri = base_version.uri if base_version else (model.spec.base.uri if model.spec.base else None)
    document = {
        "schemaVersion": SCHEMA_VERSION,
        "command": COMMANDS[run.kind],
        "run": _identity(run),
        "output": {"uri": out},
        "checkpoint": {"uri": f"{out}/checkpoints", **to_dict(spec.checkpoint)},
        "model": _model_block(model, base_uri, base_version.adapters if base_version else ()),
        "dataset": {"name": dataset.name, "uri": dataset.status.uri or dataset_uri(dataset, config)},
        "training": to_dict(spec.training),
        "evaluation": to_dict(spec.evaluation) if spec.evaluation else None,
        "distributed": {
            "nodes": placement.nodes,
            "processesPerNode": placement.processes_per_node,
            "acceleratorType": placement.accelerator_type,
        },
    }
    if run.kind == "FineTune":
        # Only the chosen method's block travels, with its defaults filled in.
        block = getattr(spec, spec.method, None)
        if block is None and spec.method in METHOD_DEFAULTS:
            block = METHOD_DEFAULTS[spec.method]()
        document["finetune"] = {
            "method": spec.method,
            "baseVersion": base_version.version if base_version else None,
            **({spec.method: to_dict(block)} if block is not None else {}),
        }
    return document
