"""Server-side printing: objects → `meta.k8s.io/v1` Tables, as `kubectl get` asks for them.

`kubectl get` requests `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` and prints
the columns the server chooses: a CRD's `additionalPrinterColumns` (priority 1 only with
`-o wide`), the usual columns for the built-in kinds a user looks at here (Pods, Jobs,
Namespaces, Events, Nodes, ConfigMaps, Secrets, Services, CRDs), NAME and AGE for the
rest. Cells follow the API server: `date` columns and ages as "5m", missing values null
(kubectl prints `<none>`).

Pure functions of dicts; `now` is a parameter.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Body = dict[str, Any]
Column = dict[str, Any]

NAME_COLUMN: Column = {"name": "Name", "type": "string", "format": "name", "priority": 0,
                       "description": "Name must be unique within a namespace."}


def _column(name: str, type_: str = "string", priority: int = 0, description: str = "", format_: str = "") -> Column:
    return {"name": name, "type": type_, "format": format_, "priority": priority, "description": description}


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's age format (`apimachinery/pkg/util/duration.HumanDuration`)."""
    seconds = int(seconds)
    if seconds < 0:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    if days < 365 * 8:
        years = days // 365
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{days // 365}y"


def age(timestamp: Any, now: datetime.datetime) -> str | None:
    when = _parse_time(timestamp)
    return human_duration((now - when).total_seconds()) if when else None


_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\?\(@\.([\w.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def json_path(obj: Any, path: str) -> Any:
    """A CRD printer column's JSONPath: `.a.b`, `.a[0]`, `.a[?(@.type=="Ready")].status`."""
    values = [obj]
    for match in _STEP.finditer(path.strip().lstrip("{").rstrip("}")):
        key, index, field, wanted = match.groups()
        nxt = []
        for value in values:
            if key is not None and isinstance(value, Mapping) and key in value:
                nxt.append(value[key])
            elif index is not None and isinstance(value, list) and int(index) < len(value):
                nxt.append(value[int(index)])
            elif field is not None and isinstance(value, list):
                nxt.extend(item for item in value if isinstance(item, Mapping) and str(item.get(field)) == wanted)
        values = nxt
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _cell(value: Any, type_: str, now: datetime.datetime) -> Any:
    if value is None:
        return None
    if type_ == "date":
        return age(value, now)
    if type_ == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if type_ == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if type_ == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"))
    return value if type_ == "string" and isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- the printers

Printer = tuple[list[Column], Callable[[Body, datetime.datetime], list[Any]]]


def crd_printer(version: Mapping[str, Any]) -> Printer:
    """The printer of a CRD version: Name + additionalPrinterColumns (or Name, Age)."""
    declared = version.get("additionalPrinterColumns")
    if declared is None:
        declared = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    columns = [NAME_COLUMN] + [_column(c["name"], c.get("type", "string"), int(c.get("priority", 0)),
                                       c.get("description", ""), c.get("format", "")) for c in declared]

    def cells(obj: Body, now: datetime.datetime) -> list[Any]:
        return [obj["metadata"]["name"]] + [_cell(json_path(obj, c["jsonPath"]), c.get("type", "string"), now)
                                            for c in declared]

    return columns, cells


def _meta(obj: Body) -> Body:
    return obj.get("metadata") or {}


def _default_cells(obj: Body, now: datetime.datetime) -> list[Any]:
    return [_meta(obj).get("name"), age(_meta(obj).get("creationTimestamp"), now)]


DEFAULT_PRINTER: Printer = ([NAME_COLUMN, _column("Age", description="CreationTimestamp")], _default_cells)


def _pod_status(pod: Body) -> str:
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Pending"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated"):
            terminated = state["terminated"]
            reason = terminated.get("reason") or (f"Signal:{terminated['signal']}" if terminated.get("signal")
                                                  else f"ExitCode:{terminated.get('exitCode')}")
    if _meta(pod).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_cells(pod: Body, now: datetime.datetime) -> list[Any]:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    return [_meta(pod).get("name"), f"{ready}/{len(containers)}", _pod_status(pod), restarts,
            age(_meta(pod).get("creationTimestamp"), now), status.get("podIP") or "<none>",
            (pod.get("spec") or {}).get("nodeName") or "<none>", "<none>", "<none>"]


POD_PRINTER: Printer = ([NAME_COLUMN, _column("Ready"), _column("Status"), _column("Restarts", "string"),
                         _column("Age"), _column("IP", priority=1), _column("Node", priority=1),
                         _column("Nominated Node", priority=1), _column("Readiness Gates", priority=1)],
                        _pod_cells)


def _job_status(job: Body) -> str:
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    for kind, label in (("Complete", "Complete"), ("Failed", "Failed"), ("FailureTarget", "FailureTarget"),
                        ("SuccessCriteriaMet", "SuccessCriteriaMet"), ("Suspended", "Suspended")):
        if kind in conditions:
            return label
    if _meta(job).get("deletionTimestamp"):
        return "Terminating"
    return "Running"


def _job_cells(job: Body, now: datetime.datetime) -> list[Any]:
    spec, status = job.get("spec") or {}, job.get("status") or {}
    completions = spec.get("completions")
    if completions is None and spec.get("parallelism") is None:
        completions = 1  # the API server's default
    succeeded = int(status.get("succeeded") or 0)
    shown = f"{succeeded}/{completions}" if completions is not None else f"{succeeded}/1 of {spec.get('parallelism', 1)}"
    start = _parse_time(status.get("startTime"))
    end = _parse_time(status.get("completionTime")) or now
    duration = human_duration((end - start).total_seconds()) if start else None
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    selector = ",".join(f"{k}={v}" for k, v in ((spec.get("selector") or {}).get("matchLabels") or {}).items())
    return [_meta(job).get("name"), _job_status(job), shown, duration, age(_meta(job).get("creationTimestamp"), now),
            ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers),
            selector or "<none>"]


JOB_PRINTER: Printer = ([NAME_COLUMN, _column("Status"), _column("Completions"), _column("Duration"),
                         _column("Age"), _column("Containers", priority=1), _column("Images", priority=1),
                         _column("Selector", priority=1)], _job_cells)


def _event_cells(event: Body, now: datetime.datetime) -> list[Any]:
    involved = event.get("involvedObject") or {}
    last = event.get("lastTimestamp") or event.get("eventTime") or _meta(event).get("creationTimestamp")
    return [age(last, now), event.get("type"), event.get("reason"),
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}", event.get("message")]


EVENT_PRINTER: Printer = ([_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"),
                           _column("Message")], _event_cells)


def _namespace_cells(ns: Body, now: datetime.datetime) -> list[Any]:
    return [_meta(ns).get("name"), (ns.get("status") or {}).get("phase"), age(_meta(ns).get("creationTimestamp"), now)]


NAMESPACE_PRINTER: Printer = ([NAME_COLUMN, _column("Status"), _column("Age")], _namespace_cells)


def _node_cells(node: Body, now: datetime.datetime) -> list[Any]:
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    return [_meta(node).get("name"), "Ready" if ready.get("status") == "True" else "NotReady", "<none>",
            age(_meta(node).get("creationTimestamp"), now),
            ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")]


NODE_PRINTER: Printer = ([NAME_COLUMN, _column("Status"), _column("Roles"), _column("Age"), _column("Version")],
                         _node_cells)


def _data_cells(obj: Body, now: datetime.datetime) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {}) + len(obj.get("stringData") or {})
    cells = [_meta(obj).get("name")]
    if obj.get("kind") == "Secret":
        cells.append(obj.get("type") or "Opaque")
    return cells + [count, age(_meta(obj).get("creationTimestamp"), now)]


CONFIGMAP_PRINTER: Printer = ([NAME_COLUMN, _column("Data", "integer"), _column("Age")], _data_cells)
SECRET_PRINTER: Printer = ([NAME_COLUMN, _column("Type"), _column("Data", "integer"), _column("Age")], _data_cells)


def _service_cells(svc: Body, now: datetime.datetime) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [_meta(svc).get("name"), spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", "<none>",
            ports or "<none>", age(_meta(svc).get("creationTimestamp"), now)]


SERVICE_PRINTER: Printer = ([NAME_COLUMN, _column("Type"), _column("Cluster-IP"), _column("External-IP"),
                             _column("Port(s)"), _column("Age")], _service_cells)


def _crd_cells(crd: Body, now: datetime.datetime) -> list[Any]:
    return [_meta(crd).get("name"), _meta(crd).get("creationTimestamp")]


CRD_PRINTER: Printer = ([NAME_COLUMN, _column("Created At", "date")], _crd_cells)

BUILTIN_PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "pods"): POD_PRINTER,
    ("batch", "jobs"): JOB_PRINTER,
    ("", "events"): EVENT_PRINTER,
    ("", "namespaces"): NAMESPACE_PRINTER,
    ("", "nodes"): NODE_PRINTER,
    ("", "configmaps"): CONFIGMAP_PRINTER,
    ("", "secrets"): SECRET_PRINTER,
    ("", "services"): SERVICE_PRINTER,
    ("apiextensions.k8s.io", "customresourcedefinitions"): CRD_PRINTER,
}


def printer_for(group: str, version: str, plural: str, crds: Iterable[Mapping[str, Any]]) -> Printer:
    for crd in crds:
        spec = crd.get("spec") or {}
        if spec.get("group") == group and (spec.get("names") or {}).get("plural") == plural:
            for v in spec.get("versions") or []:
                if v.get("name") == version:
                    return crd_printer(v)
    return BUILTIN_PRINTERS.get((group, plural), DEFAULT_PRINTER)


def _row_object(obj: Body, include: str) -> Body | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def to_table(payload: Body, printer: Printer, *, now: datetime.datetime, include_object: str = "Metadata",
             with_columns: bool = True) -> Body:
    """A list (`kind: ...List`) or a single object as a Table."""
    columns, cells = printer
    items = payload.get("items") if isinstance(payload.get("items"), list) else [payload]
    rows = []
    for obj in items:
        row: Body = {"cells": cells(obj, now)}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    meta = payload.get("metadata") or {}
    table: Body = {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"resourceVersion": meta.get("resourceVersion", "")},
                   "columnDefinitions": columns if with_columns else [], "rows": rows}
    return table
