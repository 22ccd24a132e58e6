"""`genforge render -f FILE…` — the objects the operator would create, offline.

Like `helm template`: for review, GitOps diffs and debugging. The input is first judged
as the API server would judge it (`schema.admit_object`: the CRD schemas and their CEL rules,
unknown fields refused as `kubectl apply` does); invalid input prints every field error
and renders nothing. Then it calls the very builders the operator calls
(`plan.plan_dataset` / `plan.plan_run`); nothing is re-implemented here. Assumptions
that only a live cluster could settle are printed as YAML comments: referenced Datasets
are taken as Ready, and a FineTune whose GenModel has no versions yet starts from a
placeholder version.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime

import yaml

from . import formats, schema
from .api import ModelVersion, Resource, SourceRef
from .config import OperatorConfig
from .manifests import ManifestError, load_documents, parse_documents, schema_errors
from .money import choose_pool_for_run
from .plan import Blocked, Catalog, fixed_pool, plan_dataset, plan_run, resolve_references
from .runspec import dataset_uri, storage_uri


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the run spec document) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True,
                        help="YAML file or folder with genforge resources (repeatable)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace for resources without one")
    parser.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                        help="check the resources against the CRDs first, as the API server would "
                             "(default; needs jsonschema and common-expression-language: genforge[local])")


def _assume_ready(resources: list[Resource], config: OperatorConfig) -> list[Resource]:
    """Datasets as if prepared, GenModels with a version, so every run can be planned."""
    out = []
    for r in resources:
        if r.kind == "Dataset" and r.status.phase != "Ready":
            r = dataclasses.replace(r, status=dataclasses.replace(r.status, phase="Ready",
                                                                  uri=dataset_uri(r, config)))
        elif r.kind == "GenModel" and not r.status.versions:
            placeholder = ModelVersion(
                name="latest", source=SourceRef(kind="TrainingRun", name="(not yet trained)"),
                uri=storage_uri(config, "models", r.namespace or "", r.name, "latest"),
                created_at=formats.timestamp(datetime.now(UTC)))
            r = dataclasses.replace(r, status=dataclasses.replace(r.status, versions=[placeholder], latest="latest"))
        out.append(r)
    return out


def _pool_for(run: Resource, catalog: Catalog) -> Resource | Blocked:
    if run.spec.hardware.pool != "auto":
        return fixed_pool(run, catalog)
    return choose_pool_for_run(run, catalog)  # the one cost model decides `auto`


def render(resources: list[Resource], config: OperatorConfig) -> tuple[list[tuple[str, dict]], list[str]]:
    """(source, object) pairs to print, and the problems found."""
    resources = _assume_ready(resources, config)
    objects: list[tuple[str, dict]] = []
    problems: list[str] = []
    for r in resources:
        if r.kind not in ("Dataset", "TrainingRun", "FineTune"):
            continue
        catalog = Catalog.from_resources(resources, r.namespace)
        if r.kind == "Dataset":
            planned = plan_dataset(r, catalog, config)
        else:
            refs = resolve_references(r, catalog)  # as the operator: references before money
            pool = refs if isinstance(refs, Blocked) else _pool_for(r, catalog)
            planned = pool if isinstance(pool, Blocked) else plan_run(r, pool, catalog, config)
        source = f"{r.kind} {r.namespace}/{r.name}"
        if isinstance(planned, Blocked):
            problems.append(f"{source}: {planned.reason}: {planned.message}")
            continue
        objects += [(source, o) for o in planned.children.objects()]
    return objects, problems


def run(args: argparse.Namespace) -> int:
    config = OperatorConfig.from_env()
    try:
        documents = load_documents(args.filename)
        if args.validate:
            missing = schema.missing_validation_packages()
            if missing:
                print(f"error: validating the resources against the CRDs needs {' and '.join(missing)}, "
                      "which are not installed: pip install 'genforge[local]' (or render without "
                      "checking: --no-validate)", file=sys.stderr)
                return 2
            invalid = schema_errors(documents)
            if invalid:
                for problem in invalid:
                    print(f"error: {problem}", file=sys.stderr)
                return 2
        resources = parse_documents(documents, args.namespace)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    objects, problems = render(resources, config)
    chunks = []
    for source, obj in objects:
        header = f"# Source: {source}\n"
        chunks.append(header + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False))
    sys.stdout.write("---\n".join(chunks))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not objects and not problems:
        print("error: no Dataset, TrainingRun or FineTune found in the files", file=sys.stderr)
        return 2
    return 1 if problems else 0
