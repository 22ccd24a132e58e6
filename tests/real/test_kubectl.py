"""What a user types, against the real API server: `kubectl get genforge`, the printer columns,
`kubectl describe` with the operator's events, `kubectl explain`."""

from __future__ import annotations

import json
import time

import pytest

from genforge_operator import schema
from genforge_operator.api import GROUP, VERSION

pytestmark = pytest.mark.kube


def _apply(kube, namespace: str, *objects: dict) -> None:
    kube.real.kubectl("apply", "--server-side", "-n", namespace, "-f", "-",
                      input="".join("---\n" + json.dumps(o) + "\n" for o in objects))


def _run(name: str, dataset: str = "nowhere") -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"modelRef": {"name": "nothing"}, "datasetRef": {"name": dataset},
                     "training": {"steps": 10}, "hardware": {"pool": "cpu"}}}


def test_kubectl_get_genforge_lists_every_kind_of_the_category(kube, kube_namespace):
    _apply(kube, kube_namespace, _run("listed"), {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Budget", "metadata": {"name": "team"},
        "spec": {"limit": "5"}})
    out = kube.real.kubectl("get", "genforge", "-n", kube_namespace, "-o", "name").stdout.split()
    assert f"trainingrun.{GROUP}/listed" in out and f"budget.{GROUP}/team" in out, out
    categories = {crd["spec"]["names"]["kind"]: crd["spec"]["names"].get("categories") for crd in
                  schema.load_crds().values()}
    assert all("genforge" in (c or []) for c in categories.values()), categories


@pytest.mark.parametrize("kind", sorted(schema.load_crds()), ids=str)
def test_printer_columns_and_short_names(kube, kube_namespace, kind):
    """The server's Table for each kind has the CRD's columns; every short name resolves."""
    import urllib.request

    definition = schema.load_crds()[kind]
    names = definition["spec"]["names"]
    version = next(v for v in definition["spec"]["versions"] if v["name"] == VERSION)
    wanted = ["Name"] + [c["name"] for c in version.get("additionalPrinterColumns") or []]
    request = urllib.request.Request(
        f"{kube.real.url}/apis/{GROUP}/{VERSION}/{names['plural']}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    with urllib.request.urlopen(request, context=kube.real.ssl_context(), timeout=30) as response:
        table = json.loads(response.read())
    assert table["kind"] == "Table"
    got = [c["name"] for c in table["columnDefinitions"]]
    assert got == wanted or got == wanted + ["Age"] or [g for g in got if g != "Age"] == [
        w for w in wanted if w != "Age"], (got, wanted)
    scope = [] if definition["spec"]["scope"] == "Cluster" else ["-n", kube_namespace]
    for short in names.get("shortNames") or []:
        kube.real.kubectl("get", short, *scope)


def test_printer_columns_show_the_run(kube, kube_namespace):
    _apply(kube, kube_namespace, _run("columns"))
    out = kube.real.kubectl("get", "trainingruns", "-n", kube_namespace, "-o", "wide").stdout
    header = out.splitlines()[0].split()
    assert header[:2] == ["NAME", "PHASE"] and "COST" in header and "BUDGET" in header, out


def test_describe_shows_the_operators_condition_and_event(kube_operator, kube_namespace):
    kube = kube_operator
    _apply(kube, kube_namespace, _run("lost"))
    deadline = time.monotonic() + 60
    while True:
        out = kube.real.kubectl("describe", "trainingrun", "lost", "-n", kube_namespace).stdout
        if "Events:" in out and ("ModelNotFound" in out or "DatasetNotFound" in out) and "<none>" not in \
                out.split("Events:")[1]:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    events = out.split("Events:")[1]
    assert "NotFound" in events, out
    assert "Waiting" in out, out


def test_explain_documents_the_fields(kube):
    out = kube.real.kubectl("explain", "trainingrun.spec.budget").stdout
    assert "maxCost" in out and "maxDuration" in out and "onExceeded" in out, out
    assert "DESCRIPTION" in out or "FIELDS" in out
    out = kube.real.kubectl("explain", "acceleratorpools.spec.pricePerHour").stdout
    assert "pricePerHour" in out, out
