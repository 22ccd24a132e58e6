"""The Job controller's and the kubelet's decisions, as pure functions of dicts.

`executor.py` does the I/O (watching, processes, status writes); everything it decides —
the Job's defaults, the pods it should create, how a pod's failure counts under
`podFailurePolicy`, the Job's status and conditions, the pod's env and command as the
kubelet would give them — is computed here from data, so it is tested with tables.

Kubernetes behaviour followed (batch/v1 Job, kube 1.33):

* pods are named `<job>-<rand5>` (`<job>-<index>-<rand5>` for Indexed Jobs), carry the
  template's labels plus `batch.kubernetes.io/job-name`, `job-name`,
  `batch.kubernetes.io/controller-uid`, `controller-uid` (and the completion index as
  label and annotation), a controller ownerReference to the Job and the
  `batch.kubernetes.io/job-tracking` finalizer (removed once the pod is counted);
* a failed pod is matched against `podFailurePolicy` rules in order (`FailJob`,
  `Ignore`, `Count`); counted failures beyond `backoffLimit` fail the Job with
  `BackoffLimitExceeded`; `activeDeadlineSeconds` runs from `status.startTime` (reset
  on resume) and fails it with `DeadlineExceeded`;
* the terminal conditions (`Complete`, `Failed`) are added once no pod is left running;
  `SuccessCriteriaMet` / `FailureTarget` mark the decision at once;
* with a `podFailurePolicy` (or `podReplacementPolicy: Failed`) a replacement pod waits
  until the pod it replaces has fully terminated.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

Body = dict[str, Any]

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"

# Job condition reasons (k8s.io/api/batch/v1).
REASON_BACKOFF_LIMIT = "BackoffLimitExceeded"
REASON_DEADLINE = "DeadlineExceeded"
REASON_POD_FAILURE_POLICY = "PodFailurePolicy"
REASON_COMPLETIONS_REACHED = "CompletionsReached"
REASON_SUSPENDED = "JobSuspended"
REASON_RESUMED = "JobResumed"

TERMINATION_MESSAGE_LIMIT = 4096  # bytes, the kubelet's cap
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: the last 80 lines or 2048 bytes, whichever is less
FALLBACK_LOG_BYTES = 2048

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s utilrand: no vowels, no confusable digits


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def timestamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(length))


# --------------------------------------------------------------------------- the Job's spec


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A Job's spec with the API server's defaults applied."""

    indexed: bool
    completions: int | None  # None: NonIndexed "work queue" Job, done when any pod succeeds
    parallelism: int
    backoff_limit: int
    active_deadline_seconds: int | None
    suspend: bool
    pod_failure_rules: tuple[Body, ...]
    wait_for_terminating: bool  # podReplacementPolicy: Failed
    template: Body

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobSpec:
        spec = job.get("spec") or {}
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions")
        parallelism = spec.get("parallelism")
        if completions is None and parallelism is None:
            completions = 1  # the API server's default: one pod, one completion
        if parallelism is None:
            parallelism = 1
        policy = spec.get("podFailurePolicy") or {}
        replacement = spec.get("podReplacementPolicy") or ("Failed" if policy else "TerminatingOrFailed")
        return cls(
            indexed=indexed,
            completions=int(completions) if completions is not None else (1 if indexed else None),
            parallelism=int(parallelism),
            backoff_limit=int(spec["backoffLimit"]) if spec.get("backoffLimit") is not None else 6,
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            suspend=bool(spec.get("suspend")),
            pod_failure_rules=tuple(policy.get("rules") or ()),
            wait_for_terminating=replacement == "Failed",
            template=spec.get("template") or {},
        )


def is_finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def condition(conditions: Iterable[Body], kind: str) -> Body | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def set_condition(conditions: list[Body], kind: str, status: str, reason: str, message: str,
                  now: datetime.datetime) -> list[Body]:
    """Conditions with `kind` set; `lastTransitionTime` changes only when the status flips."""
    stamp = timestamp(now)
    out = []
    found = False
    for c in conditions:
        if c.get("type") == kind:
            found = True
            flipped = c.get("status") != status
            c = {**c, "status": status, "reason": reason, "message": message, "lastProbeTime": stamp}
            if flipped:
                c["lastTransitionTime"] = stamp
        out.append(c)
    if not found:
        out.append({"type": kind, "status": status, "reason": reason, "message": message,
                    "lastProbeTime": stamp, "lastTransitionTime": stamp})
    return out


