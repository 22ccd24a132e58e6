"""RBAC: the operator gets exactly what it uses, people get roles that never write status."""

from __future__ import annotations

import pytest

from chart.rendering import VALUE_SETS, ci_values, of_kind, one, render

GENFORGE = "genforge.dev"
NAMESPACED_KINDS = ("budgets", "datasets", "finetunes", "genmodels", "trainingruns")


def triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a list of rules grants."""
    return {(group, resource, verb)
            for rule in rules
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])}


def grant(group: str, resources, verbs) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


# What the operator does, and why (the chart's templates/_rbac.tpl says the same).
OPERATOR_NAMESPACED = (
    # kopf watches every genforge kind; the reconciler reads fresh; kopf patches finalizers + annotations.
    grant(GENFORGE, NAMESPACED_KINDS, ["get", "list", "watch", "patch"])
    # status: phase, conditions, cost, registry versions, Budget spending.
    | grant(GENFORGE, [f"{k}/status" for k in NAMESPACED_KINDS], ["patch"])
    # a pool's calibration run (AcceleratorPool spec.calibration): its GenModel, Dataset and run.
    | grant(GENFORGE, ["datasets", "genmodels", "trainingruns"], ["create"])
    # ownerReferences with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    | grant(GENFORGE, ["datasets/finalizers", "finetunes/finalizers", "trainingruns/finalizers"], ["update"])
    | grant("batch", ["jobs"], ["get", "list", "watch", "create", "patch", "delete"])
    | grant("", ["pods"], ["list", "watch"])
    # the trainer's ServiceAccount; a multi-node run's headless Service; a ConfigMap only for a
    # run document too large for the pod annotation that normally carries it.
    | grant("", ["configmaps", "serviceaccounts", "services"], ["create"])
    | grant("", ["events"], ["create"])
    # Kueue's Workload of a queued Job: why Kueue holds it.
    | grant("kueue.x-k8s.io", ["workloads"], ["list"])
)
OPERATOR_CLUSTER = (
    grant(GENFORGE, ["acceleratorpools"], ["get", "list", "watch"])
    | grant(GENFORGE, ["acceleratorpools/status"], ["patch"])
    | grant("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"])
)
NAMESPACES = grant("", ["namespaces"], ["list", "watch"])
CLUSTER_PEERING = grant("kopf.dev", ["clusterkopfpeerings"], ["list", "watch", "patch"])
NAMESPACED_PEERING = grant("kopf.dev", ["kopfpeerings"], ["list", "watch", "patch"])


def roles(objects: list[dict]) -> list[dict]:
    return of_kind(objects, "ClusterRole") + of_kind(objects, "Role")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_wildcards_anywhere(value_set):
    for role in roles(render(ci_values(value_set))):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: {rule}"
            assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_role_reads_secrets_or_escalates(value_set):
    forbidden_resources = {"secrets", "roles", "clusterroles", "rolebindings", "clusterrolebindings",
                           "serviceaccounts/token", "pods/exec"}
    for role in roles(render(ci_values(value_set))):
        for _, resource, verb in triples(role["rules"]):
            assert resource not in forbidden_resources, f"{role['metadata']['name']}: {verb} {resource}"
            assert verb not in ("escalate", "bind", "impersonate")


def test_all_namespaces_one_cluster_role_with_exactly_what_the_operator_uses():
    objects = render({})
    role = one(objects, "ClusterRole", "genforge-operator")
    assert triples(role["rules"]) == OPERATOR_NAMESPACED | OPERATOR_CLUSTER
    binding = one(objects, "ClusterRoleBinding", "genforge-operator")
    assert binding["roleRef"]["name"] == "genforge-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "genforge-operator",
                                    "namespace": "genforge-system"}]
    assert not of_kind(objects, "Role")


def test_ha_adds_cluster_peering_only():
    role = one(render(ci_values("ha")), "ClusterRole", "genforge-operator")
    assert triples(role["rules"]) == OPERATOR_NAMESPACED | OPERATOR_CLUSTER | CLUSTER_PEERING


def test_namespaced_mode_a_role_per_namespace_and_cluster_scope_only_for_cluster_kinds():
    objects = render(ci_values("namespaced"))
    cluster = one(objects, "ClusterRole", "genforge-operator-cluster")
    assert triples(cluster["rules"]) == OPERATOR_CLUSTER | NAMESPACES
    for namespace in ("team-a", "team-b"):
        role = next(r for r in of_kind(objects, "Role") if r["metadata"]["namespace"] == namespace)
        assert triples(role["rules"]) == OPERATOR_NAMESPACED | NAMESPACED_PEERING
        binding = next(b for b in of_kind(objects, "RoleBinding") if b["metadata"]["namespace"] == namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"][0]["namespace"] == "genforge-system"
    assert not [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"] == "genforge-operator"]


def test_rbac_create_false_renders_no_operator_rbac():
    objects = render({"rbac": {"create": False}})
    assert not [r for r in roles(objects) if "operator" in r["metadata"]["name"]]
    assert not of_kind(objects, "ClusterRoleBinding") and not of_kind(objects, "RoleBinding")


def test_nobody_binds_a_role_to_the_trainer():
    for value_set in VALUE_SETS:
        objects = render(ci_values(value_set))
        for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
            assert all(s["name"] != "genforge-trainer" for s in binding["subjects"])


# ------------------------------------------------------------------ roles for people
USER_WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def user_roles(values: dict | None = None) -> dict[str, dict]:
    objects = render(values or {})
    return {r["metadata"]["name"].removeprefix("genforge-"): r for r in of_kind(objects, "ClusterRole")
            if not r["metadata"]["name"].startswith("genforge-operator")}


def test_user_roles_never_touch_status_or_finalizers():
    for name, role in user_roles().items():
        for _, resource, _ in triples(role["rules"]):
            assert "/" not in resource, f"{name} may change {resource}"


def test_viewer_reads_everything_and_writes_nothing():
    role = user_roles()["viewer"]
    kinds = ["acceleratorpools", *NAMESPACED_KINDS]
    assert triples(role["rules"]) == grant(GENFORGE, kinds, ["get", "list", "watch"])


def test_runner_writes_the_work_but_not_budgets_or_pools():
    granted = triples(user_roles()["runner"]["rules"])
    for kind in ("datasets", "finetunes", "genmodels", "trainingruns"):
        assert grant(GENFORGE, [kind], USER_WRITES) <= granted
    for kind in ("budgets", "acceleratorpools"):
        assert not {v for g, r, v in granted if r == kind} & USER_WRITES, kind


def test_only_the_budget_admin_writes_budgets():
    for name, role in user_roles().items():
        writes_budgets = any(r == "budgets" and v in USER_WRITES for _, r, v in triples(role["rules"]))
        assert writes_budgets == (name == "budget-admin"), name
    granted = triples(user_roles()["budget-admin"]["rules"])
    assert not {r for _, r, v in granted if v in USER_WRITES} - {"budgets"}


@pytest.mark.parametrize("values, expected", [
    ({}, {"viewer": "view", "runner": "edit", "budget-admin": None}),
    ({"rbac": {"userRoles": {"aggregate": False}}}, {"viewer": None, "runner": None, "budget-admin": None}),
    ({"rbac": {"userRoles": {"aggregateBudgetAdminToAdmin": True}}},
     {"viewer": "view", "runner": "edit", "budget-admin": "admin"}),
], ids=["default", "no-aggregation", "budget-admins-are-namespace-admins"])
def test_aggregation_to_the_builtin_roles(values, expected):
    for name, role in user_roles(values).items():
        labels = role["metadata"]["labels"]
        aggregated = [k.rsplit("-", 1)[-1] for k, v in labels.items()
                      if k.startswith("rbac.authorization.k8s.io/aggregate-to-") and v == "true"]
        assert aggregated == ([expected[name]] if expected[name] else []), name


def test_user_roles_can_be_left_out():
    assert user_roles({"rbac": {"userRoles": {"create": False}}}) == {}
