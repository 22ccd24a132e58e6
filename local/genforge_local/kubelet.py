"""The local executor as the kubelet (and the scheduler) of a real kube-apiserver.

With a real control plane (:class:`~.real_cluster.RealCluster`) the Job controller, the
garbage collector and pod creation are Kubernetes' own; what is missing is a node. This
module is that node:

* it registers a ``Node`` (Ready, cpu/memory/pods capacity, extended resources such as
  ``nvidia.com/gpu`` when asked, labels and taints when asked) and renews its ``Lease`` in
  ``kube-node-lease`` every 10 s, so the node-lifecycle controller keeps it Ready;
* as the scheduler it binds each unscheduled pod to the node through the ``pods/binding``
  subresource when the pod fits (nodeSelector, tolerations of the node's taints, extended
  resources not yet allocated) and otherwise writes ``PodScheduled=False`` with reason
  ``Unschedulable`` and a message like the scheduler's; it tries again when a pod ends;
* as the kubelet it runs each pod bound to it as a local process exactly as
  :class:`~.node.LocalNode` does for the executor (same environment, volumes, logs, signals), writes
  its status through ``pods/status``, and on a graceful deletion sends SIGTERM, SIGKILL
  after the grace period, then deletes the pod with grace 0, as a kubelet does.

Nothing of the home-made Job controller (:mod:`.jobcontrol`'s decisions) runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from . import jobcontrol as jc
from .api_client import ApiError, Body, pods_path
from .executor import LocalExecutor
from .node import HOST_IP, TrackedJob, TrackedPod

logger = logging.getLogger(__name__)

LEASE_SECONDS = 40
RENEW_SECONDS = 10.0
DEFAULT_MEMORY = "16Gi"


def _micro_time(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pod_fits(pod: Mapping[str, Any], *, labels: Mapping[str, str], taints: Sequence[Mapping[str, Any]],
             free: Mapping[str, int]) -> str | None:
    """Why `pod` cannot run on the node (a scheduler-style message), or None when it fits."""
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    tolerations = spec.get("tolerations") or []
    for taint in taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    for resource, wanted in extended_requests(pod).items():
        if wanted > free.get(resource, 0):
            return f"Insufficient {resource}"
    return None


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint["key"]
    return toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", "")


def extended_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Integer extended resources (names with a domain, e.g. nvidia.com/gpu) the pod's containers request."""
    wanted: dict[str, int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amounts = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, amount in amounts.items():
            if "/" in name and not name.startswith(("kubernetes.io/", "requests.")):
                wanted[name] = wanted.get(name, 0) + int(str(amount))
    return wanted


class LocalKubelet(LocalExecutor):
    """A Node of a real API server whose pods are local processes.

        kubelet = LocalKubelet(cluster.url, data_dir, ssl_context=cluster.ssl_context(),
                               extended_resources={"nvidia.com/gpu": 4}).start()

    ``labels`` are added to the Node's, ``taints`` set on it; ``extended_resources`` become
    its capacity (and bound what the scheduler part admits); other options are
    :class:`LocalExecutor`'s.
    """

    def __init__(self, api_url: str, data_dir: str | os.PathLike[str], *,
                 labels: Mapping[str, str] | None = None, taints: Sequence[Mapping[str, Any]] = (),
                 extended_resources: Mapping[str, int] | None = None, memory: str = DEFAULT_MEMORY,
                 **options: Any):
        options.setdefault("register_node", True)
        super().__init__(api_url, data_dir, **options)
        self.labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": _go_arch(), **(labels or {})}
        self.taints = [dict(t) for t in taints]
        self.extended_resources = dict(extended_resources or {})
        self.memory = memory
        self._groups: dict[str, TrackedJob] = {}  # pods grouped by their owner (rendezvous ports)
        self._unschedulable: dict[str, str] = {}  # pod uid -> the message written
        self._pending: dict[str, Body] = {}  # unscheduled pods seen, by uid
        self._binding: set[str] = set()
        self._finalising: set[str] = set()
        # The `kubernetes` Service's address, which a kubelet gives every container: here the
        # API server's own loopback endpoint (no kube-proxy), so in-cluster clients reach it.
        endpoint = urllib.parse.urlsplit(api_url)
        self.base_env.update({"KUBERNETES_SERVICE_HOST": endpoint.hostname or HOST_IP,
                              "KUBERNETES_SERVICE_PORT": str(endpoint.port or 443),
                              "KUBERNETES_SERVICE_PORT_HTTPS": str(endpoint.port or 443)})

    # --- the loop ----------------------------------------------------------------------------

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        await self._api.open()
        try:
            await self._register_node()
            await self._renew_lease()
            pod_rv = await self._relist_pods()
            watch = asyncio.create_task(self._watch_loop(self._pods_url, pod_rv, self._on_pod, self._relist_pods))
            heartbeat = asyncio.create_task(self._heartbeat())
            self._ready.set()
            await self._stopping.wait()
            await self._shutdown()
            for task in (watch, heartbeat):
                task.cancel()
            await asyncio.gather(watch, heartbeat, return_exceptions=True)
        finally:
            await self._api.close()

    async def _shutdown(self) -> None:
        self._closing = True
        pods = [p for p in self._pods_by_uid.values() if not p.done.is_set()]
        for p in pods:
            self._stop_pod(p, "shutdown", min(p.grace, self.shutdown_grace), delete=False)
        if pods:
            await asyncio.wait([asyncio.create_task(p.done.wait()) for p in pods], timeout=self.shutdown_grace + 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relist_pods(self) -> str:
        self._pending.clear()  # the listing re-adds the pods still waiting for a node
        return await super()._relist_pods()

    # --- the node ----------------------------------------------------------------------------

    def _capacity(self) -> dict[str, str]:
        cpus = str(os.cpu_count() or 1)
        capacity = {"cpu": cpus, "memory": self.memory, "pods": "110", "ephemeral-storage": "100Gi"}
        capacity.update({name: str(n) for name, n in self.extended_resources.items()})
        return capacity

    def _node_status(self) -> Body:
        now = jc.timestamp(jc.now_utc())
        capacity = self._capacity()
        return {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "genforge local kubelet is posting ready status",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                *({"type": t, "status": "False", "reason": f"KubeletHasSufficient{s}", "message": "",
                   "lastHeartbeatTime": now, "lastTransitionTime": now}
                  for t, s in (("MemoryPressure", "Memory"), ("DiskPressure", "Disk"), ("PIDPressure", "PID"))),
            ],
            "nodeInfo": {"kubeletVersion": "genforge-local", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": _go_arch(), "containerRuntimeVersion": "local-process://",
                         "kernelVersion": os.uname().release, "osImage": sys.platform, "machineID": "",
                         "systemUUID": "", "bootID": ""},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }

    async def _register_node(self) -> None:
        path = f"/api/v1/nodes/{self.node_name}"
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": self.labels},
                "spec": {"taints": self.taints} if self.taints else {}}
        existing = await self._api.get(path)
        if existing is None:
            await self._api.request("POST", "/api/v1/nodes", body)
        else:
            await self._api.patch(path, {"metadata": {"labels": self.labels},
                                         "spec": {"taints": self.taints or None, "unschedulable": None}})
        await self._api.patch(path + "/status", {"status": self._node_status()})

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro_time(jc.now_utc())}
        try:
            await self._api.patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            await self._api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease"}, "spec": spec})

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            beats += 1
            try:
                await self._renew_lease()
                if beats % 6 == 0:  # the node's status once a minute, as a kubelet's nodeStatusReportFrequency
                    await self._api.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("node heartbeat failed: %r", e)

    # --- pods: watch -------------------------------------------------------------------------

    def _on_pod(self, kind: str, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid", "")
        spec = obj.get("spec") or {}
        p = self._pods_by_uid.get(uid)
        if kind == "DELETED":
            self._pending.pop(uid, None)
            self._unschedulable.pop(uid, None)
            if p is not None:
                p.gone = True
                self._pods_by_uid.pop(uid, None)
                self._ips_in_use.discard(p.ip or "")
                if not p.done.is_set():
                    self._stop_pod(p, "deleted", p.grace, delete=False)
            return
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp") and not spec.get("schedulingGates"):
                self._pending[uid] = obj
                self._schedule(obj)
            else:
                self._pending.pop(uid, None)
            return
        self._pending.pop(uid, None)
        if node != self.node_name:
            return
        if p is not None:
            p.body = obj
            if meta.get("deletionTimestamp") and not p.deleting:
                p.deleting = True
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is not None:
                    p.grace = float(grace)
                if not p.done.is_set():
                    self._stop_pod(p, "deleted", p.grace, delete=False)
            if meta.get("deletionTimestamp") and p.done.is_set():
                self._finalise(obj)
            return
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            if meta.get("deletionTimestamp"):
                self._finalise(obj)
            return
        if self._closing:
            return
        if (obj.get("status") or {}).get("containerStatuses"):
            # Started by an earlier life of this kubelet: its process is gone.
            self._spawn(self._mark_lost(obj))
            return
        self._track(obj)

    def _track(self, obj: Body) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
        group_key = owner["uid"] if owner else meta["uid"]
        group = self._groups.get(group_key)
        if group is None:
            group = TrackedJob(uid=group_key, namespace=meta["namespace"],
                               name=owner["name"] if owner else meta["name"],
                               body={"spec": {"template": {"spec": spec}}})
            self._groups[group_key] = group
        index = meta.get("annotations", {}).get("batch.kubernetes.io/job-completion-index")
        p = TrackedPod(job=group, name=meta["name"], index=int(index) if index is not None else None,
                       log_path=self.log_path(meta["namespace"], meta["name"]),
                       work_dir=self.work_dir / meta["namespace"] / meta["name"], uid=meta["uid"], body=obj)
        group.pods[p.name] = p
        self._pods_by_uid[p.uid] = p
        p.task = self._spawn(self._run_bound_pod(p))

    # --- the scheduler's part ------------------------------------------------------------------

    def _free(self) -> dict[str, int]:
        free = dict(self.extended_resources)
        for p in self._pods_by_uid.values():
            if p.done.is_set() or p.body is None:
                continue
            for name, n in extended_requests(p.body).items():
                free[name] = free.get(name, 0) - n
        for uid in self._binding:
            pending = self._pending.get(uid)
            if pending is not None:
                for name, n in extended_requests(pending).items():
                    free[name] = free.get(name, 0) - n
        return free

    def _schedule(self, obj: Body) -> None:
        uid = obj["metadata"]["uid"]
        if uid in self._binding or self._closing:
            return
        why = pod_fits(obj, labels=self.labels, taints=self.taints, free=self._free())
        if why is None:
            self._binding.add(uid)
            self._spawn(self._bind(obj))
        elif self._unschedulable.get(uid) != why:
            self._unschedulable[uid] = why
            self._spawn(self._mark_unschedulable(obj, why))

    def _reschedule(self) -> None:
        for obj in list(self._pending.values()):
            self._schedule(obj)

    async def _bind(self, obj: Body) -> None:
        meta = obj["metadata"]
        try:
            await self._api.request("POST", pods_path(meta["namespace"], meta["name"], "binding"), {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}})
            self._event({"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                         "uid": meta["uid"]}, "Normal", "Scheduled",
                        f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.node_name}",
                        "default-scheduler")
        except ApiError as e:
            if e.status not in (404, 409):
                logger.warning("binding pod %s/%s failed: %s", meta["namespace"], meta["name"], e)
        finally:
            self._binding.discard(meta["uid"])

    async def _mark_unschedulable(self, obj: Body, why: str) -> None:
        meta = obj["metadata"]
        message = f"0/1 nodes are available: 1 {why}. preemption: not eligible."
        now = jc.timestamp(jc.now_utc())
        conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": message, "lastTransitionTime": now, "lastProbeTime": None})
        with contextlib.suppress(ApiError):
            await self._api.patch(pods_path(meta["namespace"], meta["name"], "status"),
                                  {"status": {"conditions": conditions}})
        self._event({"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                     "uid": meta["uid"]}, "Warning", "FailedScheduling", message, "default-scheduler")

    # --- the kubelet's part --------------------------------------------------------------------

    async def _run_bound_pod(self, p: TrackedPod) -> None:
        try:
            await self._run_container(p)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("running pod %s/%s failed", p.namespace, p.name)
        finally:
            if p.process is not None:
                self._kill_group(p)
                self._pgids.discard(p.process.pid)
            p.done.set()
            p.stopped.set()
            shutil.rmtree(p.work_dir, ignore_errors=True)
            self._ips_in_use.discard(p.ip or "")
            group = p.job
            group.pods.pop(p.name, None)
            if not group.pods:
                self._groups.pop(group.uid, None)
            if p.deleting and not p.gone and p.body is not None:
                self._finalise(p.body)
            self._reschedule()

    def _finalise(self, obj: Body) -> None:
        """The pod's containers are gone and it is being deleted: remove it (grace 0), as a kubelet does."""
        meta = obj["metadata"]
        if meta["uid"] in self._finalising:
            return
        self._finalising.add(meta["uid"])

        async def delete() -> None:
            try:
                await self._api.request("DELETE", pods_path(meta["namespace"], meta["name"]), {
                    "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]}})
            except ApiError as e:
                if e.status not in (404, 409):
                    logger.warning("deleting pod %s/%s failed: %s", meta["namespace"], meta["name"], e)
            finally:
                self._finalising.discard(meta["uid"])

        self._spawn(delete())

    async def _mark_lost(self, obj: Body) -> None:
        """A pod this node ran before a restart: its process is gone (ContainerStatusUnknown)."""
        meta = obj["metadata"]
        container = ((obj.get("spec") or {}).get("containers") or [{}])[0]
        now = jc.timestamp(jc.now_utc())
        status = {"phase": "Failed", "containerStatuses": [{
            "name": container.get("name", ""), "image": container.get("image", ""), "imageID": "", "ready": False,
            "started": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now,
                                     "message": "The container could not be located when the pod was terminated"}}}]}
        with contextlib.suppress(ApiError):
            await self._api.patch(pods_path(meta["namespace"], meta["name"], "status"), {"status": status})
        if meta.get("deletionTimestamp"):
            self._finalise(obj)


def _go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


