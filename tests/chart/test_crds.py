"""The charts' CRDs are the repository's crds/, exactly; the sync script says when they drift."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from chart.rendering import CHART, CRDS_CHART, ROOT, chart_crds, render

SOURCE = ROOT / "crds"
SOURCES = sorted(p.name for p in SOURCE.glob("*.yaml"))


def _sync():
    spec = importlib.util.spec_from_file_location("sync_chart_crds", ROOT / "scripts" / "sync_chart_crds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date():
    stale = _sync().stale()
    assert stale == [], f"run `python scripts/sync_chart_crds.py`; out of date: {stale}"


@pytest.mark.parametrize("name", SOURCES)
def test_the_chart_copy_is_the_source_verbatim_under_a_do_not_edit_header(name):
    copy = (CHART / "crds" / name).read_text()
    header, _, body = copy.partition("\n# Change crds/")
    assert header.startswith("# DO NOT EDIT")
    assert body.split("\n", 1)[1] == (SOURCE / name).read_text()


def test_helm_installs_every_source_crd_and_kopfs_peering_crds():
    names = {crd["metadata"]["name"] for crd in chart_crds()}
    sources = {yaml.safe_load((SOURCE / n).read_text())["metadata"]["name"] for n in SOURCES}
    assert names == sources | {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert all(crd["spec"]["group"] == "kopf.dev" for crd in chart_crds() if crd["metadata"]["name"] not in sources)


def test_the_main_chart_renders_no_crd_from_templates():
    # One way in: Helm's crds/ folder, installed before the templates (which create CRs).
    assert not [o for o in render({}) if o["kind"] == "CustomResourceDefinition"]


def _crds_chart(values: dict | None = None) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(values or {}, chart=CRDS_CHART)}


@pytest.mark.parametrize("name", SOURCES)
def test_the_crds_chart_renders_each_source_crd_exactly(name):
    source = yaml.safe_load((SOURCE / name).read_text())
    rendered = _crds_chart()[source["metadata"]["name"]]
    labels = rendered["metadata"].pop("labels")
    annotations = rendered["metadata"].pop("annotations")
    source_labels = source["metadata"].pop("labels", {})
    assert rendered == source, "the rendered CRD differs from crds/ beyond labels and annotations"
    assert source_labels.items() <= labels.items()
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert annotations == {"helm.sh/resource-policy": "keep"}


def test_the_crds_chart_keep_and_peering_switches():
    assert all("annotations" not in crd["metadata"] for crd in _crds_chart({"keep": False}).values())
    assert "clusterkopfpeerings.kopf.dev" in _crds_chart()
    assert not [n for n in _crds_chart({"kopfPeering": False}) if n.endswith("kopf.dev")]


def test_values_schema_carries_the_crds_spec_schemas():
    schema = json.loads((CHART / "values.schema.json").read_text())
    sync = _sync()
    for name, crd_file in sync.SCHEMA_DEFINITIONS.items():
        assert schema["definitions"][name] == sync.spec_schema(crd_file)
    assert schema["properties"]["pools"]["additionalProperties"] == {"$ref": "#/definitions/AcceleratorPoolSpec"}


def test_draft4_exclusive_bounds_become_draft7():
    sync = _sync()
    assert sync._draft7({"minimum": 0, "exclusiveMinimum": True}) == {"exclusiveMinimum": 0}
    assert sync._draft7({"minimum": 0, "exclusiveMinimum": False}) == {"minimum": 0}
    assert sync._draft7({"items": {"maximum": 1, "exclusiveMaximum": True}}) == {"items": {"exclusiveMaximum": 1}}
