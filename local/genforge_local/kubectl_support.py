"""What only `kubectl` needs from the API server, in front of the emulator.

`KubectlSupport` is the emulated API server's middleware (`EmulatedCluster(middleware=…)`):

* `/openapi/v3`, `/openapi/v3/<group-version>`, `/openapi/v2`: documents built from the
  CRD schemas (`openapi.py`), so `kubectl apply` validates on the client without
  `--validate=false`, and `kubectl explain trainingrun.spec` works;
* Tables (`Accept: ...;as=Table;g=meta.k8s.io;v=v1`) for get, list and watch (`tables.py`),
  so `kubectl get` shows the CRDs' printer columns (`-o wide` the priority-1 ones);
* discovery as kube-apiserver answers it: the core group is `v1` (not `/v1`), and
  subresources (`trainingruns/status`) carry no categories or short names (else `kubectl
  get genforge` asks for `…/status`) and only their own verbs;
* `kubectl logs [-f] [--tail N]`: the pod's log file, which the local executor names in the
  pod's `local.genforge.dev/log` annotation (followed until the pod ends);
* protobuf request bodies, which kubectl's typed commands send (`kubectl create namespace
  | configmap | secret`), decoded to JSON for the kinds `protobuf.py` knows; others get 415
  (client-go does not fall back to JSON on its own: use `kubectl apply -f`).

Everything else goes to the emulator unchanged. The CRDs come from the server itself (a
list request over loopback, so CRDs created later count too).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.web

from . import openapi, protobuf, tables
from .node import LOG_ANNOTATION

logger = logging.getLogger(__name__)

Body = dict[str, Any]
Handler = Callable[[aiohttp.web.BaseRequest], Awaitable[aiohttp.web.StreamResponse]]
PROTOBUF = "application/vnd.kubernetes.protobuf"
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"]}


def wants_table(accept: str) -> bool:
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def _json_response(body: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def fix_discovery(body: Body) -> Body:
    """An APIResourceList as kube-apiserver serves it.

    The core group's `groupVersion` is `v1` (kmock says `/v1`, which kubectl does not map:
    `kubectl get configmaps` failed, and `get pods` fell through to metrics.k8s.io), and
    subresources carry no categories or short names.
    """
    if isinstance(body.get("groupVersion"), str):
        body["groupVersion"] = body["groupVersion"].lstrip("/")
    for resource in body.get("resources") or []:
        name = resource.get("name", "")
        if "/" in name:
            resource.pop("categories", None)
            resource.pop("shortNames", None)
            resource["verbs"] = SUBRESOURCE_VERBS.get(name.split("/", 1)[1], ["get"])
    return body


def _is_discovery(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return (len(parts) == 2 and parts[0] == "api") or (len(parts) == 3 and parts[0] == "apis")


def _resource_of(path: str) -> tuple[str, str, str] | None:
    """(group, version, plural) of a resource URL."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    if len(rest) > 2:  # a subresource
        return None
    return group, version, rest[0]


_POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<name>[^/]+)/log$")


def log_tail(text: bytes, tail_lines: int | None, limit_bytes: int | None) -> bytes:
    """`kubectl logs --tail N --limit-bytes B` on a log's bytes."""
    if tail_lines is not None:
        lines = text.splitlines(keepends=True)
        text = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
    if limit_bytes is not None:
        text = text[:limit_bytes]
    return text


