"""Pure builders: a resource and what it refers to → the complete desired child objects.

No I/O. The kopf handlers and `genforge render` call the same functions, so what
`render` prints is exactly what the operator creates.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from .api import API_VERSION, Resource
from .config import OperatorConfig
from .naming import (
    ANNOTATION_RUN_SPEC,
    LABEL_KUEUE_PRIORITY,
    LABEL_KUEUE_QUEUE,
    LABEL_MANAGED_BY,
    LABEL_ROLE,
    MANAGER,
    child_name,
    owner_labels,
)
from .runspec import Placement

CONFIG_MOUNT = "/etc/genforge"
CONFIG_FILE = "run.json"
CONTAINER = "trainer"
TERMINATION_LOG = "/dev/termination-log"

# Trainer exit codes (docs/contract.md); the Job's podFailurePolicy is built from them.
EXIT_CONFIG_ERROR = 2
EXIT_DATA_ERROR = 3
EXIT_STORAGE_ERROR = 4
EXIT_SIGTERM = 143
PERMANENT_EXIT_CODES = (EXIT_CONFIG_ERROR, EXIT_DATA_ERROR, EXIT_STORAGE_ERROR)

#: The run document reaches the trainer as `CONFIG_MOUNT/CONFIG_FILE` from the pod's own
#: annotation `ANNOTATION_RUN_SPEC` (a downward-API volume): no object of its own to create,
#: watch and collect per run. A document larger than this (a pod's annotations may hold
#: 256 KiB in all) goes in a ConfigMap of its own instead, mounted at the same place.
RUN_SPEC_ANNOTATION_MAX_BYTES = 64 * 1024

TPU_RESOURCE = "google.com/tpu"
GKE_TPU_ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY = "cloud.google.com/gke-tpu-topology"


@dataclass(frozen=True)
class Children:
    """Everything one resource owns, in the order it must be created."""

    config_map: dict | None
    job: dict
    service: dict | None = None

    def objects(self) -> list[dict]:
        return [o for o in (self.config_map, self.service, self.job) if o is not None]


def owner_reference(owner: Resource) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Resource, name: str, extra_labels: dict | None = None) -> dict:
    labels = owner_labels(owner.kind, owner.name, owner.uid)
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def build_trainer_service_account(namespace: str, config: OperatorConfig) -> dict:
    """The ServiceAccount every trainer pod runs as (`config.service_account`).

    A real API server refuses to create a pod whose ServiceAccount does not exist, and the
    Job controller only records that as an Event on the Job: the run would wait forever.
    So the operator makes sure it exists in the run's namespace before creating a Job.
    Shared by every run there (no owner); no token is mounted and no role is bound to it."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": config.service_account, "namespace": namespace,
                     "labels": {LABEL_MANAGED_BY: MANAGER, "app.kubernetes.io/component": "trainer"}},
        "automountServiceAccountToken": False,
    }


def config_map_name(owner: Resource, document: dict) -> str:
    """The run-spec ConfigMap's name: the child name plus a hash of the document.

    A changed spec makes a new ConfigMap that the replacement Job mounts; one name for every
    generation would keep the first document (a create of an existing ConfigMap is a 409), and
    the new Job would run with the old spec."""
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:8]
    return f"{child_name(owner.kind, owner.name)}-{digest}"


def run_spec_text(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


def run_document(objects: list[dict]) -> dict | None:
    """The run document a resource's children carry (the Job's pod annotation, or the
    ConfigMap of a document too large for one); None when there is none."""
    for obj in objects:
        if obj.get("kind") == "Job":
            annotations = ((obj["spec"]["template"].get("metadata") or {}).get("annotations") or {})
            if ANNOTATION_RUN_SPEC in annotations:
                return json.loads(annotations[ANNOTATION_RUN_SPEC])
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and CONFIG_FILE in (obj.get("data") or {}):
            return json.loads(obj["data"][CONFIG_FILE])
    return None


def build_config_map(owner: Resource, document: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner, document)),
        "data": {CONFIG_FILE: run_spec_text(document)},
    }


