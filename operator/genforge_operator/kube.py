"""The one module that talks to the Kubernetes API (besides kopf's own watching).

Thin wrappers over the `kubernetes` client: fetch, create idempotently, patch status
only with what changed, poll a trainer's progress endpoint.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.request
from collections.abc import Callable

import kopf
import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException

from .api import GROUP, KINDS, VERSION
from .config import OperatorConfig

log = logging.getLogger(__name__)


class StatusConflict(kopf.TemporaryError):
    """Other writers changed the object under every attempt of `Kube.update_status`."""


MERGE_PATCH = "application/merge-patch+json"
USER_AGENT = "genforge-operator"  # what audit logs (and the emulator's request log) show
#: No API request waits longer than this (env GENFORGE_API_TIMEOUT): a hung request would
#: otherwise hold the object's reconcile lock, and with it a worker, for ever.
DEFAULT_REQUEST_TIMEOUT = 30.0


def diff_patch(old: dict, new: dict) -> dict:
    """The RFC 7386 merge patch turning `old` into `new` (lists are replaced whole)."""
    patch: dict = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = diff_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


def _transient(exc: ApiException) -> bool:
    return exc.status in (0, 409, 429) or exc.status >= 500  # 0: no answer (timeout, connection)


class ApiClient(client.ApiClient):
    """The `kubernetes` client with a deadline on every request.

    A request that times out or loses its connection raises `ApiException` with status 0,
    so callers handle it like any transient API error instead of a stray urllib3 error.
    """

    def __init__(self, configuration: client.Configuration | None = None, *, request_timeout: float | None = None):
        super().__init__(configuration)
        self.user_agent = USER_AGENT
        self.request_timeout = request_timeout or DEFAULT_REQUEST_TIMEOUT

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        try:
            return super().call_api(method, url, header_params, body, post_params,
                                    _request_timeout=_request_timeout or self.request_timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc


KUEUE_GROUP = "kueue.x-k8s.io"
#: Kueue's Workload API versions, newest first (v1beta2 stored since Kueue 0.15).
KUEUE_VERSIONS = ("v1beta2", "v1beta1")


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def service_account_dir(config: OperatorConfig | None = None) -> str:
    """Where the pod's ServiceAccount volume (token, ca.crt) is: the standard path, or where a
    local kubelet (`genforge local --kube`, the test tier) put it, per $GENFORGE_PATH_MAP."""
    try:
        mapped = (config or OperatorConfig.from_env()).path_map()
    except ValueError:
        mapped = {}
    return mapped.get(SERVICE_ACCOUNT_DIR) or SERVICE_ACCOUNT_DIR


def load_cluster_config(config: OperatorConfig | None = None) -> None:
    """The kubernetes client's default configuration: in-cluster (the pod's ServiceAccount), else kubeconfig."""
    folder = service_account_dir(config)
    try:
        kube_config.incluster_config.InClusterConfigLoader(
            token_filename=f"{folder}/token", cert_filename=f"{folder}/ca.crt").load_and_set()
    except kube_config.ConfigException:
        kube_config.load_kube_config()


def update_status(kube, kind: str, namespace: str | None, name: str,
                  change: Callable[[dict], dict | None], *, attempts: int = 5) -> dict | None:
    """Read-modify-write of an object's status under its resourceVersion (`kube`: a `Kube`).

    `change(body)` returns the status fields to merge in (None: nothing to write); it is
    called again on a fresh read whenever another writer got there first. Returns the
    body the change was computed from (None: the object is gone or nothing to write).
    Raises `StatusConflict` (kopf retries the handler) once other writers have won every
    one of `attempts` rounds: never a silent give-up.
    """
    for attempt in range(attempts):
        body = kube.get(kind, namespace, name)
        if body is None:
            return None
        patch = change(body)
        if not patch:
            return None
        if kube.replace_status_guarded(kind, namespace, name, body["metadata"]["resourceVersion"], patch):
            return body
        time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # jitter: the writers fall out of step
    raise StatusConflict(f"{kind} {namespace + '/' if namespace else ''}{name} changed under each of "
                         f"{attempts} attempts to update its status", delay=1)


class Kube:
    """What the handlers need from the API, with errors turned into kopf's retry signals."""

    _local = threading.local()

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    @classmethod
    def from_env(cls) -> Kube:
        return cls.from_config(OperatorConfig.from_env())

    @classmethod
    def from_config(cls, config: OperatorConfig) -> Kube:
        if config.api_server:
            configuration = client.Configuration()
            configuration.host = config.api_server
            configuration.verify_ssl = False
            configuration.api_key = {"authorization": "Bearer genforge-local"}
        else:
            load_cluster_config(config)
            configuration = client.Configuration.get_default_copy()
        # Every kopf worker thread and re-check may hold a connection at once; the client's
        # default pool (5 per CPU) would discard the extra ones and pay a TLS handshake each time.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0,
                                                    2 * config.workers + 4)
        return cls(ApiClient(configuration, request_timeout=config.api_timeout))

    # ---------------------------------------------------------------- genforge kinds
    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        k = KINDS[kind]
        try:
            if k.namespaced:
                return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, k.plural, name)
            return self.custom.get_cluster_custom_object(GROUP, VERSION, k.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._retry(exc, f"get {kind} {namespace}/{name}") from exc

    def _merge_patch(self, kind: str, namespace: str | None, name: str, body: dict, *, status: bool) -> dict:
        """A merge patch of a genforge object, or of its status subresource (errors raised as they are)."""
        k = KINDS[kind]
        if k.namespaced:
            call = self.custom.patch_namespaced_custom_object_status if status \
                else self.custom.patch_namespaced_custom_object
            return call(GROUP, VERSION, namespace, k.plural, name, body, _content_type=MERGE_PATCH)
        call = self.custom.patch_cluster_custom_object_status if status else self.custom.patch_cluster_custom_object
        return call(GROUP, VERSION, k.plural, name, body, _content_type=MERGE_PATCH)

    def patch_status(self, kind: str, namespace: str | None, name: str, patch: dict) -> dict | None:
        if not patch:
            return None
        try:
            return self._merge_patch(kind, namespace, name, {"status": patch}, status=True)
        except ApiException as exc:
            if exc.status == 404:
                return None  # deleted meanwhile: nothing to record
            raise self._retry(exc, f"patch status of {kind} {namespace}/{name}") from exc

    def replace_status_guarded(self, kind: str, namespace: str | None, name: str,
                               resource_version: str, patch: dict) -> bool:
        """A status patch that fails (False) if the object changed since `resource_version`.

        Deleted since it was read (404) is a change too: the caller's next read finds it gone.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        try:
            self._merge_patch(kind, namespace, name, body, status=True)
            return True
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise self._retry(exc, f"patch status of {kind} {namespace}/{name}") from exc

    def update_status(self, kind: str, namespace: str | None, name: str,
                      change: Callable[[dict], dict | None], *, attempts: int = 5) -> dict | None:
        return update_status(self, kind, namespace, name, change, attempts=attempts)

    def ensure_finalizer(self, kind: str, body: dict, finalizer: str, *, attempts: int = 5) -> dict | None:
        """The object with `finalizer` on it: added under its resourceVersion (re-read on a
        conflict, e.g. kopf adding the same finalizer meanwhile). None when the object is gone
        or being deleted (no finalizer can be added then: nothing new may start for it)."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        for attempt in range(attempts):
            if meta.get("deletionTimestamp"):
                return None
            finalizers = list(meta.get("finalizers") or [])
            if finalizer in finalizers:
                return body
            patch = {"metadata": {"finalizers": [*finalizers, finalizer], "resourceVersion": meta["resourceVersion"]}}
            try:
                return self._merge_patch(kind, namespace, name, patch, status=False)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise self._retry(exc, f"add the finalizer to {kind} {namespace}/{name}") from exc
            if attempt:
                time.sleep(random.uniform(0, 0.05 * attempt))  # jitter: the writers fall out of step
            body = self.get(kind, namespace, name)
            if body is None:
                return None
            meta = body["metadata"]
        raise StatusConflict(f"{kind} {namespace}/{name} changed under each of {attempts} attempts "
                             "to add its finalizer", delay=1)

    # ---------------------------------------------------------------- children
    def get_job(self, namespace: str, name: str) -> dict | None:
        try:
            return self.api_client.sanitize_for_serialization(self.batch.read_namespaced_job(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._retry(exc, f"get Job {namespace}/{name}") from exc

    def kueue_workload(self, namespace: str, job: dict) -> dict | None:
        """Kueue's Workload for `job` (label kueue.x-k8s.io/job-uid), or None: none yet, no Kueue
        installed, or no permission (the chart grants get/list on workloads.kueue.x-k8s.io)."""
        uid = (job.get("metadata") or {}).get("uid")
        if not uid:
            return None
        for version in KUEUE_VERSIONS:
            try:
                found = self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP, version, namespace, "workloads", label_selector=f"kueue.x-k8s.io/job-uid={uid}")
            except ApiException as exc:
                if exc.status in (403, 404):
                    continue
                raise self._retry(exc, f"list Kueue workloads of Job {uid}") from exc
            items = found.get("items") or []
            return items[0] if items else None
        return None

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
        except ApiException as exc:
            raise self._retry(exc, f"list pods {selector}") from exc
        return self.api_client.sanitize_for_serialization(pods).get("items") or []

    def create(self, obj: dict) -> dict | None:
        """Create a child; one that already exists (a restart, a race) is fine. Returns the
        created Job as the API server answered (None for other kinds and when it existed)."""
        kind, namespace = obj["kind"], obj["metadata"]["namespace"]
        try:
            if kind == "Job":
                return self.api_client.sanitize_for_serialization(self.batch.create_namespaced_job(namespace, obj))
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(namespace, obj)
            elif kind == "Service":
                self.core.create_namespaced_service(namespace, obj)
            elif kind == "ServiceAccount":
                self.core.create_namespaced_service_account(namespace, obj)
            else:  # pragma: no cover - the builders make nothing else
                raise ValueError(f"unexpected child kind {kind}")
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise self._retry(exc, f"create {kind} {namespace}/{obj['metadata']['name']}") from exc

    def create_custom(self, obj: dict) -> bool:
        """Create a genforge object (a pool's calibration run and its model and data); one that
        already exists is fine. False: its namespace does not exist."""
        k = KINDS[obj["kind"]]
        namespace = obj["metadata"]["namespace"]
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, k.plural, obj)
        except ApiException as exc:
            if exc.status == 409:
                return True
            if exc.status == 404:
                return False
            raise self._retry(exc, f"create {obj['kind']} {namespace}/{obj['metadata']['name']}") from exc
        return True

    def patch_job(self, namespace: str, name: str, patch: dict) -> None:
        try:
            self.batch.patch_namespaced_job(name, namespace, patch, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise self._retry(exc, f"patch Job {namespace}/{name}") from exc

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(
                name, namespace, body=client.V1DeleteOptions(propagation_policy="Background"))
        except ApiException as exc:
            if exc.status == 404:
                return
            raise self._retry(exc, f"delete Job {namespace}/{name}") from exc

    # ---------------------------------------------------------------- trainer
    @staticmethod
    def fetch_progress(ip: str | None, port: int, timeout: float) -> dict | None:
        """The trainer's /progress JSON, or None while it is not reachable (starting, gone)."""
        if not ip:
            return None
        host = f"[{ip}]" if ":" in ip else ip
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/progress", timeout=timeout) as response:
                data = json.loads(response.read(65536))
                return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _retry(exc: ApiException, what: str) -> Exception:
        if _transient(exc):
            return kopf.TemporaryError(f"{what}: HTTP {exc.status}; retrying", delay=2)
        return kopf.TemporaryError(f"{what}: HTTP {exc.status} {exc.reason}", delay=15)
