"""The local executor: the Job controller and the kubelet, for Jobs in an (emulated) API server.

It watches Jobs over plain HTTP, creates their Pod objects the way the Job controller
does, and runs each pod's container command as a local process the way a kubelet
would (`LocalNode`, node.py: what a pod's process gets, how it is stopped), writing Pod
and Job status back. The decisions are pure (`jobcontrol.py`); this module is the Job
controller's I/O: watches, pod objects, status writes.

Pods carry the Job controller's `batch.kubernetes.io/job-tracking` finalizer, so a
deleted pod stays visible (with its terminated state and `finishedAt`) until its process
has ended and it has been counted.

Not emulated: `restartPolicy: OnFailure` restarts in place (treated as `Never`),
`backoffLimitPerIndex`, `successPolicy`, and what node.py lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

from . import jobcontrol as jc
from .api_client import ApiError, Body, jobs_path, pods_path
from .node import (
    CONFIG_RETRY_SECONDS,
    HOST_IP,
    LOG_ANNOTATION,
    LocalNode,
    ProcessInfo,
    TrackedJob,
    TrackedPod,
)

logger = logging.getLogger(__name__)


class LocalExecutor(LocalNode):
    """Runs the pods of every Job in the API at `api_url` as local processes.

        executor = LocalExecutor("http://127.0.0.1:PORT", data_dir="/tmp/genforge")
        executor.start()    # returns once it watches Jobs and Pods
        ...
        executor.stop()     # SIGTERM every process, SIGKILL after the grace period

    `pvc_dirs` maps a claim name to its local folder (default: `<data>/volumes/<ns>/<claim>`);
    `backoff_base`/`backoff_cap` shape the delay before a failed pod is replaced (the
    Job controller's 10 s doubling to 6 min, shortened for a laptop); `shutdown_grace`
    caps each pod's grace period on `stop()`; `namespace` limits it to the Jobs of one
    namespace (tests run one executor per namespace).
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike[str], *, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0, register_node: bool = True, **options: Any):
        super().__init__(api_url, data_dir, **options)
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.register_node = register_node
        self._jobs_url = f"/apis/batch/v1{self._scope}/jobs"
        self._jobs: dict[str, TrackedJob] = {}

    def processes(self) -> list[ProcessInfo]:
        """The pod processes running now."""
        return self._call(lambda: [
            ProcessInfo(p.namespace, p.name, p.job.name, p.index, p.process.pid, p.ip, p.log_path)
            for job in self._jobs.values() for p in job.pods.values()
            if p.process is not None and p.process.returncode is None])

    def evict(self, namespace: str, pod: str, timeout: float = 10.0) -> None:
        """Evict a pod as a node drain or a spot preemption would: a `DisruptionTarget`
        condition (which `podFailurePolicy` rules can `Ignore`), then graceful deletion."""
        future = asyncio.run_coroutine_threadsafe(self._evict(namespace, pod), self._require_loop())
        future.result(timeout)

    # --- the loop --------------------------------------------------------------------------

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        await self._api.open()
        try:
            if self.register_node:
                await self._register_node()
            job_rv = await self._relist_jobs()
            pod_rv = (await self._api.request("GET", self._pods_url))["metadata"]["resourceVersion"]
            watches = [asyncio.create_task(self._watch_loop(self._jobs_url, job_rv, self._on_job, self._relist_jobs)),
                       asyncio.create_task(self._watch_loop(self._pods_url, pod_rv, self._on_pod, self._relist_pods))]
            self._ready.set()
            await self._stopping.wait()
            await self._shutdown()
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
        finally:
            await self._api.close()

    async def _shutdown(self) -> None:
        self._closing = True
        pods = [p for job in self._jobs.values() for p in job.pods.values() if not p.done.is_set()]
        for p in pods:
            self._stop_pod(p, "shutdown", min(p.grace, self.shutdown_grace), delete=False)
        if pods:
            await asyncio.wait([asyncio.create_task(p.done.wait()) for p in pods],
                               timeout=self.shutdown_grace + 5)
        for job in self._jobs.values():
            if job.task is not None:
                job.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(j.task for j in self._jobs.values() if j.task), return_exceptions=True)

    async def _relist_jobs(self) -> str:
        listing = await self._api.request("GET", self._jobs_url)
        seen = set()
        for job in listing.get("items") or []:
            seen.add(job["metadata"]["uid"])
            self._on_job("ADDED", job)
        for uid, job in list(self._jobs.items()):
            if uid not in seen:
                self._on_job("DELETED", job.body)
        return listing["metadata"]["resourceVersion"]

    async def _register_node(self) -> None:
        path = f"/api/v1/nodes/{self.node_name}"
        if await self._api.get(path) is None:
            with contextlib.suppress(ApiError):
                await self._api.request("POST", "/api/v1/nodes", {
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.node_name, "labels": {
                        "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": sys.platform,
                        "node.kubernetes.io/instance-type": "local"}}})
        cpus, now = str(os.cpu_count() or 1), jc.timestamp(jc.now_utc())
        await self._api.patch(path + "/status", {"status": {
            "capacity": {"cpu": cpus, "pods": "110"}, "allocatable": {"cpu": cpus, "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "genforge local executor is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "genforge-local", "operatingSystem": sys.platform,
                         "architecture": os.uname().machine, "containerRuntimeVersion": "local-process://"}}})

    # --- Jobs ------------------------------------------------------------------------------

    def _on_job(self, kind: str, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        job = self._jobs.get(uid) if uid else None
        if kind == "DELETED":
            if job is not None and job.closed:
                self._jobs.pop(job.uid, None)
            elif job is not None:
                job.deleted = True
                job.wake.set()
            return
        if job is None:
            if not uid or jc.is_finished(obj):
                return  # finished before this executor saw it: nothing to run
            status = obj.get("status") or {}
            job = TrackedJob(uid=uid, namespace=meta["namespace"], name=meta["name"], body=obj,
                             start_time=jc.parse_timestamp(status.get("startTime")),
                             succeeded=int(status.get("succeeded") or 0), failed=int(status.get("failed") or 0),
                             conditions=list(status.get("conditions") or []), status_written=dict(status))
            self._jobs[uid] = job
            job.task = asyncio.get_running_loop().create_task(self._job_loop(job))
        elif _newer(obj, job.body):
            job.body = obj
        job.wake.set()

    async def _job_loop(self, job: TrackedJob) -> None:
        while not job.closed:
            await job.wake.wait()
            job.wake.clear()
            try:
                await self._sync(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("syncing Job %s/%s failed; retrying", job.namespace, job.name)
                self._wake_later(job, 1.0)
        if job.deleted:  # a finished Job stays known (late events must not start it again) until deleted
            self._jobs.pop(job.uid, None)

    def _wake_later(self, job: TrackedJob, delay: float) -> None:
        """Sync `job` again in `delay` s (one timer per Job: the earliest wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if job.timer is not None and not job.timer.cancelled() and loop.time() <= job.timer.when() <= when:
            return
        if job.timer is not None:
            job.timer.cancel()
        job.timer = loop.call_at(when, job.wake.set)

    async def _sync(self, job: TrackedJob) -> None:
        """One pass of the Job controller over one Job: count, decide, create or stop pods, write status."""
        spec = jc.JobSpec.of(job.body)
        now = jc.now_utc()
        if job.deleted:
            for p in job.pods.values():
                if not p.done.is_set():
                    self._stop_pod(p, "deleted", p.grace, delete=False)
            if all(p.done.is_set() for p in job.pods.values()):
                job.closed = True
            return
        if self._closing:
            return
        if job.status_written is not None and jc.is_finished({"status": job.status_written}):
            job.closed = all(p.done.is_set() for p in job.pods.values())
            return

        self._count_finished(job, spec, now)
        running = [p for p in job.pods.values() if not p.done.is_set()]
        active = [p for p in running if p.stop_reason is None]

        if job.failure is None and not job.success:
            if job.failed > spec.backoff_limit:
                job.failure = (jc.REASON_BACKOFF_LIMIT, "Job has reached the specified backoff limit")
            elif jc.completed(spec, job.succeeded, job.succeeded_indexes, len(active)):
                job.success = True
            elif (not spec.suspend and spec.active_deadline_seconds is not None and job.start_time is not None
                  and now >= job.start_time + datetime.timedelta(seconds=spec.active_deadline_seconds)):
                job.failure = (jc.REASON_DEADLINE, "Job was active longer than specified deadline")
            if job.failure is not None:
                self._event(job.ref(), "Warning", job.failure[0], job.failure[1], "job-controller")

        if job.failure is not None:
            reason, message = job.failure
            for p in active:
                self._stop_pod(p, "failed", p.grace)
            job.conditions = jc.set_condition(job.conditions, "FailureTarget", "True", reason, message, now)
            if not running:
                job.conditions = jc.set_condition(job.conditions, "Failed", "True", reason, message, now)
        elif job.success:
            for p in active:
                self._stop_pod(p, "succeeded", p.grace)
            message = "Reached expected number of succeeded pods"
            job.conditions = jc.set_condition(job.conditions, "SuccessCriteriaMet", "True",
                                              jc.REASON_COMPLETIONS_REACHED, message, now)
            if not running:
                job.completion_time = job.completion_time or now
                job.conditions = jc.set_condition(job.conditions, "Complete", "True",
                                                  jc.REASON_COMPLETIONS_REACHED, message, now)
                self._event(job.ref(), "Normal", "Completed", "Job completed", "job-controller")
        elif spec.suspend:
            for p in active:
                self._stop_pod(p, "suspend", p.grace)
            suspended = jc.condition(job.conditions, "Suspended")
            if suspended is None or suspended.get("status") != "True":
                job.conditions = jc.set_condition(job.conditions, "Suspended", "True", jc.REASON_SUSPENDED,
                                                  "Job suspended", now)
                self._event(job.ref(), "Normal", "Suspended", "Job suspended", "job-controller")
        else:
            suspended = jc.condition(job.conditions, "Suspended")
            if suspended is not None and suspended.get("status") == "True":
                job.conditions = jc.set_condition(job.conditions, "Suspended", "False", jc.REASON_RESUMED,
                                                  "Job resumed", now)
                job.start_time = now  # the activeDeadlineSeconds timer starts anew
                self._event(job.ref(), "Normal", "Resumed", "Job resumed", "job-controller")
            job.start_time = job.start_time or now
            self._create_pods(job, spec, running, active)
            if spec.active_deadline_seconds is not None:
                deadline = job.start_time + datetime.timedelta(seconds=spec.active_deadline_seconds)
                self._wake_later(job, (deadline - jc.now_utc()).total_seconds() + 0.01)

        # As the real Job controller orders it (uncountedTerminatedPods): a finished pod's
        # tracking finalizer is removed before the Job's status counts it, so a counted pod
        # never still carries it.
        await self._release_counted(job)
        await self._write_job_status(job, spec)

    def _count_finished(self, job: TrackedJob, spec: jc.JobSpec, now: datetime.datetime) -> None:
        for p in job.pods.values():
            if not p.done.is_set() or p.counted:
                continue
            p.counted = True
            if p.succeeded:
                if p.index is not None:
                    job.succeeded_indexes.add(p.index)
                job.succeeded = len(job.succeeded_indexes) if spec.indexed else job.succeeded + 1
                continue
            if p.stop_reason in ("suspend", "succeeded", "shutdown") or p.uid is None:
                continue  # stopped by the controller (or never created): not a failure of the pod
            if job.failure is not None or p.stop_reason == "failed":
                job.failed += 1
                continue
            outcome = jc.PodOutcome(p.name, p.index, False, p.exit_code, container=self._container_name(job),
                                    conditions=(p.disruption,) if p.disruption else ())
            verdict = jc.judge_failure(spec.pod_failure_rules, outcome, job.namespace)
            if verdict.action == "Ignore":
                continue
            job.failed += 1
            job.last_failure = time.monotonic()
            if verdict.action == "FailJob":
                job.failure = (jc.REASON_POD_FAILURE_POLICY, verdict.message)

    def _create_pods(self, job: TrackedJob, spec: jc.JobSpec, running: list[TrackedPod], active: list[TrackedPod]) -> None:
        if spec.wait_for_terminating and len(running) > len(active):
            return  # podReplacementPolicy: Failed — the replaced pod must be gone first
        if job.create_blocked_until > time.monotonic():
            self._wake_later(job, job.create_blocked_until - time.monotonic())
            return
        if job.last_failure is not None:
            delay = jc.backoff_delay(job.failed, self.backoff_base, self.backoff_cap)
            wait = job.last_failure + delay - time.monotonic()
            if wait > 0:
                self._wake_later(job, wait)
                return
        wanted = jc.pods_wanted(spec, succeeded=job.succeeded, succeeded_indexes=job.succeeded_indexes,
                                running_indexes=[p.index for p in active], running=len(active))
        for index in wanted:
            name = jc.pod_name(job.name, index)
            while name in job.pods:
                name = jc.pod_name(job.name, index)
            pod = TrackedPod(job=job, name=name, index=index, log_path=self.log_path(job.namespace, name),
                             work_dir=self.work_dir / job.namespace / name)
            job.pods[name] = pod
            pod.task = self._spawn(self._run_pod(pod))

    def _job_status(self, job: TrackedJob, spec: jc.JobSpec) -> Body:
        running = [p for p in job.pods.values() if not p.done.is_set()]
        active = [p for p in running if p.stop_reason is None]
        status: Body = {
            "active": len(active),
            "ready": sum(1 for p in active if p.process is not None),
            "terminating": len(running) - len(active),
            "succeeded": job.succeeded,
            "failed": job.failed,
            "conditions": job.conditions,
        }
        for key in ("active", "succeeded", "failed"):
            if not status[key]:
                del status[key]
        if not status["conditions"]:
            del status["conditions"]
        if job.start_time is not None:
            status["startTime"] = jc.timestamp(job.start_time)
        if job.completion_time is not None:
            status["completionTime"] = jc.timestamp(job.completion_time)
        if spec.indexed and job.succeeded_indexes:
            status["completedIndexes"] = jc.compress_indexes(job.succeeded_indexes)
        return status

    async def _write_job_status(self, job: TrackedJob, spec: jc.JobSpec) -> None:
        status = self._job_status(job, spec)
        if status == job.status_written:
            return
        patch = _status_diff(job.status_written or {}, status)
        result = await self._api.patch(jobs_path(job.namespace, job.name, "status"), {"status": patch})
        job.status_written = copy.deepcopy(status)
        if result is not None and _newer(result, job.body):
            job.body = result

    async def _release_counted(self, job: TrackedJob) -> None:
        """Drop the tracking finalizer of pods already counted in the Job's status."""
        for p in list(job.pods.values()):
            if p.counted and not p.released:
                p.released = True
                await self._release(p)
            if p.released and (p.gone or p.uid is None):
                job.pods.pop(p.name, None)

    async def _release(self, p: TrackedPod) -> None:
        if p.gone or p.uid is None:
            return
        current = await self._api.get(pods_path(p.namespace, p.name))
        if current is None or (current.get("metadata") or {}).get("uid") != p.uid:
            return
        finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != jc.TRACKING_FINALIZER]
        await self._api.patch(pods_path(p.namespace, p.name), {"metadata": {
            "finalizers": finalizers or None, "resourceVersion": current["metadata"]["resourceVersion"]}})

    # --- Pods: watch -----------------------------------------------------------------------

    def _on_pod(self, kind: str, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        p = self._pods_by_uid.get(meta.get("uid", ""))
        if p is None:
            return
        if kind == "DELETED":
            p.gone = True
            self._pods_by_uid.pop(meta["uid"], None)
            # Not its address: its process may still be ending (a forced deletion does not
            # wait); `_run_container` gives that back once the process has ended.
            if not p.done.is_set():
                self._stop_pod(p, "deleted", p.grace, delete=False)
            p.job.wake.set()
            return
        p.body = obj
        if meta.get("deletionTimestamp") and not p.deleting:
            p.deleting = True
            if not p.done.is_set():
                self._stop_pod(p, "deleted", p.grace, delete=False)
            p.job.wake.set()

    async def _evict(self, namespace: str, name: str) -> None:
        p = next((p for job in self._jobs.values() for p in job.pods.values()
                  if p.namespace == namespace and p.name == name), None)
        if p is None:
            raise LookupError(f"no pod {namespace}/{name} is run by this executor")
        now = jc.timestamp(jc.now_utc())
        p.disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                        "message": "Eviction API: evicting", "lastTransitionTime": now}
        if p.body is not None:
            conditions = [c for c in (p.body.get("status") or {}).get("conditions") or []
                          if c.get("type") != "DisruptionTarget"] + [p.disruption]
            await self._api.patch(pods_path(namespace, name, "status"), {"status": {"conditions": conditions}})
        await self._api.delete(pods_path(namespace, name))

    # --- Pods: the Job controller's part -------------------------------------------------------

    async def _run_pod(self, p: TrackedPod) -> None:
        job = p.job
        try:
            await self._create_pod_object(p)
            if p.uid is None:
                return
            await self._run_container(p)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("running pod %s/%s failed", p.namespace, p.name)
            if p.exit_code is None:
                p.exit_code, p.reason = 128, "StartError"
        finally:
            if p.process is not None:
                self._kill_group(p)
                self._pgids.discard(p.process.pid)
            self._release_ip(p)
            p.done.set()
            p.stopped.set()
            job.wake.set()
            if job.closed or job.deleted:  # nobody will count it: let it go
                p.released = True
                with contextlib.suppress(Exception):
                    await self._release(p)
            shutil.rmtree(p.work_dir, ignore_errors=True)

    async def _create_pod_object(self, p: TrackedPod) -> None:
        job = p.job
        while True:
            body = jc.build_pod(job.body, p.index, p.name, self.node_name)
            body["metadata"].setdefault("annotations", {})[LOG_ANNOTATION] = str(p.log_path)
            try:
                created = await self._api.request("POST", pods_path(job.namespace), body)
            except ApiError as e:
                if e.status == 409:  # a name clash: draw another suffix
                    del job.pods[p.name]
                    p.name = jc.pod_name(job.name, p.index)
                    p.log_path = self.log_path(job.namespace, p.name)
                    p.work_dir = self.work_dir / job.namespace / p.name
                    job.pods[p.name] = p
                    continue
                self._event(job.ref(), "Warning", "FailedCreate", f"Error creating: {e}", "job-controller")
                p.exit_code, p.reason, p.message = None, "FailedCreate", str(e)
                job.create_blocked_until = time.monotonic() + CONFIG_RETRY_SECONDS
                return
            break
        p.body, p.uid = created, created["metadata"]["uid"]
        self._pods_by_uid[p.uid] = p
        self._event(job.ref(), "Normal", "SuccessfulCreate", f"Created pod: {p.name}", "job-controller")
        self._event(self._pod_ref(p), "Normal", "Scheduled",
                    f"Successfully assigned {p.namespace}/{p.name} to {self.node_name}", "default-scheduler")


# ----------------------------------------------------------------------------- helpers


def _status_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Body:
    """A merge patch turning `old` into `new` (lists replaced whole, removed keys nulled)."""
    patch: Body = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = _status_diff(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


def _newer(obj: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `obj` is a later version than `than` (the emulator's resourceVersions are integers)."""
    try:
        return int(obj["metadata"]["resourceVersion"]) >= int(than["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True
