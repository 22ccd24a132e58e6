"""Bad values fail the install: the strict schema for types and typos, validateValues for the rest."""

from __future__ import annotations

import re

import pytest
import yaml

from chart.rendering import CHART, helm, render


def _schema_error(values: dict) -> str:
    with helm().Chart.load(str(CHART)) as chart:
        with pytest.raises(helm().HelmValuesError) as info:
            chart.render(values, name="genforge", namespace="genforge-system")
    return str(info.value)


@pytest.mark.parametrize("values, names", [
    ({"operator": {"replica": 3}}, "replica"),
    ({"opertor": {"replicas": 3}}, "opertor"),
    ({"operator": {"replicas": "3"}}, "/operator/replicas"),
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"operator": {"watchNamespaces": "team-a"}}, "/operator/watchNamespaces"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    ({"storage": {"type": "s3"}}, "/storage/type"),
    ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
    ({"trainer": {"extraEnv": {"NCCL_DEBUG": 1}}}, "/trainer/extraEnv/NCCL_DEBUG"),
    ({"pools": {"gpu": {"accelerator": {"type": "nvidia-l4"}, "pricePerHr": "1"}}}, "pricePerHr"),
    ({"pools": {"gpu": {"accelerator": {"typ": "cpu"}, "pricePerHour": "1"}}}, "typ"),
    ({"pools": {"gpu": {"pricePerHour": "cheap"}}}, "/pools/gpu/pricePerHour"),
    ({"budgets": [{"name": "team", "spec": {"limit": "5", "onExhausted": "Panic"}}]}, "/budgets/0/spec/onExhausted"),
    ({"budgets": [{"name": "team", "spec": {"limit": "5"}, "namespce": "a"}]}, "namespce"),
], ids=["nested-typo", "top-level-typo", "string-for-integer", "zero-replicas", "string-for-list", "bad-enum",
        "bad-storage-type", "typo-in-monitoring", "number-for-env-string", "pool-spec-typo", "pool-nested-typo",
        "pool-price-not-money", "budget-bad-enum", "budget-item-typo"])
def test_the_schema_rejects_typos_and_wrong_types(values, names):
    assert names in _schema_error(values)


def test_a_bad_values_file_is_rejected_with_every_schema_error():
    bad = yaml.safe_load("""
operator:
  replicas: two
  imagePullSecret: [regcred]
networkPolicy:
  enabled: yes please
""")
    message = _schema_error(bad)
    for expected in ("/operator/replicas", "imagePullSecret", "/networkPolicy/enabled"):
        assert expected in message


def _validate_values_failure(values: dict) -> list[str]:
    with pytest.raises(helm().HelmRenderError) as info:
        render(values)
    message = str(info.value)
    count = int(re.search(r"genforge: (\d+) problem\(s\)", message).group(1))
    problems = re.findall(r"^\s+- (.+)$", message, flags=re.MULTILINE)
    assert len(problems) == count, message
    return problems


def test_validate_values_reports_every_problem_at_once():
    problems = _validate_values_failure({
        "storage": {"type": "objectStore", "pvc": {"create": True}},
        "metrics": {"port": 8081, "service": {"enabled": False}, "serviceMonitor": {"enabled": True}},
        "operator": {"watchNamespaces": ["team-a"]},
        "trainer": {"namespaces": ["team-b"]},
        "budgets": [{"name": "team", "namespace": "team-c", "spec": {"limit": "5"}},
                    {"name": "team", "namespace": "team-c", "spec": {"limit": "6"}}],
        "pools": {"gpu": {"accelerator": {"type": "nvidia-l4"}, "pricePerHour": "1"}},
    })
    expected = [
        "storage.objectStore.uri: required",
        "storage.pvc.create: true has no effect",
        "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        "metrics.port: 8081 is kopf's liveness endpoint",
        'trainer.namespaces: "team-b" is not in operator.watchNamespaces',
        'Budget "team" is in namespace "team-c", which is not in operator.watchNamespaces',
        "Budget team-c/team is listed twice",
        'pools.gpu: accelerator "nvidia-l4" needs accelerator.resourceName',
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), fragment
    assert len(problems) == len(expected) + 1  # both team-c Budgets are outside the watched namespaces


def test_valid_values_pass_validate_values():
    assert render({"storage": {"type": "objectStore", "objectStore": {"uri": "s3://b/p", "secretName": "s3"}}})


@pytest.mark.parametrize("spec", [
    {"accelerator": {"type": "cpu"}, "pricePerHour": "1"},
    {"pricePerHour": "1"},
    {"accelerator": {"type": "cpu", "resourceName": "nvidia.com/gpu"}, "pricePerHour": "1"},
    {"accelerator": {"type": "nvidia-l4"}, "pricePerHour": "1"},
    {"accelerator": {"type": "nvidia-l4", "resourceName": "nvidia.com/gpu"}, "pricePerHour": "1"},
    {"accelerator": {"type": "nvidia-l4", "resourceName": "nvidia.com/gpu"}, "tpu": {"topology": "2x2"},
     "pricePerHour": "1"},
    {"accelerator": {"type": "tpu-v5-lite-podslice", "resourceName": "google.com/tpu"}, "pricePerHour": "1"},
    {"accelerator": {"type": "tpu-v5-lite-podslice", "resourceName": "google.com/tpu", "perNode": 4},
     "tpu": {"topology": "2x2"}, "pricePerHour": "1"},
], ids=["cpu", "defaulted-cpu", "cpu-with-resource", "gpu-without-resource", "gpu", "tpu-shape-on-gpu",
        "tpu-without-topology", "tpu"])
def test_validate_values_judges_pools_as_the_crds_cel_rules_do(spec):
    """validateValues reports early, and all at once, what the API server's CEL rules would reject."""
    from genforge_operator import schema

    pool = {"apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": "p"}, "spec": spec}
    rejected_by_api = bool(schema.validate(pool))
    try:
        render({"pools": {"p": spec}})
        rejected_by_chart = False
    except helm().HelmRenderError:
        rejected_by_chart = True
    assert rejected_by_chart == rejected_by_api


def _leaf_keys_without_a_comment(text: str) -> list[str]:
    """Keys whose value is not a documented map of their own and that have no comment above them.

    A key under a commented parent (e.g. `resources:` → `requests:` → `cpu`) is that
    parent's documented value and needs no comment of its own.
    """
    lines = text.splitlines()
    documented: list[tuple[int, bool]] = []  # (indent, commented) of the enclosing keys
    missing = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):(.*)$", line)
        if not match:
            continue
        indent, key, value = len(match.group(1)), match.group(2), match.group(3)
        while documented and documented[-1][0] >= indent:
            documented.pop()
        previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        commented = previous.strip().startswith("#")
        nxt = next((ln for ln in lines[i + 1:] if ln.strip() and not ln.strip().startswith("#")), "")
        is_parent = not value.strip() and len(nxt) - len(nxt.lstrip()) > indent
        inside_documented = any(c for _, c in documented)
        if not is_parent and not commented and not inside_documented:
            missing.append(key)
        documented.append((indent, commented))
    return missing


def test_every_value_is_documented_inline():
    assert _leaf_keys_without_a_comment((CHART / "values.yaml").read_text()) == []


def test_the_documentation_check_notices_an_undocumented_key():
    assert _leaf_keys_without_a_comment("a:\n  # -- b\n  b: 1\n  c: 2\n") == ["c"]
