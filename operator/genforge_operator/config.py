"""Operator configuration: what the chart's values (or `genforge local`) decide.

Read from the environment (`GENFORGE_*`) into a frozen dataclass: the pure builders take it
as an argument, and the kopf settings, the API client and the metrics server read it. No
other operator module reads the environment (the local cluster, `genforge_local`, has its own).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Storage:
    """Where datasets, checkpoints and artifacts live.

    Either a PVC mounted into every trainer pod at `mount_path` (URIs are then
    `file://<mount_path>/…`) or an object store `uri` (`s3://bucket/prefix`) with
    credentials from `secret_name`, exposed to the trainer as env vars.
    """

    uri: str = "file:///data"
    pvc: str | None = "genforge-data"
    mount_path: str = "/data"
    secret_name: str | None = None


@dataclass(frozen=True)
class OperatorConfig:
    trainer_image: str = "ghcr.io/genforge/trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    storage: Storage = field(default_factory=Storage)
    service_account: str = "genforge-trainer"
    metrics_port: int = 9090
    rendezvous_port: int = 29500
    checkpoint_grace_seconds: int = 120
    backoff_limit: int = 3
    enforcement_interval: float = 5.0
    #: The periodic re-check of unfinished runs (cost, progress, pod start) is spread out so
    #: that it never asks more than this many reconciles per second: each object is looked
    #: at every max(enforcement_interval, unfinished objects / this) seconds. Limits that come
    #: due are checked at their moment regardless (Reconciler.recheck_soon).
    max_ticks_per_second: float = 20.0
    progress_timeout: float = 1.5
    #: How long a run's trainer pods may stay not running (unschedulable, image pull,
    #: container config) before the run says so loudly (Ready reason PodStartTimeout, a
    #: Warning Event, genforge_run_pods_stuck 1 and the chart's alert).
    pod_start_timeout: float = 600.0
    cpu_request: str = "1"
    memory_request: str = "2Gi"
    memory_limit: str | None = None
    extra_env: tuple[tuple[str, str], ...] = ()
    # ---- the operator process (not the Jobs it builds)
    #: An API server to use without credentials: `genforge local` and the tests. Unset in a
    #: cluster, where the pod's ServiceAccount (or a kubeconfig) is used.
    api_server: str | None = None
    #: No API request waits longer: a hung request would hold an object's lock for ever.
    api_timeout: float = 30.0
    #: JSON {path in pods: path here}: where a local kubelet put the pods' volumes.
    path_map_json: str = ""
    workers: int = 8
    #: A silent watch stream must never stall the operator: the server ends it after this long,
    #: the client (a dead peer) 30 s later.
    watch_server_timeout: int = 300
    watch_client_timeout: int | None = None
    #: kopf peering: replicas coordinate through this KopfPeering object (unset: standalone).
    peering: str | None = None
    peering_priority: int | None = None
    #: How long a replica's keep-alive lasts before a standby takes over (None: kopf's 60 s).
    peering_lifetime: int | None = None
    liveness: str = "http://0.0.0.0:8081/healthz"
    log_format: str = "full"
    #: The operator's own /metrics endpoint (`metrics_port` is the trainers').
    operator_metrics_port: int = 8080
    operator_metrics_host: str = "0.0.0.0"

    def path_map(self) -> dict[str, str]:
        """`path_map_json` parsed; ValueError names GENFORGE_PATH_MAP when it is not a JSON object."""
        if not self.path_map_json:
            return {}
        try:
            mapping = json.loads(self.path_map_json)
        except ValueError as exc:
            raise ValueError(f"GENFORGE_PATH_MAP is not JSON: {exc}") from exc
        if not isinstance(mapping, dict):
            raise ValueError("GENFORGE_PATH_MAP must be a JSON object {path in pods: path here}")
        return {str(k): str(v) for k, v in mapping.items()}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        storage = Storage(
            uri=env.get("GENFORGE_STORAGE_URI", Storage.uri),
            pvc=env.get("GENFORGE_STORAGE_PVC", Storage.pvc) or None,
            mount_path=env.get("GENFORGE_STORAGE_MOUNT_PATH", Storage.mount_path),
            secret_name=env.get("GENFORGE_STORAGE_SECRET") or None,
        )
        extra = json.loads(env.get("GENFORGE_TRAINER_EXTRA_ENV", "{}"))
        server_timeout = int(env.get("GENFORGE_WATCH_SERVER_TIMEOUT") or cls.watch_server_timeout)
        return cls(
            trainer_image=env.get("GENFORGE_TRAINER_IMAGE", cls.trainer_image),
            image_pull_policy=env.get("GENFORGE_IMAGE_PULL_POLICY", cls.image_pull_policy),
            storage=storage,
            service_account=env.get("GENFORGE_TRAINER_SERVICE_ACCOUNT", cls.service_account),
            enforcement_interval=float(env.get("GENFORGE_ENFORCEMENT_INTERVAL", cls.enforcement_interval)),
            max_ticks_per_second=float(env.get("GENFORGE_MAX_TICKS_PER_SECOND") or cls.max_ticks_per_second),
            checkpoint_grace_seconds=int(env.get("GENFORGE_CHECKPOINT_GRACE_SECONDS", cls.checkpoint_grace_seconds)),
            backoff_limit=int(env.get("GENFORGE_BACKOFF_LIMIT", cls.backoff_limit)),
            pod_start_timeout=float(env.get("GENFORGE_POD_START_TIMEOUT", cls.pod_start_timeout)),
            cpu_request=env.get("GENFORGE_TRAINER_CPU_REQUEST", cls.cpu_request),
            memory_request=env.get("GENFORGE_TRAINER_MEMORY_REQUEST", cls.memory_request),
            memory_limit=env.get("GENFORGE_TRAINER_MEMORY_LIMIT") or None,
            extra_env=tuple(sorted((str(k), str(v)) for k, v in extra.items())),
            api_server=env.get("GENFORGE_API_SERVER") or None,
            api_timeout=float(env.get("GENFORGE_API_TIMEOUT") or cls.api_timeout),
            path_map_json=env.get("GENFORGE_PATH_MAP", ""),
            workers=int(env.get("GENFORGE_WORKERS") or cls.workers),
            watch_server_timeout=server_timeout,
            watch_client_timeout=int(env.get("GENFORGE_WATCH_CLIENT_TIMEOUT") or server_timeout + 30),
            peering=env.get("GENFORGE_PEERING") or None,
            peering_priority=_int_or_none(env.get("GENFORGE_PEERING_PRIORITY")),
            peering_lifetime=_int_or_none(env.get("GENFORGE_PEERING_LIFETIME")),
            liveness=env.get("GENFORGE_LIVENESS") or cls.liveness,
            log_format=env.get("GENFORGE_LOG_FORMAT") or cls.log_format,
            operator_metrics_port=int(env.get("GENFORGE_METRICS_PORT") or cls.operator_metrics_port),
            operator_metrics_host=env.get("GENFORGE_METRICS_HOST") or cls.operator_metrics_host,
        )


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


def bundled_dir_override(name: str) -> str | None:
    """`GENFORGE_<NAME>_DIR`: where the shipped `crds/`, `examples/` or `charts/` folder is."""
    return os.environ.get(f"GENFORGE_{name.upper()}_DIR") or None