def _is_tpu(pool: Resource | None) -> bool:
    return pool is not None and pool.spec.accelerator.resource_name == TPU_RESOURCE


def _resources(placement: Placement, config: OperatorConfig) -> dict:
    requests = {"cpu": config.cpu_request, "memory": config.memory_request}
    limits: dict[str, str] = {}
    if config.memory_limit:
        limits["memory"] = config.memory_limit
    pool = placement.pool
    if pool is not None and not pool.spec.accelerator.is_cpu:
        count = str(placement.accelerators_per_node)
        requests[pool.spec.accelerator.resource_name] = count
        limits[pool.spec.accelerator.resource_name] = count
    return {"requests": requests, **({"limits": limits} if limits else {})}


def _placement_constraints(pool: Resource | None) -> tuple[dict, list[dict]]:
    if pool is None:
        return {}, []
    selector = dict(pool.spec.node_selector)
    tolerations = [
        {k: v for k, v in {
            "key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
            "tolerationSeconds": t.toleration_seconds,
        }.items() if v is not None}
        for t in pool.spec.tolerations
    ]
    if _is_tpu(pool):
        selector.setdefault(GKE_TPU_ACCELERATOR, pool.spec.accelerator.type)
        if pool.spec.tpu:
            selector.setdefault(GKE_TPU_TOPOLOGY, pool.spec.tpu.topology)
        if not any(t.get("key") == TPU_RESOURCE for t in tolerations):
            tolerations.append({"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return selector, tolerations


def _env(owner: Resource, placement: Placement, config: OperatorConfig, job_name: str) -> list[dict]:
    env = [
        {"name": "GENFORGE_METRICS_HOST", "value": "0.0.0.0"},
        {"name": "GENFORGE_METRICS_PORT", "value": str(config.metrics_port)},
        {"name": "GENFORGE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if _is_tpu(placement.pool):
        env.append({"name": "PJRT_DEVICE", "value": "TPU"})
    if placement.nodes > 1:
        service = job_name
        env += [
            {"name": "MASTER_ADDR", "value": f"{job_name}-0.{service}.{owner.namespace}.svc"},
            {"name": "MASTER_PORT", "value": str(config.rendezvous_port)},
            {"name": "NNODES", "value": str(placement.nodes)},
            {"name": "NPROC_PER_NODE", "value": str(placement.processes_per_node)},
            {"name": "WORLD_SIZE", "value": str(placement.nodes * placement.processes_per_node)},
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        ]
    env += [{"name": k, "value": v} for k, v in config.extra_env]
    return env


def _command(command: str, placement: Placement, config: OperatorConfig) -> list[str]:
    trainer = ["genforge-trainer", command, "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"]
    if placement.nodes == 1 and placement.processes_per_node == 1:
        return trainer
    # torchrun starts one process per accelerator and does the multi-node rendezvous.
    return [
        "torchrun",
        "--nnodes=$(NNODES)" if placement.nodes > 1 else "--nnodes=1",
        f"--nproc_per_node={placement.processes_per_node}",
        *(["--node_rank=$(NODE_RANK)", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]
          if placement.nodes > 1 else ["--standalone"]),
        "--no-python",
        *trainer,
    ]


def _volumes(owner: Resource, config: OperatorConfig, config_map: str | None) -> tuple[list[dict], list[dict]]:
    run_spec = ({"configMap": {"name": config_map}} if config_map else
                {"downwardAPI": {"items": [{"path": CONFIG_FILE, "fieldRef": {
                    "fieldPath": f"metadata.annotations['{ANNOTATION_RUN_SPEC}']"}}]}})
    volumes = [
        {"name": "run-spec", **run_spec},
        {"name": "scratch", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "run-spec", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if config.storage.pvc:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": config.storage.pvc}})
        mounts.append({"name": "data", "mountPath": config.storage.mount_path})
    return volumes, mounts


def _env_from(secret_names: list[str]) -> list[dict]:
    return [{"secretRef": {"name": n}} for n in dict.fromkeys(secret_names) if n]


POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def active_deadline_from_duration(max_duration_seconds: float | None) -> int | None:
    if max_duration_seconds is None:
        return None
    return max(1, math.ceil(max_duration_seconds))


def build_job(
    owner: Resource,
    command: str,
    placement: Placement,
    config: OperatorConfig,
    *,
    secret_names: list[str] | None = None,
    active_deadline_seconds: int | None = None,
    queue_name: str | None = None,
    suspend: bool = False,
    config_map: str | None = None,
    run_spec: str | None = None,
) -> dict:
    """The trainer Job; its pods read the run document `run_spec` from their own annotation,
    or, without one, mount the run-spec ConfigMap `config_map` (see `config_map_name`)."""
    name = child_name(owner.kind, owner.name)
    selector, tolerations = _placement_constraints(placement.pool)
    volumes, mounts = _volumes(owner, config, None if run_spec is not None else (config_map or name))
    container = {
        "name": CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": _command(command, placement, config),
        "env": _env(owner, placement, config, name),
        "ports": [{"name": "metrics", "containerPort": config.metrics_port}],
        "resources": _resources(placement, config),
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env_from = _env_from(list(secret_names or []) + [config.storage.secret_name or ""])
    if env_from:
        container["envFrom"] = env_from
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": config.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "terminationGracePeriodSeconds": config.checkpoint_grace_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    if selector:
        pod_spec["nodeSelector"] = selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    extra_labels = {LABEL_ROLE: command}
    if queue_name:
        extra_labels[LABEL_KUEUE_QUEUE] = queue_name
        if owner.labels.get(LABEL_KUEUE_PRIORITY):  # the run's Kueue priority class, for preemption
            extra_labels[LABEL_KUEUE_PRIORITY] = owner.labels[LABEL_KUEUE_PRIORITY]
    job_spec: dict = {
        "backoffLimit": config.backoff_limit,
        "completions": placement.nodes,
        "parallelism": placement.nodes,
        "podFailurePolicy": {"rules": [
            # Bad configuration, unreadable data, unwritable storage: retrying cannot help.
            {"action": "FailJob", "onExitCodes": {
                "containerName": CONTAINER, "operator": "In", "values": list(PERMANENT_EXIT_CODES)}},
            # Preemption, node drain, eviction: retry without counting against backoffLimit.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {
            "metadata": {"labels": owner_labels(owner.kind, owner.name, owner.uid) | extra_labels},
            "spec": pod_spec,
        },
    }
    if run_spec is not None:
        job_spec["template"]["metadata"]["annotations"] = {ANNOTATION_RUN_SPEC: run_spec}
    if placement.nodes > 1:
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = name
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    if queue_name or suspend:
        # Kueue admits a queued Job by unsuspending it; a suspended run starts suspended.
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(owner, name, extra_labels),
        "spec": job_spec,
    }


def build_headless_service(owner: Resource, config: OperatorConfig) -> dict:
    name = child_name(owner.kind, owner.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [{"name": "rendezvous", "port": config.rendezvous_port, "targetPort": config.rendezvous_port}],
        },
    }


def build_children(
    owner: Resource,
    document: dict,
    placement: Placement,
    config: OperatorConfig,
    *,
    secret_names: list[str] | None = None,
    active_deadline_seconds: int | None = None,
    suspend: bool = False,
) -> Children:
    queue_name = getattr(owner.spec, "queue_name", None)
    text = run_spec_text(document)
    inline = len(text.encode()) <= RUN_SPEC_ANNOTATION_MAX_BYTES
    config_map = None if inline else build_config_map(owner, document)
    job = build_job(
        owner, document["command"], placement, config,
        secret_names=secret_names, active_deadline_seconds=active_deadline_seconds,
        queue_name=queue_name, suspend=suspend,
        config_map=config_map["metadata"]["name"] if config_map else None, run_spec=text if inline else None,
    )
    service = build_headless_service(owner, config) if placement.nodes > 1 else None
    return Children(config_map=config_map, job=job, service=service)
