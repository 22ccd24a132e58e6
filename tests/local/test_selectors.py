"""Label and field selectors parse and match as kube-apiserver's do."""

from __future__ import annotations

import pytest

from genforge_local.selectors import SelectorError, field_selector, label_selector

OBJECTS = {
    "gold-prod": {"metadata": {"name": "gold-prod", "labels": {"tier": "gold", "env": "prod"}}},
    "silver-prod": {"metadata": {"name": "silver-prod", "labels": {"tier": "silver", "env": "prod"}},
                    "status": {"phase": "Running"}},
    "dev": {"metadata": {"name": "dev", "labels": {"env": "dev"}}, "spec": {"suspend": True}},
}


def selected(predicate) -> list[str]:
    return sorted(name for name, obj in OBJECTS.items() if predicate(obj))


@pytest.mark.parametrize(("selector", "names"), [
    ("", ["dev", "gold-prod", "silver-prod"]),
    ("env=prod", ["gold-prod", "silver-prod"]),
    ("env==prod", ["gold-prod", "silver-prod"]),
    ("env!=prod", ["dev"]),
    ("tier in (gold, silver)", ["gold-prod", "silver-prod"]),
    ("tier notin (gold)", ["dev", "silver-prod"]),
    ("tier", ["gold-prod", "silver-prod"]),
    ("!tier", ["dev"]),
    ("env=prod,tier=gold", ["gold-prod"]),
    ("env in (prod,dev),!tier", ["dev"]),
    ("env=", []),
], ids=lambda value: value if isinstance(value, str) else None)
def test_label_selector(selector, names):
    assert selected(label_selector(selector)) == names


@pytest.mark.parametrize(("selector", "names"), [
    ("metadata.name=dev", ["dev"]),
    ("metadata.name!=dev", ["gold-prod", "silver-prod"]),
    ("status.phase=Running", ["silver-prod"]),
    ("status.phase=", ["dev", "gold-prod"]),
    ("spec.suspend=true,metadata.name==dev", ["dev"]),
], ids=lambda value: value if isinstance(value, str) else None)
def test_field_selector(selector, names):
    assert selected(field_selector(selector)) == names


@pytest.mark.parametrize("selector", ["tier in (gold", "a b", "=x"])
def test_label_selector_rejects_garbage(selector):
    with pytest.raises(SelectorError):
        label_selector(selector)


def test_field_selector_rejects_set_terms():
    with pytest.raises(SelectorError):
        field_selector("metadata.name in (a)")
