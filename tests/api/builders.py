"""Small builders for API tests: start from a shipped example, change a few fields."""

from __future__ import annotations

import copy
import functools
import re
import uuid
from typing import Any

from genforge_operator import bundled, schema
from genforge_operator.api import GROUP, KINDS, VERSION

DELETE = object()  # `with_fields(obj, {"spec.budget": DELETE})` removes the field

_EXAMPLE_FILES = {
    "AcceleratorPool": "pools.yaml",
    "Budget": "budget.yaml",
    "Dataset": "dataset.yaml",
    "GenModel": "model.yaml",
    "TrainingRun": "trainingrun.yaml",
    "FineTune": "finetune-lora.yaml",
}


def example_documents() -> list[tuple[str, dict]]:
    """(file name, document) for every document in examples/*.yaml (fresh copies)."""
    return copy.deepcopy(_example_documents())


@functools.lru_cache(maxsize=1)
def _example_documents() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(bundled.examples_dir().glob("*.yaml"))
        for doc in schema.load_yaml_documents(path)
    ]


def example(kind: str, name: str | None = None) -> dict:
    """A fresh copy of the shipped example of `kind` (the first one, or the one called `name`)."""
    for file_name, doc in _example_documents():
        if file_name == _EXAMPLE_FILES[kind] and doc["kind"] == kind:
            if name is None or doc["metadata"]["name"] == name:
                return copy.deepcopy(doc)
    raise LookupError(f"no example {kind} {name or ''}")


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parts(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _PART.findall(path)]


def with_fields(obj: dict, changes: dict[str, Any]) -> dict:
    """A copy of `obj` with `{"spec.training.steps": 0, "spec.tolerations[0].value": "x"}` applied.

    Missing intermediate objects are created; the value `DELETE` removes a field.
    """
    out = copy.deepcopy(obj)
    for path, value in changes.items():
        *parents, last = _parts(path)
        node: Any = out
        for part in parents:
            if isinstance(part, str) and part not in node:
                node[part] = {}
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return out


def make(kind: str, changes: dict[str, Any] | None = None, *, name: str | None = None) -> dict:
    """The example of `kind` with `changes` applied (see `with_fields`)."""
    return with_fields(example(kind, name), changes or {})


def resource_path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """The API path of a genforge object (or its collection, or a subresource)."""
    k = KINDS[kind]
    scope = f"/namespaces/{namespace}" if k.namespaced else ""
    return f"/apis/{GROUP}/{VERSION}{scope}/{k.plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def with_unique_name(obj: dict) -> dict:
    """A copy of `obj` under a fresh name, so cases replayed against one server never collide."""
    obj = copy.deepcopy(obj)
    obj.setdefault("metadata", {})
    if isinstance(obj["metadata"], dict):
        obj["metadata"]["name"] = f"case-{uuid.uuid4().hex[:10]}"
    return obj
