"""The few Kubernetes API calls the local executor and kubelet make, over aiohttp with JSON bodies.

Retries a connection failure or a 5xx answer a few times (the emulator's injected faults,
a real API server starting); anything else is an `ApiError` with the server's answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

Body = dict[str, Any]
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """An API request the server answered with an error: its HTTP status and parsed body."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body!r}"[:500])
        self.status, self.body = status, body


class ApiClient:
    """A client of one API server (the URL, a bearer token, a TLS context) for the calls above."""

    def __init__(self, url: str, token: str | None, ssl_context: Any = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl_context = ssl_context
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context is not None else None
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={**self.headers, "User-Agent": "genforge-local-executor"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), read_bufsize=2**22)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(self, method: str, path: str, body: Any = None, *, content_type: str = JSON,
                      params: Mapping[str, str] | None = None) -> Any:
        assert self.session is not None
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(5):
            try:
                async with self.session.request(method, self.url + path, data=data, params=params,
                                                headers={"Content-Type": content_type},
                                                timeout=aiohttp.ClientTimeout(total=30)) as response:
                    payload = await response.read()
                    parsed = json.loads(payload) if payload else None
                    if response.status >= 500 and attempt < 4:
                        await asyncio.sleep(0.1 * 2 ** attempt)
                        continue
                    if response.status >= 400:
                        raise ApiError(response.status, parsed)
                    return parsed
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.1 * 2 ** attempt)
        raise AssertionError("unreachable")

    async def get(self, path: str) -> Body | None:
        try:
            return await self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, path: str, patch: Body) -> Body | None:
        try:
            return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def delete(self, path: str) -> None:
        try:
            await self.request("DELETE", path, {"propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[Body]:
        assert self.session is not None
        params = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": "60",
                  "allowWatchBookmarks": "true"}
        async with self.session.get(self.url + path, params=params,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=90)) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)



def pods_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/pods"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def jobs_path(namespace: str, name: str, sub: str | None = None) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}" + (f"/{sub}" if sub else "")
