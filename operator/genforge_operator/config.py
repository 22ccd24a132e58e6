"""Operator configuration: what the chart's values (or `genforge local`) decide.

Read once from the environment (`GENFORGE_*`) into a frozen dataclass that the pure
builders take as an argument; nothing else reads the environment.
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
    progress_timeout: float = 1.5
    #: How long a run's trainer pods may stay not running (unschedulable, image pull,
    #: container config) before the run says so loudly (Ready reason PodStartTimeout, a
    #: Warning Event, genforge_run_pods_stuck 1 and the chart's alert).
    pod_start_timeout: float = 600.0
    cpu_request: str = "1"
    memory_request: str = "2Gi"
    memory_limit: str | None = None
    extra_env: tuple[tuple[str, str], ...] = ()

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
        return cls(
            trainer_image=env.get("GENFORGE_TRAINER_IMAGE", cls.trainer_image),
            image_pull_policy=env.get("GENFORGE_IMAGE_PULL_POLICY", cls.image_pull_policy),
            storage=storage,
            service_account=env.get("GENFORGE_TRAINER_SERVICE_ACCOUNT", cls.service_account),
            enforcement_interval=float(env.get("GENFORGE_ENFORCEMENT_INTERVAL", cls.enforcement_interval)),
            checkpoint_grace_seconds=int(env.get("GENFORGE_CHECKPOINT_GRACE_SECONDS", cls.checkpoint_grace_seconds)),
            backoff_limit=int(env.get("GENFORGE_BACKOFF_LIMIT", cls.backoff_limit)),
            pod_start_timeout=float(env.get("GENFORGE_POD_START_TIMEOUT", cls.pod_start_timeout)),
            cpu_request=env.get("GENFORGE_TRAINER_CPU_REQUEST", cls.cpu_request),
            memory_request=env.get("GENFORGE_TRAINER_MEMORY_REQUEST", cls.memory_request),
            memory_limit=env.get("GENFORGE_TRAINER_MEMORY_LIMIT") or None,
            extra_env=tuple(sorted((str(k), str(v)) for k, v in extra.items())),
        )
