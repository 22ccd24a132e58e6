"""`Api`: plain JSON over HTTP(S) to a local API server for genforge's kinds — what the demo
and `LocalControlPlane.api()` use instead of kubectl."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from genforge_operator.api import GROUP, KINDS, VERSION

Body = dict[str, Any]


class Api:
    """Plain JSON over HTTP(S) to the local API server (no kubectl needed); for the real
    control plane, `ssl_context` trusts its CA and presents the admin's certificate."""

    def __init__(self, url: str, namespace: str = "default", ssl_context: Any = None):
        self.url, self.namespace = url.rstrip("/"), namespace
        self.ssl_context = ssl_context

    def path(self, kind: str, name: str | None = None) -> str:
        k = KINDS[kind]
        scope = f"/namespaces/{self.namespace}" if k.namespaced else ""
        return f"/apis/{GROUP}/{VERSION}{scope}/{k.plural}" + (f"/{name}" if name else "")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as response:
            return json.loads(response.read())

    def apply(self, obj: Body) -> None:
        if obj.get("apiVersion") != f"{GROUP}/{VERSION}" or obj["kind"] not in KINDS:
            raise ValueError(f"the demo applies genforge kinds only, not {obj.get('apiVersion')} {obj['kind']}")
        try:
            self.request("POST", self.path(obj["kind"]), obj)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise RuntimeError(f"applying {obj['kind']} {obj['metadata']['name']}: "
                                   f"{e.code} {e.read()[:500]!r}") from e

    def items(self, kind: str) -> list[Body]:
        return self.request("GET", self.path(kind)).get("items") or []
