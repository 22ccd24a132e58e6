"""Reading what the cluster reports about a run's Job and pods. Pure functions of dicts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .builders import CONTAINER
from .vocabulary import KUBERNETES_STARTING_REASONS


@dataclass(frozen=True)
class JobState:
    exists: bool
    suspended: bool = False
    active: int = 0
    succeeded: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""
    active_deadline_seconds: int | None = None
    finished_at: str | None = None  # completionTime, or the Failed condition's transition time
    start_time: str | None = None  # status.startTime: activeDeadlineSeconds counts from it


#: The only parts of a Job's spec that `job_state` reads.
JOB_SPEC_FIELDS = ("suspend", "activeDeadlineSeconds")


def job_view(job: dict) -> dict:
    """What the operator keeps in memory of each of its Jobs: what `job_state` reads and the
    metadata; no managedFields, no pod template (most of a Job's size; thousands are kept)."""
    spec = job.get("spec") or {}
    return {"metadata": _lean_metadata(job), "spec": {k: spec[k] for k in JOB_SPEC_FIELDS if k in spec},
            "status": dict(job.get("status") or {})}


def pod_view(pod: dict) -> dict:
    """What the operator keeps in memory of each trainer pod: its metadata (no managedFields)
    and status — all that `pod_run` and `pod_not_running` read."""
    return {"metadata": _lean_metadata(pod), "status": dict(pod.get("status") or {})}


def _lean_metadata(obj: dict) -> dict:
    return {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}


def job_state(job: dict | None) -> JobState:
    if not job:
        return JobState(exists=False)
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    return JobState(
        exists=True,
        suspended=bool(spec.get("suspend")),
        active=int(status.get("active") or 0),
        succeeded="Complete" in conditions,
        failed=failed is not None,
        reason=(failed or {}).get("reason", ""),
        message=(failed or {}).get("message", ""),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        start_time=status.get("startTime"),
        finished_at=status.get("completionTime") or (failed or conditions.get("Complete") or {}).get(
            "lastTransitionTime"),
    )


@dataclass(frozen=True)
class PodRun:
    """One pod's stretch of running time, as the kubelet reported it."""

    name: str
    index: int
    start: str | None
    end: str | None
    phase: str
    exit_code: int | None = None
    termination: dict = field(default_factory=dict)
    ip: str | None = None


def _container_status(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def _termination_message(text: str | None) -> dict:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        # FallbackToLogsOnError: the tail of the log, not our JSON.
        return {"message": text[-1024:]}
    return data if isinstance(data, dict) else {}


def pod_run(pod: dict) -> PodRun:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    state = _container_status(pod).get("state") or {}
    running = state.get("running") or {}
    terminated = state.get("terminated") or {}
    index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0")
    return PodRun(
        name=meta.get("name", ""),
        index=int(index) if str(index).isdigit() else 0,
        start=terminated.get("startedAt") or running.get("startedAt") or
        (status.get("startTime") if status.get("phase") == "Running" else None),
        end=terminated.get("finishedAt"),
        phase=status.get("phase", "Pending"),
        exit_code=terminated.get("exitCode"),
        termination=_termination_message(terminated.get("message")),
        ip=status.get("podIP"),
    )


#: Container waiting reasons of a pod that is starting normally (no alarm while they last).
STARTING_REASONS = KUBERNETES_STARTING_REASONS


def pod_not_running(pod: dict) -> tuple[str, str] | None:
    """Why a live pod's trainer container is not running: (reason, message), else None.

    None for a pod that runs, has ended or is being deleted. The container's waiting reason
    wins when it is a problem (ImagePullBackOff, ErrImagePull, CreateContainerConfigError,
    CrashLoopBackOff, ...); then the scheduler's (PodScheduled False: Unschedulable, with
    "0/3 nodes are available: ..."); else the pod is starting (ContainerCreating, Pending).
    """
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    state = _container_status(pod).get("state") or {}
    if state.get("running") or state.get("terminated"):
        return None
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or ""
    if reason and reason not in STARTING_REASONS:
        return reason, waiting.get("message") or reason
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return c.get("reason") or "Unschedulable", c.get("message") or "the pod cannot be scheduled"
    if reason:
        return reason, waiting.get("message") or "the container is being created"
    return "Pending", "the pod is waiting to be scheduled and started"


def rank_zero(pods: list[PodRun]) -> PodRun | None:
    """The most recent pod of completion index 0 (the one that reports progress)."""
    candidates = [p for p in pods if p.index == 0]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.start or "", p.name))


def trainer_report(pods: list[PodRun]) -> dict:
    """What the trainer reported when it ended (its termination message, docs/contract.md):
    the latest finished rank-0 pod's, else any pod's; {} when none has ended."""
    finished = sorted((p for p in pods if p.end and p.termination),
                      key=lambda p: (p.index == 0, p.end), reverse=True)
    return finished[0].termination if finished else {}