def compress_indexes(indexes: Iterable[int]) -> str:
    """`{0, 1, 2, 5}` → `"0-2,5"`, the format of `status.completedIndexes`."""
    out: list[str] = []
    ordered = sorted(set(indexes))
    start = prev = None
    for i in ordered:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """The Job controller's exponential back-off before the next pod after `failures`."""
    if failures <= 0 or base <= 0:
        return 0.0
    return min(cap, base * 2 ** (failures - 1))


# --------------------------------------------------------------------------- pods


def pod_name(job_name: str, index: int | None, suffix: str | None = None) -> str:
    suffix = suffix or random_suffix()
    return f"{job_name}-{index}-{suffix}" if index is not None else f"{job_name}-{suffix}"


def build_pod(job: Mapping[str, Any], index: int | None, name: str, node_name: str) -> Body:
    """The Pod the Job controller creates for `job` (and the scheduler binds to `node_name`)."""
    meta = job["metadata"]
    template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.update({JOB_NAME_LABEL: meta["name"], LEGACY_JOB_NAME_LABEL: meta["name"],
                   CONTROLLER_UID_LABEL: meta["uid"], LEGACY_CONTROLLER_UID_LABEL: meta["uid"]})
    annotations = dict(tmeta.get("annotations") or {})
    spec = template.get("spec") or {}
    spec["nodeName"] = node_name
    if index is not None:
        labels[COMPLETION_INDEX] = str(index)
        annotations[COMPLETION_INDEX] = str(index)
        spec.setdefault("hostname", f"{meta['name']}-{index}")
    pod_meta: Body = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": labels,
        "finalizers": [TRACKING_FINALIZER],
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                             "controller": True, "blockOwnerDeletion": True}],
    }
    if annotations:
        pod_meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    """How a pod ended, as the Job controller sees it."""

    name: str
    index: int | None
    succeeded: bool
    exit_code: int | None
    container: str = "trainer"
    conditions: tuple[Body, ...] = ()


@dataclasses.dataclass(frozen=True)
class FailureVerdict:
    action: str  # FailJob | Ignore | Count
    message: str = ""


def judge_failure(rules: Iterable[Mapping[str, Any]], pod: PodOutcome, namespace: str) -> FailureVerdict:
    """The first `podFailurePolicy` rule that matches a failed pod decides; none matched: Count."""
    for i, rule in enumerate(rules):
        action = rule.get("action", "Count")
        on_exit = rule.get("onExitCodes")
        if on_exit is not None:
            wanted = on_exit.get("containerName")
            code = pod.exit_code
            if code not in (None, 0) and (wanted is None or wanted == pod.container):
                values = set(on_exit.get("values") or ())
                matched = code in values if on_exit.get("operator", "In") == "In" else code not in values
                if matched:
                    return FailureVerdict(action, f"Container {pod.container} for pod {namespace}/{pod.name} "
                                                  f"failed with exit code {code} matching {action} rule at index {i}")
        for pattern in rule.get("onPodConditions") or ():
            for cond in pod.conditions:
                if cond.get("type") == pattern.get("type") and cond.get("status") == pattern.get("status", "True"):
                    return FailureVerdict(action, f"Pod {namespace}/{pod.name} has condition {cond['type']} "
                                                  f"matching {action} rule at index {i}")
    return FailureVerdict("Count")


def pods_wanted(spec: JobSpec, *, succeeded: int, succeeded_indexes: set[int],
                running_indexes: Iterable[int | None], running: int) -> list[int | None]:
    """The completion indexes (None for NonIndexed) of the pods to create now."""
    if spec.suspend:
        return []
    room = spec.parallelism - running
    if room <= 0:
        return []
    if spec.indexed:
        busy = set(running_indexes)
        todo = [i for i in range(spec.completions or 0) if i not in succeeded_indexes and i not in busy]
        return list(todo[:room])
    if spec.completions is None:  # work queue: run `parallelism` pods until one succeeds
        return [] if succeeded else [None] * room
    return [None] * max(0, min(room, spec.completions - succeeded - running))


