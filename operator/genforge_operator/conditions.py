"""Conditions by the Kubernetes API conventions.

`lastTransitionTime` changes only when a condition's status flips; reason and message
may be updated in place. Pure: the caller passes `now`.
"""

from __future__ import annotations

from datetime import datetime

from .formats import timestamp


def set_condition(
    conditions: list[dict],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[dict]:
    """A new list with `type_` set; other conditions are kept as they are."""
    out = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(c)
            continue
        found = True
        changed = c.get("status") != status
        out.append({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": timestamp(now) if changed else c.get("lastTransitionTime", timestamp(now)),
            **({"observedGeneration": generation} if generation is not None else {}),
        })
    if not found:
        out.append({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": timestamp(now),
            **({"observedGeneration": generation} if generation is not None else {}),
        })
    return out


def get_condition(conditions: list[dict], type_: str) -> dict | None:
    return next((c for c in conditions if c.get("type") == type_), None)
