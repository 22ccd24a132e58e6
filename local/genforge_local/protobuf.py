"""Kubernetes protobuf request bodies → JSON objects, for the few kinds kubectl creates so.

kubectl's typed commands (`kubectl create namespace | configmap | secret`) send
`application/vnd.kubernetes.protobuf`: the magic `k8s\\0`, then a `runtime.Unknown`
(type meta, raw object bytes). The emulator speaks JSON only, so `KubectlSupport` decodes
those bodies with the field numbers of `k8s.io/api/core/v1/generated.proto` and
`k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`. Other kinds raise `Unsupported`.
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

Fields = list[tuple[int, int, Any]]  # (field number, wire type, value)


class Unsupported(ValueError):
    """A body this decoder does not understand."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise Unsupported("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Fields:
    """The top-level fields of a protobuf message."""
    out: Fields = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise Unsupported(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def _string(value: bytes) -> str:
    return value.decode()


def _map(entries: list[bytes], decode_value: Any) -> dict[str, Any]:
    result = {}
    for entry in entries:
        parts = {number: value for number, _, value in fields(entry)}
        result[_string(parts.get(1, b""))] = decode_value(parts.get(2, b""))
    return result


def _by_number(message: bytes) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = {}
    for number, _, value in fields(message):
        grouped.setdefault(number, []).append(value)
    return grouped


def object_meta(message: bytes) -> dict[str, Any]:
    f = _by_number(message)
    meta: dict[str, Any] = {}
    for number, key in ((1, "name"), (2, "generateName"), (3, "namespace")):
        if f.get(number) and f[number][-1]:
            meta[key] = _string(f[number][-1])
    if f.get(11):
        meta["labels"] = _map(f[11], _string)
    if f.get(12):
        meta["annotations"] = _map(f[12], _string)
    if f.get(14):
        meta["finalizers"] = [_string(v) for v in f[14]]
    return meta


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _namespace(f: dict[int, list[Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if f.get(2):
        finalizers = [_string(v) for v in _by_number(f[2][-1]).get(1, [])]
        if finalizers:
            obj["spec"] = {"finalizers": finalizers}
    return obj


def _config_map(f: dict[int, list[Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if f.get(2):
        obj["data"] = _map(f[2], _string)
    if f.get(3):
        obj["binaryData"] = _map(f[3], _b64)
    if f.get(4):
        obj["immutable"] = bool(f[4][-1])
    return obj


def _secret(f: dict[int, list[Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if f.get(2):
        obj["data"] = _map(f[2], _b64)
    obj["type"] = _string(f[3][-1]) if f.get(3) and f[3][-1] else "Opaque"  # the API server's default
    if f.get(4):
        obj["stringData"] = _map(f[4], _string)
    if f.get(5):
        obj["immutable"] = bool(f[5][-1])
    return obj


KINDS = {("v1", "Namespace"): _namespace, ("v1", "ConfigMap"): _config_map, ("v1", "Secret"): _secret}


def decode_object(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded object of a kind in `KINDS`, as its JSON form."""
    if not body.startswith(MAGIC):
        raise Unsupported("no k8s protobuf envelope")
    envelope = _by_number(body[len(MAGIC):])
    type_meta = _by_number(envelope.get(1, [b""])[-1])
    api_version = _string(type_meta.get(1, [b""])[-1])
    kind = _string(type_meta.get(2, [b""])[-1])
    decoder = KINDS.get((api_version, kind))
    if decoder is None:
        raise Unsupported(f"{kind or 'an object'} ({api_version}) in protobuf")
    raw = _by_number(envelope.get(2, [b""])[-1])
    obj = {"apiVersion": api_version, "kind": kind, "metadata": object_meta(raw.get(1, [b""])[-1])}
    obj.update(decoder(raw))
    return obj