class KubectlSupport:
    """The middleware: `await support(handler, request)`."""

    async def __call__(self, handler: Any, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = request.path
        if path == "/openapi/v2" or path == "/openapi/v3" or path.startswith("/openapi/v3/"):
            return await self._openapi(handler, request)
        logs = _POD_LOG.match(path)
        if logs and request.method == "GET":
            return await self._pod_log(request, logs.group("namespace"), logs.group("name"))
        if request.headers.get("Content-Type", "").startswith(PROTOBUF):
            try:
                obj = protobuf.decode_object(await request.read())
            except protobuf.Unsupported as e:
                return _json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                       "message": f"the body of the request was in an unknown format ({e}) - accepted "
                                                  "media types include: application/json, application/yaml "
                                                  "(use `kubectl apply -f`)",
                                       "reason": "UnsupportedMediaType", "code": 415}, status=415)
            # aiohttp caches the body read; the emulator reads (and parses as JSON) that instead.
            request._read_bytes = json.dumps(obj).encode()
        table = request.method == "GET" and wants_table(request.headers.get("Accept", ""))
        if table and request.query.get("watch") in ("true", "1"):
            return await self._table_watch(request)
        response = await handler(request)
        if request.method != "GET" or response.status != 200 or not isinstance(response, aiohttp.web.Response):
            return response
        if _is_discovery(path):
            return _json_response(fix_discovery(json.loads(response.body)))
        if table:
            resource = _resource_of(path)
            if resource is not None:
                printer = tables.printer_for(*resource, await self._crds(request))
                body = tables.to_table(json.loads(response.body), printer, now=datetime.datetime.now(datetime.UTC),
                                       include_object=request.query.get("includeObject", "Metadata"))
                return _json_response(body)
        return response

    # --- loopback access to the server itself ----------------------------------------------

    @staticmethod
    def _base(request: aiohttp.web.BaseRequest) -> str:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host, port = (sockname[0], sockname[1]) if sockname else ("127.0.0.1", request.url.port)
        return f"http://{host}:{port}"

    @staticmethod
    def _client() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), read_bufsize=2**22)

    async def _crds(self, request: aiohttp.web.BaseRequest) -> list[Body]:
        async with self._client() as session, session.get(self._base(request) + CRDS_PATH) as response:
            return (await response.json()).get("items") or [] if response.status == 200 else []

    # --- OpenAPI ---------------------------------------------------------------------------

    async def _openapi(self, handler: Any, request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        crds = await self._crds(request)
        builtins = [(res.group, res.version, info.kind) for res, info in handler.resources.items()
                    if info.kind and "/" not in res.plural]
        all_schemas = openapi.schemas(crds, builtins, "#/components/schemas/")
        if request.path == "/openapi/v2":
            return _json_response(openapi.v2_document(all_schemas))
        served: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
        for res, info in handler.resources.items():
            if info.kind and "/" not in res.plural:
                served.setdefault((res.group, res.version), []).append((res.plural, info.kind, info.namespaced))
        documents = {gv: openapi.v3_document(group_schemas, openapi.resource_paths(*gv, served.get(gv, ())))
                     for gv, group_schemas in all_schemas.items()}
        if request.path.rstrip("/") == "/openapi/v3":
            return _json_response(openapi.v3_index(documents))
        wanted = request.path[len("/openapi/v3/"):].strip("/")
        for (group, version), document in documents.items():
            if openapi.group_version_path(group, version) == wanted:
                return _json_response(document)
        return _json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                               "message": f"no OpenAPI document for {wanted}", "code": 404}, status=404)

    # --- kubectl logs ------------------------------------------------------------------------

    async def _pod_log(self, request: aiohttp.web.BaseRequest, namespace: str, name: str) -> aiohttp.web.StreamResponse:
        """The pod's log file (written by the local executor), whole, tailed, or followed until the pod ends."""
        base = self._base(request)
        pod_path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        async with self._client() as session:
            async with session.get(base + pod_path) as response:
                if response.status != 200:
                    return _json_response(await response.json(), status=response.status)
                pod = await response.json()
            log = (pod["metadata"].get("annotations") or {}).get(LOG_ANNOTATION)
            if not log:
                return _json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 400,
                                       "reason": "BadRequest", "message": f"pod {name} has no local log "
                                                                          "(not run by the local executor)"},
                                      status=400)
            query = request.query
            tail = int(query["tailLines"]) if query.get("tailLines") else None
            limit = int(query["limitBytes"]) if query.get("limitBytes") else None
            content = await asyncio.to_thread(_read, log)
            if query.get("follow") not in ("true", "1"):
                return aiohttp.web.Response(body=log_tail(content, tail, limit), content_type="text/plain")
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(log_tail(content, tail, None))
            offset = len(content)
            try:
                while True:
                    async with session.get(base + pod_path) as current:
                        phase = (await current.json()).get("status", {}).get("phase") if current.status == 200 else None
                    more = (await asyncio.to_thread(_read, log))[offset:]
                    if more:
                        await response.write(more)
                        offset += len(more)
                    if phase not in ("Pending", "Running"):
                        break
                    await asyncio.sleep(0.5)
                await response.write_eof()
            except ConnectionError:
                pass  # kubectl went away (Ctrl-C)
            return response

    # --- watch as Tables ---------------------------------------------------------------------

    async def _table_watch(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """A watch whose events carry one-row Tables: proxied from a plain watch over loopback."""
        resource = _resource_of(request.path)
        printer = tables.printer_for(*resource, await self._crds(request)) if resource else tables.DEFAULT_PRINTER
        include = request.query.get("includeObject", "Metadata")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        first = True
        try:
            async with self._client() as session, session.get(
                    self._base(request) + request.path_qs, headers={"Accept": "application/json"}) as upstream:
                async for line in upstream.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and obj.get("kind") != "Status":
                        event["object"] = tables.to_table(obj, printer, now=datetime.datetime.now(datetime.UTC),
                                                          include_object=include, with_columns=first)
                        first = False
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientError):
            pass  # the client or the server went away
        return response


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""