def completed(spec: JobSpec, succeeded: int, succeeded_indexes: set[int], running: int) -> bool:
    if spec.indexed:
        return len(succeeded_indexes) >= (spec.completions or 0)
    if spec.completions is None:
        return succeeded > 0 and running == 0
    return succeeded >= spec.completions


# --------------------------------------------------------------------------- the kubelet's view

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes a `$`, the rest stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(replace, text)


class ConfigError(Exception):
    """The kubelet cannot build the container's config (a missing Secret or key): it waits and retries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A `fieldRef` as the kubelet resolves it (the downward API)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    keyed = _FIELD_KEY.match(path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"), "status.podIPs": status.get("podIP"),
        "status.hostIPs": status.get("hostIP"),
    }
    if path not in simple:
        raise ConfigError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
    return str(simple[path] or "")


def _key_ref(ref: Mapping[str, Any], objects: Mapping[str, Mapping[str, str] | None], what: str) -> str | None:
    data = objects.get(ref.get("name", ""))
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ConfigError("CreateContainerConfigError", f'{what} "{ref.get("name")}" not found')
    if ref.get("key") not in data:
        if optional:
            return None
        raise ConfigError("CreateContainerConfigError",
                          f'couldn\'t find key {ref.get("key")} in {what} {ref.get("name")}')
    return data[ref["key"]]


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], *,
                  config_maps: Mapping[str, Mapping[str, str] | None],
                  secrets_: Mapping[str, Mapping[str, str] | None], cpu_count: int = 1) -> dict[str, str]:
    """The container's environment: `envFrom` first, then `env` (which wins), with `$(VAR)` expanded.

    `config_maps` / `secrets_` map names to their decoded data (None: does not exist).
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, objects, what in (("configMapRef", config_maps, "configmap"), ("secretRef", secrets_, "secret")):
            ref = source.get(kind)
            if ref is None:
                continue
            data = objects.get(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError("CreateContainerConfigError", f'{what} "{ref.get("name")}" not found')
            for key, value in data.items():
                env[prefix + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            value = _key_ref(source["configMapKeyRef"], config_maps, "configmap")
        elif "secretKeyRef" in source:
            value = _key_ref(source["secretKeyRef"], secrets_, "secret")
        elif "resourceFieldRef" in source:
            value = _resource_field(container, source["resourceFieldRef"], cpu_count)
        else:
            raise ConfigError("CreateContainerConfigError", f"unsupported valueFrom for {name}")
        if value is not None:
            env[name] = value
    return env


_QUANTITY_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity (`500m`, `2Gi`, `1.5`) as a number."""
    match = re.fullmatch(r"\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2) not in _QUANTITY_SUFFIX:
        raise ConfigError("CreateContainerConfigError", f"invalid quantity {text!r}")
    return float(match.group(1)) * _QUANTITY_SUFFIX[match.group(2)]


def _resource_field(container: Mapping[str, Any], ref: Mapping[str, Any], cpu_count: int) -> str:
    where, _, what = str(ref.get("resource", "")).partition(".")
    value = ((container.get("resources") or {}).get(where) or {}).get(what)
    if value is None:  # an unset limit reads as the node's allocatable
        value = str(cpu_count) if what == "cpu" else "0"
    return str(math.ceil(parse_quantity(str(value)) / parse_quantity(str(ref.get("divisor", "1")))))


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    return [expand(str(part), env) for part in (container.get("command") or []) + (container.get("args") or [])]


def termination_message(written: bytes, log_tail: bytes, *, failed: bool, policy: str | None) -> str:
    """The container's `terminated.message`: the file (≤ 4096 bytes), else the log tail on error."""
    text = written[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    if text or not failed or policy != "FallbackToLogsOnError":
        return text
    lines = log_tail.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return b"".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")


def exit_code_of(returncode: int) -> int:
    """A process's return code as a container runtime reports it (a signal N is 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode
