"""An emulated Kubernetes API server: kmock's emulator, extended until kopf and kubectl work.

`kmock` (pinned: this module subclasses its internals) gives us the resource table, API
discovery, object storage and the bundled list of built-in kinds. Its own object verbs
are too simple for a real operator (no resourceVersion, so kopf's finalizer patch fails
forever; no selectors; every watch replays everything; no garbage collection), so
`KubeApiEmulator` serves every resource request itself with the semantics clients rely on:

* metadata filled on create: uid, resourceVersion (one cluster-wide counter),
  creationTimestamp, generation, namespace; `kind`/`apiVersion` on objects and lists;
* optimistic concurrency: 409 on a stale `metadata.resourceVersion`, 422 on a failed JSON
  patch `test` (what kopf relies on), no new version for a no-op write;
* the status subresource: status changes only through `/status`, which changes nothing
  else; `generation` bumps when anything outside `metadata`/`status` changes;
* PUT, merge patch (null deletes), JSON patch, strategic merge (as a merge patch), apply
  patch (as a merge patch that may create), delete, deletecollection;
* label and field selectors on list, watch and deletecollection;
* watch from a resourceVersion (replays what happened since; 410 Gone once compacted);
* deletionTimestamp + finalizers; background garbage collection through
  ownerReferences (and `propagationPolicy: Orphan`); namespaces that exist, terminate
  and take their objects with them; CRDs created through the API become resources
  (custom_resources.py);
* fault injection: the next N requests matching a predicate answer an error and/or late;
  watch streams that go silent until released.

* custom resources admitted as kube-apiserver admits them (custom_resources.py, with
  genforge_operator.schema): unknown fields pruned (a `Warning` header; refused with 400
  under `fieldValidation=Strict`), schema defaults applied, OpenAPI schema and CEL rules
  validated (422 Invalid with a cause per field), on create, update, patch and `/status`;
  a body whose apiVersion or kind is not the URL's is refused;
* the ServiceAccount admission of pods (a pod naming a missing account is refused);

Not emulated: validation ratcheting finer than custom_resources.py says, admission webhooks
and other admission plugins, schema validation of built-in kinds, server-side apply field
ownership, Table output for
printer columns, pagination (`limit` returns everything), foreground deletion (runs as
background), bookmarks, dry run of updates and patches, authentication and RBAC (every
request is allowed).

`EmulatedCluster` (emulated_cluster.py) runs one in its own thread and event loop on
127.0.0.1, loads the CRDs from a folder, writes a kubeconfig for clients, and injects faults.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import gzip
import importlib.resources
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml

from genforge_operator import schema

from . import custom_resources, selectors

logger = logging.getLogger(__name__)

Body = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]

CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = kmock.resource("", "v1", "pods")
SERVICE_ACCOUNTS = kmock.resource("", "v1", "serviceaccounts")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

# Fields of metadata that only the server sets; clients cannot change them by update or patch.
_SYSTEM_METADATA = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation", "resourceVersion")
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, message: str, *, reason: str | None = None, details: Body | None = None,
                 warnings: list[str] | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details or {}
        self.warnings = list(warnings or [])  # `Warning` headers of the answer

    def status(self) -> Body:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}

    def response(self) -> aiohttp.web.Response:
        headers = {"Retry-After": "1"} if self.code == 429 else None
        response = aiohttp.web.json_response(self.status(), status=self.code, headers=headers)
        for warning in self.warnings:
            response.headers.add("Warning", _warning_header(warning))
        return response


@dataclasses.dataclass(frozen=True)
class Route:
    """A resource URL taken apart: `/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}`."""

    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)


def parse_route(path: str) -> Route | None:
    """The resource a URL addresses, or None for discovery and other non-resource paths.

    Unlike kmock's parser, `/api/v1/namespaces[/name[/status]]` addresses Namespaces.
    """
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    return Route(group, version, rest[0], namespace,
                 rest[1] if len(rest) > 1 else None, "/".join(rest[2:]) or None)


def _verb(method: str, route: Route, params: Mapping[str, str]) -> str | None:
    if method == "GET":
        return "watch" if params.get("watch") in ("true", "1") else "get" if route.name else "list"
    if route.name is None:
        return {"POST": "create", "DELETE": "deletecollection"}.get(method)
    return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)


@dataclasses.dataclass
class RequestRecord:
    """One request as the emulator saw it: for fault predicates, waits and latency figures."""

    id: int
    method: str
    path: str
    query: Mapping[str, str]
    user_agent: str
    verb: str | None = None
    group: str | None = None
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    status: int | None = None
    started: float = 0.0
    duration: float | None = None
    warnings: tuple[str, ...] = ()  # the answer's `Warning` headers (e.g. `unknown field "spec.x"`, pruned)


@dataclasses.dataclass
class _Validation:
    """A write's `fieldValidation` directive (what to do with unknown fields of a custom resource:
    `Strict` refuses them, `Warn` (the default) and `Ignore` prune them) and its warnings."""

    directive: str = "Warn"
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class Fault:
    """Make the next `times` requests that `match` answer `status` (None: serve them), after `delay`."""

    match: Callable[[RequestRecord], bool]
    status: int | None = 500
    times: int | None = 1  # None: until removed
    delay: float = 0.0
    hits: int = 0

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times


def fault_predicate(*, verb: str | Collection[str] | None = None, resource: str | None = None,
                    namespace: str | None = None, name: str | None = None,
                    subresource: str | None = None, user_agent: str | None = None,
                    match: Callable[[RequestRecord], bool] | None = None) -> Callable[[RequestRecord], bool]:
    """A request predicate from criteria; `resource` is a plural or `plural.group`, `user_agent` a prefix."""
    verbs = {verb} if isinstance(verb, str) else set(verb) if verb is not None else None

    def matches(request: RequestRecord) -> bool:
        return ((verbs is None or request.verb in verbs)
                and (resource is None or resource in (request.plural, f"{request.plural}.{request.group}"))
                and (namespace is None or request.namespace == namespace)
                and (name is None or request.name == name)
                and (subresource is None or request.subresource == subresource)
                and (user_agent is None or request.user_agent.startswith(user_agent))
                and (match is None or match(request)))

    return matches


@dataclasses.dataclass(frozen=True)
class _Event:
    rv: int
    type: str
    obj: Body
    old: Body | None  # the previous state for MODIFIED: selectors turn it into ADDED/DELETED


@dataclasses.dataclass(eq=False)
class Stall:
    """Watch streams matching `match` deliver nothing until released (a silent stream)."""

    match: Callable[[RequestRecord], bool]


@dataclasses.dataclass(eq=False)
class _Watcher:
    resource: kmock.resource
    record: RequestRecord
    queue: asyncio.Queue[_Event | None]
    flowing: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


def _warning_header(warning: str) -> str:
    """A `Warning` header value as kube-apiserver writes it (RFC 7234, code 299)."""
    return '299 - "{}"'.format(warning.replace("\\", "\\\\").replace('"', '\\"'))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _qualified(resource: kmock.resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)


def _not_found(resource: kmock.resource, name: str) -> ApiError:
    return ApiError(404, f'{_qualified(resource)} "{name}" not found',
                    details={"name": name, "group": resource.group, "kind": resource.plural})


def _without_directives(patch: Any) -> Any:
    """A strategic merge patch minus its `$patch`/`$setElementOrder/...` directives."""
    if isinstance(patch, Mapping):
        return {k: _without_directives(v) for k, v in patch.items() if not k.startswith("$")}
    return patch


def _meta(obj: Mapping[str, Any]) -> Body:
    return obj.get("metadata") or {}


def _generation_part(obj: Mapping[str, Any]) -> Body:
    """What a change of bumps `metadata.generation`: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _integral_floats_to_int(value: Any) -> None:
    """In place, as kube-apiserver round-trips JSON: a number without a fraction comes back as an
    integer (`241.0` is stored and served as `241`), so clients never see `241.0`."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in list(items):
        if isinstance(item, float) and item.is_integer() and abs(item) < 2**63:
            value[key] = int(item)
        elif isinstance(item, dict | list):
            _integral_floats_to_int(item)


def _name_ok(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    return (0 < len(name) <= 253 and set(name) <= allowed
            and name[0].isalnum() and name[-1].isalnum())


@attrs.define(kw_only=True, eq=False)
class KubeApiEmulator(kmock.KubernetesEmulator):
    """The HTTP handler: kmock serves discovery; every resource request is served here.

    All state changes happen synchronously on the event loop, so no request sees a
    half-done write. Use it through `EmulatedCluster`, or serve it yourself with
    `aiohttp.web.Server(handler, handler_cancellation=True)` inside `async with handler:`.
    """

    request_log_size: int = 2000
    event_log_size: int = 2000  # per resource: how far back a watch can resume
    _rv: int = attrs.field(default=0, init=False)
    _ids: Iterable[int] = attrs.field(factory=itertools.count, init=False)
    _uids: dict[str, Key] = attrs.field(factory=dict, init=False)
    _events: dict[kmock.resource, collections.deque[_Event]] = attrs.field(factory=dict, init=False)
    _compacted: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _orphaning: set[str] = attrs.field(factory=set, init=False)
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _stalls: list[Stall] = attrs.field(factory=list, init=False)
    _schemas: dict[kmock.resource, schema.CustomResourceSchema] = attrs.field(factory=dict, init=False)
    _log: collections.deque[RequestRecord] = attrs.field(init=False)
    _warned: collections.deque[RequestRecord] = attrs.field(init=False)  # requests answered with warnings
    _log_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @_log.default
    def _make_log(self) -> collections.deque[RequestRecord]:
        return collections.deque(maxlen=self.request_log_size)

    @_warned.default
    def _make_warned(self) -> collections.deque[RequestRecord]:
        return collections.deque(maxlen=self.request_log_size)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's load_bundled(), minus its deprecated importlib call: the built-in kinds of a K3s.
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self._resources.load_data(gzip.decompress(bundled))
        self._resources[CRD_RESOURCE].verbs = custom_resources.ALL_VERBS
        for namespace in DEFAULT_NAMESPACES:
            self._store(NAMESPACES, None, namespace, self._new_metadata(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
                 "status": {"phase": "Active"}}, NAMESPACES, None))

    # --- resources -----------------------------------------------------------------------

    @staticmethod
    def check_crd(crd: Mapping[str, Any]) -> None:
        """Refuse a CRD as kube-apiserver does (`custom_resources.default_errors`)."""
        errors = custom_resources.default_errors(crd)
        if errors:
            name = (crd.get("metadata") or {}).get("name", "")
            raise ApiError(422, f'CustomResourceDefinition "{name}" is invalid: ' + "; ".join(errors),
                           reason="Invalid")

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the CRD's resources and keep the CRD itself as an object (`kubectl get crd`)."""
        self.check_crd(crd)
        key = (CRD_RESOURCE, None, crd["metadata"]["name"])
        if self._get(key) is None:
            obj = self._new_metadata(copy.deepcopy(dict(crd)), CRD_RESOURCE, None)
            obj["status"] = custom_resources.crd_status(obj, _now())
            self._store(*key, obj)
        for resource, info in custom_resources.crd_resources(crd).items():
            self._resources[resource] = info
        self._schemas.update(custom_resources.crd_schemas(crd))

    def _unregister_crd(self, crd: Mapping[str, Any]) -> None:
        for resource in custom_resources.crd_resources(crd):
            for key in [key for key in self._objects if key[0] == resource]:
                self._remove(key, self._get(key))
            del self._resources[resource]
            self._schemas.pop(resource, None)

    async def _serve_version(self, request: Any) -> Any:
        """kmock's APIResourceList, as kube-apiserver answers it (kubectl maps resources by it).

        The core group's `groupVersion` is `v1` (kmock: `/v1`, so kubectl found no
        configmaps), and subresources carry no short names or categories (else `kubectl get
        genforge` asks for `trainingruns/status`) and only the verbs they have.
        """
        body = await super()._serve_version(request)
        body["groupVersion"] = body["groupVersion"].lstrip("/")
        for resource in body["resources"]:
            if "/" in resource["name"]:
                resource.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return body

    def _info(self, route: Route) -> kmock.ResourceInfo:
        if route.resource not in self._resources:
            raise ApiError(404, "the server could not find the requested resource")
        return self._resources[route.resource]

    def _kind(self, resource: kmock.resource) -> str:
        return self._resources[resource].kind or resource.plural.capitalize()

    @staticmethod
    def _api_version(resource: kmock.resource) -> str:
        return f"{resource.group}/{resource.version}" if resource.group else resource.version

    # --- storage -----------------------------------------------------------------------

    def _get(self, key: Key) -> Body | None:
        return self._objects[key].raw if key in self._objects else None

    def _store(self, resource: kmock.resource, namespace: str | None, name: str, obj: Body) -> None:
        _integral_floats_to_int(obj)
        self._objects[resource, namespace, name] = obj  # a fresh one-version history: no growth
        self._uids[obj["metadata"]["uid"]] = (resource, namespace, name)

    def _select(self, resource: kmock.resource, namespace: str | None,
                match: Callable[[Body], bool] = lambda obj: True) -> list[tuple[Key, Body]]:
        return [(key, obj.raw) for key, obj in list(self._objects.items())
                if key[0] == resource and (namespace is None or key[1] == namespace) and match(obj.raw)]

    def _new_metadata(self, obj: Body, resource: kmock.resource, namespace: str | None) -> Body:
        meta = obj.setdefault("metadata", {})
        for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(field, None)
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        self._rv += 1
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self._rv),
                    creationTimestamp=_now(), generation=1)
        obj["apiVersion"], obj["kind"] = self._api_version(resource), self._kind(resource)
        return obj

    def _publish(self, resource: kmock.resource, event: _Event) -> None:
        log = self._events.setdefault(resource, collections.deque())
        if len(log) >= self.event_log_size:
            self._compacted[resource] = log.popleft().rv
        log.append(event)
        for watcher in self._watchers:
            if watcher.resource == resource:
                watcher.queue.put_nowait(event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- writes (synchronous: atomic on the event loop) ----------------------------------

    def _create(self, route: Route, body: Any, *, dry_run: bool = False,
                validation: _Validation | None = None) -> Body:
        info = self._info(route)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        self._check_identity(route.resource, body, validation or _Validation())
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name")
        kind = self._kind(route.resource)
        if not name:
            raise ApiError(422, f"{kind} is invalid: metadata.name: Required value")
        if not _name_ok(name):
            raise ApiError(422, f'{kind} "{name}" is invalid: metadata.name: Invalid value: {name!r}: '
                                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                "characters, '-' or '.'")
        namespace = None
        if info.namespaced:
            if route.namespace is None:
                raise ApiError(405, f"{kind} is namespaced: create it under /namespaces/{{namespace}}/")
            if meta.get("namespace") not in (None, route.namespace):
                raise ApiError(400, "the namespace of the provided object does not match the namespace "
                                    "sent on the request")
            namespace = route.namespace
            ns = self._get((NAMESPACES, None, namespace))
            if ns is None:
                raise ApiError(404, f'namespaces "{namespace}" not found',
                               details={"name": namespace, "kind": "namespaces"})
            if _meta(ns).get("deletionTimestamp"):
                raise ApiError(403, f"unable to create new content in namespace {namespace} because it "
                                    "is being terminated", reason="Forbidden")
        if route.resource == PODS:
            self._admit_service_account(obj, namespace, name)
        key = (route.resource, namespace, name)
        if self._get(key) is not None:
            raise ApiError(409, f'{_qualified(route.resource)} "{name}" already exists',
                           reason="AlreadyExists", details={"name": name, "kind": route.plural})
        if "status" in info.subresources:
            obj.pop("status", None)
        if route.resource == CRD_RESOURCE:
            self.check_crd(obj)
        if route.resource in self._schemas:
            if namespace is not None:
                meta["namespace"] = namespace
            obj["apiVersion"], obj["kind"] = self._api_version(route.resource), kind
            obj = self._admit(route.resource, obj, None, validation or _Validation(), verb="create")
        obj = self._new_metadata(obj, route.resource, namespace)
        if route.resource == NAMESPACES:
            obj["status"] = {"phase": "Active"}
        if route.resource == CRD_RESOURCE:
            obj["status"] = custom_resources.crd_status(obj, _now())
        if dry_run:
            return obj
        self._store(*key, obj)
        self._publish(route.resource, _Event(self._rv, "ADDED", obj, None))
        if route.resource == CRD_RESOURCE:
            self.register_crd(obj)
        if meta.get("ownerReferences"):
            self._spawn(self._collect_if_orphaned(key))
        return obj

    def _check_identity(self, resource: kmock.resource, body: Body, validation: _Validation) -> None:
        """A custom resource's body must name the URL's apiVersion and kind (or neither), as
        kube-apiserver answers: a version it does not serve decodes without a schema (all its
        fields are unknown: Strict refuses them), another kind is Invalid."""
        if resource not in self._schemas:
            return
        want_version, want_kind = self._api_version(resource), self._kind(resource)
        version, kind = body.get("apiVersion"), body.get("kind")
        if version not in (None, "", want_version):
            unknown = sorted(name for name in body if name not in ("apiVersion", "kind", "metadata"))
            if unknown and validation.directive == "Strict":
                raise ApiError(400, custom_resources.undecodable(
                    kind or want_kind, str(version).rpartition("/")[2], custom_resources.strict_decoding_error(unknown)))
            if validation.directive != "Ignore":
                validation.warnings += [f'unknown field "{name}"' for name in unknown]
            raise ApiError(400, f"the API version in the data ({version}) does not match the expected API "
                                f"version ({want_version})", warnings=validation.warnings)
        if kind not in (None, "", want_kind):
            name = str(_meta(body).get("name") or "")
            error = schema.FieldError("kind", f'Invalid value: "{kind}": must be {want_kind}')
            message, details = custom_resources.invalid_status(str(kind), resource.group, name, [error])
            raise ApiError(422, message, reason="Invalid", details=details)

    def _admit(self, resource: kmock.resource, obj: Body, old: Body | None, validation: _Validation, *,
               verb: str) -> Body:
        """kube-apiserver's admission of a custom resource write (custom_resources.admit): the
        object to store, or ApiError 400 (unknown fields under Strict) / 422 (invalid)."""
        crd_schema = self._schemas[resource]
        _integral_floats_to_int(obj)  # the server decodes JSON so: 2.0 is an integer before validation
        admitted = custom_resources.admit(crd_schema, obj, old)
        if admitted.unknown:
            if validation.directive == "Strict" and verb == "patch":  # the patched object does not decode
                message, details = custom_resources.strict_patch_status(obj, admitted.unknown)
                raise ApiError(422, message, reason="Invalid", details=details)
            if validation.directive == "Strict":  # the request body does not decode
                raise ApiError(400, custom_resources.undecodable(
                    crd_schema.kind, crd_schema.version, custom_resources.strict_decoding_error(admitted.unknown)))
            if validation.directive != "Ignore":
                validation.warnings += [f'unknown field "{path}"' for path in admitted.unknown]
        if admitted.errors:
            name = str(_meta(obj).get("name") or _meta(obj).get("generateName") or "")
            message, details = custom_resources.invalid_status(crd_schema.kind, resource.group, name,
                                                               admitted.errors, admitted.rules_skipped)
            raise ApiError(422, message, reason="Invalid", details=details)
        return admitted.obj

    def _admit_service_account(self, pod: Body, namespace: str | None, name: str) -> None:
        """kube-apiserver's ServiceAccount admission refuses a pod whose account does not exist
        (the Job controller then only records FailedCreate). The `default` account is taken as
        present: the emulator has no service-account controller to create it."""
        account = (pod.get("spec") or {}).get("serviceAccountName")
        if account and account != "default" and self._get((SERVICE_ACCOUNTS, namespace, account)) is None:
            raise ApiError(403, f'pods "{name}" is forbidden: error looking up service account '
                                f'{namespace}/{account}: serviceaccount "{account}" not found', reason="Forbidden")

    def _commit(self, key: Key, old: Body, new: Body, validation: _Validation | None = None,
                verb: str = "update") -> Body:
        """Store a changed object: server-owned metadata kept, generation and version bumped.

        A client's write (`validation` given) of a custom resource is admitted first."""
        resource = key[0]
        if resource == CRD_RESOURCE:
            self.check_crd(new)
        new_meta = new.setdefault("metadata", {})
        old_meta = _meta(old)
        for field in _SYSTEM_METADATA:
            if field in old_meta:
                new_meta[field] = old_meta[field]
            else:
                new_meta.pop(field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if validation is not None and resource in self._schemas:
            new = self._admit(resource, new, old, validation, verb=verb)
            new_meta = new["metadata"]
        if new == old:
            return old  # a no-op write: no new resourceVersion, no event (kopf relies on this)
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise ApiError(422, f"metadata.finalizers: Forbidden: no new finalizers can be added "
                                    f"if the object is being deleted, found new finalizers {sorted(added)}")
        if _generation_part(new) != _generation_part(old):
            new_meta["generation"] = old_meta.get("generation", 1) + 1
        self._rv += 1
        new_meta["resourceVersion"] = str(self._rv)
        self._store(*key, new)
        self._publish(resource, _Event(self._rv, "MODIFIED", new, old))
        if resource == CRD_RESOURCE:
            self.register_crd(new)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            if resource != NAMESPACES or not self._select_namespace_content(key[2]):
                return self._remove(key, new)
        return new

    def _remove(self, key: Key, obj: Body) -> Body:
        """The object is gone: DELETED event, then the garbage collector sees to its dependents."""
        resource, namespace, name = key
        del self._objects[resource, namespace, name]
        uid = _meta(obj)["uid"]
        self._uids.pop(uid, None)
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._publish(resource, _Event(self._rv, "DELETED", obj, None))
        self._spawn(self._collect_dependents(uid, orphan=uid in self._orphaning))
        self._orphaning.discard(uid)
        if resource == CRD_RESOURCE:
            self._unregister_crd(obj)
        if namespace is not None:
            ns = self._get((NAMESPACES, None, namespace))
            if ns is not None and _meta(ns).get("deletionTimestamp") and not _meta(ns).get("finalizers"):
                if not self._select_namespace_content(namespace):
                    self._remove((NAMESPACES, None, namespace), ns)
        return obj

    def _delete(self, key: Key, options: Mapping[str, Any]) -> tuple[Body, bool]:
        """Delete (or start deleting) an object; returns it and whether it is gone."""
        old = self._get(key)
        if old is None:
            raise _not_found(key[0], key[2])
        meta = _meta(old)
        preconditions = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) not in (None, meta.get(field)):
                raise ApiError(409, f"Precondition failed: {field} in precondition: "
                                    f"{preconditions[field]}, {field} in object meta: {meta.get(field)}")
        if "All" in (options.get("dryRun") or []):
            return old, False
        if options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents"):
            self._orphaning.add(meta["uid"])
        if meta.get("deletionTimestamp"):
            return old, False
        if key[0] == NAMESPACES:
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new.setdefault("status", {})["phase"] = "Terminating"
            new = self._commit_system(key, old, new)
            for obj_key, _ in self._select_namespace_content(key[2]):
                if self._get(obj_key) is not None:
                    self._delete(obj_key, {})
            return new, self._get(key) is None
        if meta.get("finalizers"):
            new = copy.deepcopy(old)
            new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            return self._commit_system(key, old, new), False
        return self._remove(key, old), True

    def _commit_system(self, key: Key, old: Body, new: Body) -> Body:
        """A server-side change of server-owned fields (deletionTimestamp) that `_commit` would undo."""
        meta = new["metadata"]
        if _meta(old).get("generation") is not None and key[0].group:
            meta["generation"] = _meta(old)["generation"] + 1  # custom resources bump it on deletion
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._store(*key, new)
        self._publish(key[0], _Event(self._rv, "MODIFIED", new, old))
        if not meta.get("finalizers") and key[0] != NAMESPACES:
            return self._remove(key, new)
        if key[0] == NAMESPACES and not meta.get("finalizers") and not self._select_namespace_content(key[2]):
            return self._remove(key, new)
        return new

    def _select_namespace_content(self, namespace: str) -> list[tuple[Key, Body]]:
        return [(key, obj.raw) for key, obj in list(self._objects.items()) if key[1] == namespace]

    async def _collect_dependents(self, owner_uid: str, *, orphan: bool) -> None:
        """Background cascading deletion: dependents with no owner left go too."""
        await asyncio.sleep(0)  # like the real collector: after the owner's deletion is answered
        for key, obj in list(self._objects.items()):
            refs = _meta(obj.raw).get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs) or self._get(key) is None:
                continue
            if orphan:
                new = copy.deepcopy(obj.raw)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid] or None
                if new["metadata"]["ownerReferences"] is None:
                    del new["metadata"]["ownerReferences"]
                self._commit(key, obj.raw, new)
            elif not any(ref.get("uid") in self._uids for ref in refs):
                self._delete(key, {})

    async def _collect_if_orphaned(self, key: Key) -> None:
        """An object created with owners that no longer exist is collected, as a real cluster does."""
        await asyncio.sleep(0)
        obj = self._get(key)
        refs = _meta(obj or {}).get("ownerReferences") or []
        if obj is not None and refs and not any(ref.get("uid") in self._uids for ref in refs):
            self._delete(key, {})

    def _check_resource_version(self, old: Body, new: Body) -> None:
        wanted = _meta(new).get("resourceVersion")
        if wanted not in (None, "") and wanted != _meta(old).get("resourceVersion"):
            raise ApiError(409, f'Operation cannot be fulfilled on {old["kind"]} "{_meta(old)["name"]}": '
                                "the object has been modified; please apply your changes to the latest "
                                "version and try again")

    def _update(self, route: Route, key: Key, body: Any, validation: _Validation | None = None) -> Body:
        info = self._info(route)
        old = self._get(key)
        if old is None:
            raise _not_found(route.resource, key[2])
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        self._check_identity(route.resource, body, validation or _Validation())
        if _meta(body).get("name") not in (None, route.name):
            raise ApiError(400, "the name of the object does not match the name on the URL")
        self._check_resource_version(old, body)
        if route.subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(body.get("status"))
            if new["status"] is None:
                del new["status"]
        else:
            new = copy.deepcopy(body)
            if "status" in info.subresources:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        return self._commit(key, old, new, validation or _Validation(), "update")

    def _patch(self, route: Route, key: Key, body: Any, content_type: str,
               validation: _Validation | None = None) -> Body:
        info = self._info(route)
        old = self._get(key)
        if old is None:
            if content_type == "application/apply-patch+yaml":  # server-side apply may create
                return self._create(dataclasses.replace(route, name=None, subresource=None), body,
                                    validation=validation)
            raise _not_found(route.resource, key[2])
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "a JSON patch must be a list of operations")
            try:
                patched = jsonpatch.apply_patch(old, body, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise ApiError(422, f"the server rejected our request due to an error in our request: {e}") from e
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise ApiError(422, f"the server rejected our request due to an error in our request: {e}") from e
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                              "application/apply-patch+yaml", "application/json"):
            if not isinstance(body, dict):
                raise ApiError(400, "a merge patch must be an object")
            patched = merge_patch(old, _without_directives(body))
        else:
            raise ApiError(415, f"the body of the request was in an unknown format: {content_type}")
        self._check_resource_version(old, patched)
        if route.subresource == "status":
            new = copy.deepcopy(old)
            new.pop("status", None)
            if patched.get("status") is not None:
                new["status"] = patched["status"]
        else:
            new = patched
            if "status" in info.subresources:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        return self._commit(key, old, new, validation or _Validation(), "patch")

    # --- HTTP ----------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        raw_body = await raw_request.read()
        route = parse_route(raw_request.path)
        params = dict(raw_request.query)
        record = RequestRecord(
            id=next(self._ids), method=raw_request.method, path=raw_request.path, query=params,
            user_agent=raw_request.headers.get("User-Agent", ""), started=time.monotonic())
        if route is not None:
            record.verb = _verb(raw_request.method, route, params)
            record.group, record.version, record.plural = route.group, route.version, route.plural
            record.namespace, record.name, record.subresource = route.namespace, route.name, route.subresource
        with self._log_lock:
            self._log.append(record)
        try:
            response = await self._respond(raw_request, raw_body, route, record)
        except asyncio.CancelledError:
            record.status = 499  # the client went away (watches end so)
            raise
        except ApiError as e:
            response = e.response()
        except Exception as e:  # a bug here must not look like a stall to clients
            logger.exception("emulated API server failed on %s %s", raw_request.method, raw_request.path)
            response = ApiError(500, f"emulator error: {e!r}").response()
        finally:
            record.duration = time.monotonic() - record.started
        record.status = response.status
        return response

    async def _respond(self, raw_request: aiohttp.web.BaseRequest, raw_body: bytes,
                       route: Route | None, record: RequestRecord) -> aiohttp.web.StreamResponse:
        fault = self._take_fault(record)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                raise ApiError(fault.status, f"injected fault: {fault.status}")
        if route is None:  # discovery, /version, ...: kmock's scaffold
            try:
                return await super().__call__(raw_request)
            finally:
                del self._requests[:-10]  # kmock's log makes every later request slower
                if self._errors:
                    self._errors[-1].clear()
        if record.verb is None:
            raise ApiError(405, f"the server does not allow this method on the requested resource: "
                                f"{raw_request.method} {raw_request.path}")
        info = self._info(route)
        if route.subresource not in (None, "status") or (
                route.subresource == "status" and "status" not in info.subresources):
            raise ApiError(404, "the server could not find the requested resource")
        if info.verbs and record.verb not in info.verbs:
            raise ApiError(405, f"{record.verb} is not supported on {route.plural}")
        body = self._parse_body(raw_request, raw_body)
        params = record.query
        namespace = route.namespace if info.namespaced else None
        if record.verb == "watch":
            return await self._watch(raw_request, route, info, params, record)
        if record.verb == "list":
            match = self._matcher(route, params)
            items = [obj for _, obj in self._select(route.resource, namespace, match)]
            return self._json({"apiVersion": self._api_version(route.resource),
                               "kind": f"{self._kind(route.resource)}List",
                               "metadata": {"resourceVersion": str(self._rv)}, "items": items})
        key = (route.resource, namespace, route.name or "")
        if record.verb == "get":
            obj = self._get(key)
            if obj is None:
                raise _not_found(route.resource, key[2])
            return self._json(obj)
        validation = _Validation(params.get("fieldValidation") or "Warn")
        if record.verb == "create":
            dry_run = params.get("dryRun") == "All"
            created = self._create(route, body, dry_run=dry_run, validation=validation)
            return self._warn(record, validation, self._json(created, status=201))
        if record.verb == "update":
            return self._warn(record, validation, self._json(self._update(route, key, body, validation)))
        if record.verb == "patch":
            content_type = raw_request.headers.get("Content-Type", "").split(";")[0].strip()
            patched = self._patch(route, key, body, content_type, validation)
            return self._warn(record, validation, self._json(patched))
        options = dict(body) if isinstance(body, dict) else {}
        if "propagationPolicy" in params:
            options["propagationPolicy"] = params["propagationPolicy"]
        if "dryRun" in params:
            options["dryRun"] = [params["dryRun"]]
        if record.verb == "delete":
            obj, gone = self._delete(key, options)
            if gone and not route.group:  # built-in kinds answer a Status for an immediate deletion
                return self._json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {"name": route.name, "kind": route.plural,
                                               "uid": _meta(obj).get("uid")}})
            return self._json(obj)
        # deletecollection
        items = []
        for item_key, _ in self._select(route.resource, namespace, self._matcher(route, params)):
            if self._get(item_key) is not None:
                items.append(self._delete(item_key, options)[0])
        return self._json({"apiVersion": self._api_version(route.resource),
                           "kind": f"{self._kind(route.resource)}List",
                           "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    def _warn(self, record: RequestRecord, validation: _Validation,
              response: aiohttp.web.Response) -> aiohttp.web.Response:
        """The write's warnings as `Warning: 299 - "…"` headers, as kube-apiserver sends them; logged."""
        if validation.warnings:
            record.warnings = tuple(validation.warnings)
            for warning in validation.warnings:
                response.headers.add("Warning", _warning_header(warning))
            with self._log_lock:
                self._warned.append(record)
        return response

    @staticmethod
    def _parse_body(raw_request: aiohttp.web.BaseRequest, raw_body: bytes) -> Any:
        if not raw_body:
            return None
        try:
            if raw_request.headers.get("Content-Type", "").startswith("application/apply-patch+yaml"):
                return yaml.safe_load(raw_body)
            return json.loads(raw_body)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, f"the request body is not valid JSON/YAML: {e}") from e

    @staticmethod
    def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")

    @staticmethod
    def _matcher(route: Route, params: Mapping[str, str]) -> Callable[[Body], bool]:
        try:
            by_label = selectors.label_selector(params.get("labelSelector"))
            by_field = selectors.field_selector(params.get("fieldSelector"))
        except selectors.SelectorError as e:
            raise ApiError(400, str(e)) from e
        name = route.name
        return lambda obj: (name is None or _meta(obj).get("name") == name) and by_label(obj) and by_field(obj)

    async def _watch(self, raw_request: aiohttp.web.BaseRequest, route: Route, info: kmock.ResourceInfo,
                     params: Mapping[str, str], record: RequestRecord) -> aiohttp.web.StreamResponse:
        match = self._matcher(route, params)
        namespace = route.namespace if info.namespaced else None
        since = params.get("resourceVersion") or "0"
        try:
            since_rv = int(since)
        except ValueError as e:
            raise ApiError(400, f"invalid resourceVersion: {since!r}") from e
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None

        # Snapshot and subscribe with no await in between: no event is missed or doubled.
        lines: list[Body] = []
        if since_rv == 0:
            lines = [{"type": "ADDED", "object": obj} for _, obj in self._select(route.resource, namespace, match)]
        elif since_rv < self._compacted.get(route.resource, 0):
            lines = [{"type": "ERROR", "object": ApiError(
                410, f"too old resource version: {since_rv} ({self._compacted[route.resource]})").status()}]
        else:
            for event in self._events.get(route.resource, ()):
                if event.rv > since_rv:
                    lines.extend(self._event_lines(event, namespace, match))
        watcher = _Watcher(route.resource, record, asyncio.Queue())
        self._update_flow(watcher)
        if not lines or lines[0]["type"] != "ERROR":
            self._watchers.add(watcher)

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw_request)
            await watcher.flowing.wait()
            await self._write_lines(response, lines)
            deadline = None if timeout is None else time.monotonic() + timeout
            while watcher in self._watchers:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:  # the server is stopping
                    break
                batch = list(self._event_lines(event, namespace, match))
                while not watcher.queue.empty():  # write what piled up in one go
                    queued = watcher.queue.get_nowait()
                    if queued is None:
                        self._watchers.discard(watcher)
                        break
                    batch.extend(self._event_lines(queued, namespace, match))
                await watcher.flowing.wait()
                await self._write_lines(response, batch)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
        return response

    @staticmethod
    async def _write_lines(response: aiohttp.web.StreamResponse, lines: list[Body]) -> None:
        if lines:
            await response.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))

    @staticmethod
    def _event_lines(event: _Event, namespace: str | None, match: Callable[[Body], bool]) -> Iterable[Body]:
        if namespace is not None and _meta(event.obj).get("namespace") != namespace:
            return
        now = match(event.obj)
        before = event.old is not None and match(event.old)
        if event.type == "MODIFIED" and not before:
            kind = "ADDED" if now else None  # it started matching the selector
        elif event.type == "MODIFIED" and not now:
            kind = "DELETED"  # it stopped matching the selector
        else:
            kind = event.type if now else None
        if kind is not None:
            yield {"type": kind, "object": event.obj}

    # --- faults, log, shutdown -------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._log_lock:
            self._faults.append(fault)
        return fault

    def remove_faults(self, *faults: Fault) -> None:
        with self._log_lock:
            self._faults[:] = [f for f in self._faults if faults and f not in faults]

    def stall_watches(self, stall: Stall) -> Stall:
        """Hold back the events of open and future watch streams that `stall` matches."""
        self._stalls.append(stall)
        for watcher in self._watchers:
            self._update_flow(watcher)
        return stall

    def release_watches(self, *stalls: Stall) -> None:
        """Release the given stalls (or all): held events are delivered, in order."""
        self._stalls[:] = [s for s in self._stalls if stalls and s not in stalls]
        for watcher in self._watchers:
            self._update_flow(watcher)

    def _update_flow(self, watcher: _Watcher) -> None:
        if any(stall.match(watcher.record) for stall in self._stalls):
            watcher.flowing.clear()
        else:
            watcher.flowing.set()

    def _take_fault(self, record: RequestRecord) -> Fault | None:
        with self._log_lock:
            for fault in self._faults:
                if not fault.spent and fault.match(record):
                    fault.hits += 1
                    return fault
        return None

    def requests(self, since: int = 0) -> list[RequestRecord]:
        """The request log (the last `request_log_size`), from request id `since` on."""
        with self._log_lock:
            return [record for record in self._log if record.id >= since]

    def warned_requests(self, since: int = 0) -> list[RequestRecord]:
        """The requests answered with warnings (the last `request_log_size`), from request id `since` on."""
        with self._log_lock:
            return [record for record in self._warned if record.id >= since]

    def purge_namespace(self, namespace: str) -> None:
        """Remove a namespace and everything in it now, finalizers or not (test and demo cleanup)."""
        for key, obj in self._select_namespace_content(namespace):
            self._remove(key, obj)
        ns = self._get((NAMESPACES, None, namespace))
        if ns is not None:
            self._remove((NAMESPACES, None, namespace), ns)

    def close_watches(self) -> None:
        """End every open watch stream (clients see a normal end and reconnect)."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
