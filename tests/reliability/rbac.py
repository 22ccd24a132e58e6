"""The operator's RBAC rules: the one list the least-privilege test checks the operator's
recorded API calls against, and that the chart's ClusterRole must match
(`test_security.py`; docs/security.md explains each rule).

Each rule: (apiGroup, resource or resource/subresource, verbs). Cluster-wide, because the
operator watches every namespace (`kopf run -A`).
"""

from __future__ import annotations

OPERATOR_RULES: list[tuple[str, str, frozenset[str]]] = [
    # genforge's own kinds: watched; the operator writes only status (and kopf's finalizer
    # and bookkeeping annotations on the kinds it handles, which need patch on the object).
    ("genforge.dev", "trainingruns", frozenset({"get", "list", "watch", "patch"})),
    ("genforge.dev", "finetunes", frozenset({"get", "list", "watch", "patch"})),
    ("genforge.dev", "datasets", frozenset({"get", "list", "watch", "patch"})),
    ("genforge.dev", "genmodels", frozenset({"get", "list", "watch", "patch"})),
    ("genforge.dev", "budgets", frozenset({"get", "list", "watch", "patch"})),
    ("genforge.dev", "acceleratorpools", frozenset({"get", "list", "watch"})),  # no handler kopf marks
    ("genforge.dev", "trainingruns/status", frozenset({"patch"})),
    ("genforge.dev", "finetunes/status", frozenset({"patch"})),
    ("genforge.dev", "datasets/status", frozenset({"patch"})),
    ("genforge.dev", "genmodels/status", frozenset({"patch"})),
    ("genforge.dev", "budgets/status", frozenset({"patch"})),
    ("genforge.dev", "acceleratorpools/status", frozenset({"patch"})),
    # Children carry ownerReferences with blockOwnerDeletion: clusters with the
    # OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
    ("genforge.dev", "trainingruns/finalizers", frozenset({"update"})),
    ("genforge.dev", "finetunes/finalizers", frozenset({"update"})),
    ("genforge.dev", "datasets/finalizers", frozenset({"update"})),
    # Children: the trainer Jobs (suspended/resumed by patch, deleted to restart), their
    # run-spec ConfigMaps and headless Services (multi-node). Pods are only read.
    ("batch", "jobs", frozenset({"get", "list", "watch", "create", "patch", "delete"})),
    ("", "configmaps", frozenset({"create"})),
    ("", "services", frozenset({"create"})),
    ("", "pods", frozenset({"list", "watch"})),
    ("", "events", frozenset({"create"})),
    # kopf discovers the served resources through the CRDs.
    ("apiextensions.k8s.io", "customresourcedefinitions", frozenset({"list", "watch"})),
]

#: Rules the test scenario does not exercise, with the reason they are still needed.
NOT_EXERCISED = {
    ("", "services", "create"): "headless Service of multi-node runs (no multi-node run in the scenario)",
    ("genforge.dev", "finetunes", "get"): "FineTunes reconcile like TrainingRuns (none in the scenario)",
    ("genforge.dev", "finetunes", "patch"): "kopf's finalizer on FineTunes",
    ("genforge.dev", "finetunes/status", "patch"): "FineTune status",
    ("genforge.dev", "genmodels", "patch"): "kopf's bookkeeping annotations on GenModels (field handlers)",
    ("genforge.dev", "budgets", "get"): "Budget re-read under an optimistic lock when a run is deleted",
    ("genforge.dev", "acceleratorpools", "get"): "pool re-read to fold in measured throughput",
    ("genforge.dev", "trainingruns/finalizers", "update"): "admission check only (no request is made)",
    ("genforge.dev", "finetunes/finalizers", "update"): "admission check only (no request is made)",
    ("genforge.dev", "datasets/finalizers", "update"): "admission check only (no request is made)",
    ("genforge.dev", "acceleratorpools/status", "patch"): "measured throughput in pool status",
    ("genforge.dev", "datasets", "get"): "Dataset re-read at reconcile",
    ("genforge.dev", "datasets", "patch"): "kopf's bookkeeping annotations on Datasets",
    ("batch", "jobs", "get"): "a Job the index has not caught up with",
    ("batch", "jobs", "delete"): "a Dataset whose spec changed, a run resumed after its deadline",
}


def permits(resource: str, group: str, verb: str) -> bool:
    return any(g == group and r == resource and verb in verbs for g, r, verbs in OPERATOR_RULES)


def granted() -> set[tuple[str, str, str]]:
    return {(g, r, v) for g, r, verbs in OPERATOR_RULES for v in verbs}
