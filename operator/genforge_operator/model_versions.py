"""A GenModel's versions (status.versions, latest, promoted): the model registry.

Pure `register` decides; `add_version` applies it with an optimistic lock on the
GenModel's resourceVersion, so two runs finishing at once never lose a version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import conditions as cond
from .api import GenModelSpec, from_dict
from .kube import update_status
from .vocabulary import ConditionStatus, ConditionType, Reason

MAX_ATTEMPTS = 5


def _version_number(name: str) -> int:
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else 0


#: What must agree for two versions' metrics to be compared: the held-out reference images for
#: any metric; for FID/KID also the feature extractor and the number of generated samples
#: (FID is biased by sample count).
_SAME_FOR_ANY = ("referenceSet",)
_SAME_FOR_FEATURES = ("referenceSet", "featureExtractor", "samples")


@dataclass(frozen=True)
class Promotion:
    promoted: str | None
    status: str  # condition status: True when the new version was considered
    reason: str  # Promoted | Kept | MetricMissing | NotComparable
    message: str


def _score(version: dict, metric: str) -> float | None:
    value = (version.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measured_differently(a: dict, b: dict, metric: str) -> list[str]:
    """What differs between how `a` and `b` measured `metric` (empty: comparable). A version
    recorded before these were kept (no `evaluation`) is taken as comparable."""
    ea, eb = a.get("evaluation") or {}, b.get("evaluation") or {}
    keys = _SAME_FOR_FEATURES if metric in ("fid", "kid") else _SAME_FOR_ANY
    return [f"{k} {ea[k]} vs {eb[k]}" for k in keys
            if ea.get(k) is not None and eb.get(k) is not None and ea[k] != eb[k]]


def promote(spec: GenModelSpec, versions: list[dict], current: str | None) -> Promotion:
    """Decide the promoted version after `versions[-1]` was added; `current` is the promoted one.

    The best value of `spec.promotion.metric` wins among the versions measured like the new
    one. A new version without the metric, or measured differently from the promoted one
    (another reference set, feature extractor or sample count), leaves the promotion as it
    is — and says why, instead of promoting the latest silently.
    """
    metric, new = spec.promotion.metric, versions[-1]
    by_name = {v["name"]: v for v in versions}
    keep = current if current in by_name else None
    if _score(new, metric) is None:
        measured = sorted(k for k in (new.get("metrics") or {}) if _score(new, k) is not None)
        return Promotion(keep, ConditionStatus.FALSE, Reason.METRIC_MISSING,
                         f"version {new['name']} has no {metric!r} metric (it measured "
                         f"{', '.join(measured) or 'nothing'}), so it was not compared; promoted stays "
                         f"{keep or 'unset'}. Add {metric} to the run's evaluation.metrics, or set "
                         f"promotion.metric to one it measures.")
    if keep is not None and _score(by_name[keep], metric) is not None:
        differs = measured_differently(new, by_name[keep], metric)
        if differs:
            return Promotion(keep, ConditionStatus.FALSE, Reason.NOT_COMPARABLE,
                             f"version {new['name']}'s {metric} was measured differently from promoted "
                             f"{keep}'s ({'; '.join(differs)}), so it was not compared; promoted stays {keep}")
    pool = [v for v in versions if _score(v, metric) is not None and not measured_differently(v, new, metric)]
    sign = 1 if spec.promotion.lower_is_better else -1
    best = min(pool, key=lambda v: (sign * _score(v, metric), -_version_number(v["name"])))["name"]
    direction = "lowest" if spec.promotion.lower_is_better else "highest"
    reason = Reason.PROMOTED if best == new["name"] else Reason.KEPT
    return Promotion(best, ConditionStatus.TRUE, reason,
                     f"{best} has the {direction} {metric} ({_score(by_name[best], metric):.6g}) of "
                     f"{len(pool)} comparable version(s); {new['name']} has {_score(new, metric):.6g}")


def register(model_body: dict, version: dict, now: datetime | None = None) -> tuple[dict | None, str]:
    """(status patch, version name) for adding `version`; (None, name) if already there.

    Idempotent: a version from the same source run is never added twice. The patch carries
    condition Promoted, saying how the promoted version was decided.
    """
    status = model_body.get("status") or {}
    versions = list(status.get("versions") or [])
    for existing in versions:
        if existing.get("source") == version["source"]:
            return None, existing["name"]
    name = f"v{max((_version_number(v['name']) for v in versions), default=0) + 1}"
    versions.append({"name": name, **version})
    spec = from_dict(GenModelSpec, model_body.get("spec") or {}, "spec")
    decision = promote(spec, versions, status.get("promoted"))
    conditions = cond.set_condition(status.get("conditions") or [], ConditionType.PROMOTED, decision.status, decision.reason,
                                    decision.message, now or datetime.now(UTC))
    patch = {"versions": versions, "latest": name, "conditions": conditions}
    if decision.promoted is not None:
        patch["promoted"] = decision.promoted
    return patch, name


def promotion_note(patch: dict | None) -> dict | None:
    """The Promoted condition of a registry patch when it is a warning (metric missing, or
    not comparable), for an Event on the GenModel."""
    found = cond.get_condition((patch or {}).get("conditions") or [], ConditionType.PROMOTED)
    return found if found and found.get("status") == ConditionStatus.FALSE else None


def add_version(kube, namespace: str, run_body: dict, version: dict,
                on_note: Callable[[dict, dict], None] | None = None) -> str | None:
    """Record `version` on the run's GenModel; returns the version name (None: no GenModel).

    `on_note(model, condition)` is called when the promotion was left as it was because the
    new version lacks the promotion metric or was measured differently (an Event's material).

    Raises `kube.StatusConflict` when other writers won every attempt (many runs finishing
    at once, all reconciled again after a restart): the caller must not record the run as
    finished without its version.
    """
    spec = run_body.get("spec") or {}
    model_name = (spec.get("modelRef") or spec.get("baseModel") or {}).get("name")
    decided: dict = {}

    def change(model: dict) -> dict | None:
        decided["patch"], decided["name"] = register(model, version)
        return decided["patch"]

    model = update_status(kube, "GenModel", namespace, model_name, change, attempts=MAX_ATTEMPTS)
    if model is not None:
        note = promotion_note(decided["patch"])
        if note is not None and on_note is not None:
            on_note(model, note)
    return decided.get("name")
