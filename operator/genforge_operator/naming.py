"""Names and labels of everything the operator creates — one place for each.

Child names are deterministic (level-based reconcile and restarts never create a second
Job) and always fit Kubernetes limits: a long owner name is cut and suffixed with a
short hash of the full name, so two long names never collide.
"""

from __future__ import annotations

import hashlib
import re

from .api import GROUP

DNS_LABEL_MAX = 63
LABEL_VALUE_MAX = 63

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_APP = "app.kubernetes.io/name"
LABEL_KIND = f"{GROUP}/kind"
LABEL_NAME = f"{GROUP}/name"
LABEL_UID = f"{GROUP}/owner-uid"
LABEL_ROLE = f"{GROUP}/role"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
#: Kueue reads a Job's WorkloadPriorityClass from this label; a run's own label is copied to its Job.
LABEL_KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"
MANAGER = "genforge"
#: On a trainer pod (its Job's template): the run document the trainer reads (builders.py).
ANNOTATION_RUN_SPEC = f"{GROUP}/run-spec"
#: On the GenModel, Dataset and TrainingRun of a pool's calibration run: the pool's name.
LABEL_CALIBRATION_FOR = f"{GROUP}/calibration-for"

KIND_PREFIX = {"Dataset": "gf-ds", "TrainingRun": "gf-tr", "FineTune": "gf-ft"}


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def fit(name: str, limit: int = DNS_LABEL_MAX, *, reserve: int = 0) -> str:
    """`name` cut to `limit - reserve` characters, with a hash suffix when cut."""
    room = limit - reserve
    if len(name) <= room:
        return name
    suffix = _digest(name)
    return f"{name[: room - len(suffix) - 1].rstrip('-.')}-{suffix}"


def child_name(kind: str, name: str) -> str:
    """The Job / ConfigMap / Service name for a resource.

    Pods of an Indexed Job are named `<job>-<index>-<random5>` and their hostnames
    `<job>-<index>`, so the Job name keeps room for them within a DNS label. A headless
    Service needs a DNS-1035 label, so the dots a resource name may have become dashes;
    the name then gets the hash suffix, so `a.b` and `a-b` never share children.
    """
    full = f"{KIND_PREFIX[kind]}-{name}"
    label = re.sub(r"[^a-z0-9-]", "-", full)
    if label == full:
        return fit(full, reserve=12)
    room = DNS_LABEL_MAX - 12
    suffix = _digest(full)
    return f"{label[: room - len(suffix) - 1].rstrip('-')}-{suffix}"


def label_value(value: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]", "-", value)
    value = fit(value, LABEL_VALUE_MAX)
    return value.strip("-._") or "x"


def owner_labels(kind: str, name: str, uid: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGER,
        LABEL_APP: "genforge-trainer",
        LABEL_KIND: kind,
        LABEL_NAME: label_value(name),
        LABEL_UID: uid,
    }


def owner_selector(uid: str) -> str:
    return f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_UID}={uid}"


def calibration_name(pool: str) -> str:
    """The name of a pool's calibration run and of its GenModel and Dataset (one per pool:
    a second create of it is a no-op, never a second run)."""
    full = f"calibrate-{pool}"
    label = re.sub(r"[^a-z0-9-]", "-", full)
    if label == full:
        return fit(full)
    suffix = _digest(full)  # the dots of `a.b` became dashes: `a.b` and `a-b` keep names of their own
    return f"{label[: DNS_LABEL_MAX - len(suffix) - 1].rstrip('-')}-{suffix}"
