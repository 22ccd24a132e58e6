#!/usr/bin/env python3
"""Copy the API's one source, `crds/`, into the Helm charts. Run after changing a CRD:

    python scripts/sync_chart_crds.py          # write
    python scripts/sync_chart_crds.py --check  # exit 1 if anything is out of date (CI)

It writes, each file marked DO NOT EDIT:

- `charts/genforge/crds/<file>` — each CRD verbatim under a header, plus kopf's peering
  CRDs (`kopf-peerings.yaml`). Helm installs a chart's crds/ before its templates, which
  is what lets the same release create AcceleratorPools, Budgets and the peering object.
- `charts/genforge-crds/templates/<file>` — the same CRDs as templates, for installing
  and upgrading them as a Helm release of their own (labels, optional keep policy).
- `charts/genforge/values.schema.json` `definitions.AcceleratorPoolSpec` and
  `definitions.BudgetSpec` — the CRDs' spec schemas as JSON Schema, so a typo in
  `pools:` or `budgets:` fails at `helm install` like any other values typo.

tests/chart/test_crds.py fails when any of them differs from what this script writes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "crds"
CHART = ROOT / "charts" / "genforge"
CRDS_CHART = ROOT / "charts" / "genforge-crds"
SCHEMA_DEFINITIONS = {"AcceleratorPoolSpec": "acceleratorpools.yaml", "BudgetSpec": "budgets.yaml"}

KOPF_PEERINGS = """\
# kopf's peering resources (https://kopf.readthedocs.io/en/stable/peering/): replicas of the
# operator announce themselves in a ClusterKopfPeering (all namespaces) or a KopfPeering per
# watched namespace. Used when operator.replicas > 1. Shared by every kopf-based operator
# of a cluster: Helm skips CRDs that already exist.
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: clusterkopfpeerings.kopf.dev
spec:
  scope: Cluster
  group: kopf.dev
  names:
    kind: ClusterKopfPeering
    listKind: ClusterKopfPeeringList
    plural: clusterkopfpeerings
    singular: clusterkopfpeering
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: kopfpeerings.kopf.dev
spec:
  scope: Namespaced
  group: kopf.dev
  names:
    kind: KopfPeering
    listKind: KopfPeeringList
    plural: kopfpeerings
    singular: kopfpeering
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""

CHART_CRD_HEADER = """\
# DO NOT EDIT: a copy of crds/{name}, written by `python scripts/sync_chart_crds.py`.
# Change crds/{name} and run the script; tests/chart/test_crds.py checks the copy.
"""

TEMPLATE_HEADER = """\
{{{{- /*
DO NOT EDIT: generated from {source} by `python scripts/sync_chart_crds.py`.
tests/chart/test_crds.py checks that it renders to exactly the source.
*/}}}}
"""


def source_files() -> list[Path]:
    return sorted(SOURCE.glob("*.yaml"))


def chart_crd(path: Path) -> str:
    return CHART_CRD_HEADER.format(name=path.name) + path.read_text()


def _body(text: str) -> list[str]:
    """The lines from the first YAML key on (the source's own header comments dropped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    return lines[start:]


def crd_template(text: str, source: str) -> str:
    """A CRD as a template of the genforge-crds chart: its text verbatim, metadata extended."""
    lines = _body(text)
    top = {line.split(":")[0]: i for i, line in enumerate(lines) if line and line[0] not in " #-"}
    if sorted(top) != ["apiVersion", "kind", "metadata", "spec"] or top["metadata"] > top["spec"]:
        raise ValueError(f"{source}: expected top-level apiVersion, kind, metadata, spec; got {sorted(top)}")
    metadata = yaml.safe_load(text)["metadata"]
    if set(metadata) - {"name", "labels"}:
        raise ValueError(f"{source}: metadata may hold only name and labels, got {sorted(metadata)}")
    labels = metadata.get("labels") or {}
    out = [TEMPLATE_HEADER.format(source=source).rstrip("\n")]
    out += lines[: top["metadata"]]
    out += ["metadata:", f"  name: {metadata['name']}", "  labels:"]
    out += [f"    {key}: {json.dumps(value)}" for key, value in labels.items()]
    out += ['    {{- include "genforge-crds.labels" . | nindent 4 }}',
            "  {{- if .Values.keep }}",
            "  annotations:",
            "    helm.sh/resource-policy: keep",
            "  {{- end }}"]
    out += [line.replace("{{", '{{ "{{" }}') for line in lines[top["spec"]:]]
    return "\n".join(out) + "\n"


def _draft7(schema: object) -> object:
    """OpenAPI v3.0's boolean exclusiveMinimum/Maximum (draft 4) as draft 7 numbers."""
    if isinstance(schema, list):
        return [_draft7(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _draft7(value) for key, value in schema.items() if key != "description"}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if "description" in schema and isinstance(schema["description"], str):
        out["description"] = schema["description"]
    return out


def spec_schema(crd_file: str) -> dict:
    from genforge_operator.schema import openapi_schema, to_json_schema

    crd = yaml.safe_load((SOURCE / crd_file).read_text())
    spec = copy.deepcopy(to_json_schema(openapi_schema(crd))["properties"]["spec"])
    spec = _draft7(spec)
    spec["$comment"] = f"DO NOT EDIT: generated from crds/{crd_file} by scripts/sync_chart_crds.py"
    return spec


def values_schema() -> str:
    path = CHART / "values.schema.json"
    document = json.loads(path.read_text())
    for name, crd_file in SCHEMA_DEFINITIONS.items():
        document.setdefault("definitions", {})[name] = spec_schema(crd_file)
    return json.dumps(document, indent=2) + "\n"


def desired() -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {}
    for path in source_files():
        files[CHART / "crds" / path.name] = chart_crd(path)
        files[CRDS_CHART / "templates" / path.name] = crd_template(path.read_text(), f"crds/{path.name}")
    files[CHART / "crds" / "kopf-peerings.yaml"] = KOPF_PEERINGS
    files[CRDS_CHART / "templates" / "kopf-peerings.yaml"] = (
        "{{- if .Values.kopfPeering }}\n"
        + "\n---\n".join(crd_template(doc, "scripts/sync_chart_crds.py (KOPF_PEERINGS)")
                         for doc in KOPF_PEERINGS.split("\n---\n"))
        + "{{- end }}\n")
    files[CHART / "values.schema.json"] = values_schema()
    return files


def stale() -> list[Path]:
    """Generated files that are missing, differ, or should not exist."""
    want = desired()
    out = [path for path, text in want.items() if not path.exists() or path.read_text() != text]
    for folder in (CHART / "crds", CRDS_CHART / "templates"):
        out += [p for p in folder.glob("*.yaml") if p not in want]
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date files")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        if out_of_date:
            print("run: python scripts/sync_chart_crds.py", file=sys.stderr)
        return 1 if out_of_date else 0
    want = desired()
    for folder in (CHART / "crds", CRDS_CHART / "templates"):
        for path in folder.glob("*.yaml"):
            if path not in want:
                path.unlink()
    for path, text in want.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
