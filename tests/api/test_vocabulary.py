"""The vocabulary (phases, condition types, reasons) is one set of names everywhere: the
CRDs' enums, the typed API, the metrics, the Argo CD health script, the docs — and the
operator's code spells none of its reasons as a literal of its own."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from genforge_operator import api, metrics, vocabulary
from genforge_operator.bundled import crd_dir
from genforge_operator.schema import load_crds, openapi_schema
from genforge_operator.vocabulary import (
    FINAL_RUN_PHASES,
    ConditionStatus,
    ConditionType,
    DatasetPhase,
    Reason,
    RunPhase,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "genforge_operator"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _values(enum) -> set[str]:
    return {member.value for member in enum}


def _status_schema(kind: str) -> dict:
    crd = next(c for c in load_crds(crd_dir()).values() if c["spec"]["names"]["kind"] == kind)
    return openapi_schema(crd)["properties"]["status"]


@pytest.mark.parametrize("kind, enum", [("TrainingRun", RunPhase), ("FineTune", RunPhase), ("Dataset", DatasetPhase)])
def test_phases_are_the_crds_enums(kind, enum):
    assert set(_status_schema(kind)["properties"]["phase"]["enum"]) == _values(enum)


@pytest.mark.parametrize("kind", ["TrainingRun", "FineTune", "Dataset", "Budget", "GenModel"])
def test_condition_statuses_are_the_crds_enum(kind):
    condition = _status_schema(kind)["properties"]["conditions"]["items"]
    assert set(condition["properties"]["status"]["enum"]) == _values(ConditionStatus)


def _literal_values(cls) -> set[str]:
    """The strings of a `Literal[...] | None` field annotation."""
    (literal,) = [a for a in typing.get_args(typing.get_type_hints(cls)["phase"]) if a is not type(None)]
    return set(typing.get_args(literal))


def test_the_typed_api_and_the_metrics_use_the_same_phases():
    assert _literal_values(api.RunStatus) == _values(RunPhase)
    assert _literal_values(api.DatasetStatus) == _values(DatasetPhase)
    assert set(metrics.RUN_PHASES) == _values(RunPhase)
    assert set(metrics.DATASET_PHASES) == _values(DatasetPhase)


def test_the_argocd_health_script_knows_every_phase_and_the_final_ones():
    lua = (ROOT / "deploy" / "argocd" / "health.lua").read_text()
    table = re.search(r"local PHASES = \{(.*?)\n\}", lua, re.S).group(1)
    assert set(re.findall(r"^\s*(\w+) = ", table, re.M)) == _values(RunPhase) | _values(DatasetPhase)
    final = re.search(r"local FINAL_RUN_PHASES = \{(.*?)\}", lua).group(1)
    assert set(re.findall(r"(\w+) = true", final)) == _values(FINAL_RUN_PHASES)


def _doc_section() -> str:
    text = ARCHITECTURE.read_text()
    return text[text.index("## Phases, conditions and reasons"):]


def test_the_architecture_doc_lists_every_phase_condition_and_reason():
    section = _doc_section()
    phases = set(re.findall(r"^\| `(\w+)` \| [A-Z]", section, re.M))
    assert phases >= _values(RunPhase) | _values(DatasetPhase)
    named = set(re.findall(r"`(\w+)`", section))
    assert _values(ConditionType) <= named
    assert _values(Reason) <= named


def test_no_operator_module_spells_a_reason_of_its_own():
    """Every reason the operator sets comes from `Reason`: no module outside the vocabulary
    writes one as a string literal (a typo there would be a new, undocumented reason).
    Words that are also phases or Kubernetes' own reasons are left out of the scan."""
    common = _values(RunPhase) | _values(DatasetPhase) | {"Promoted"}
    distinctive = {r.value for r in Reason} - common
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "vocabulary.py" or "local" in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for literal in re.findall(r"[\"']([A-Z][A-Za-z]+)[\"']", line):
                if literal in distinctive:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {literal}")
    assert not offenders, "\n".join(offenders)


def test_members_are_plain_strings_in_json_and_yaml():
    import json

    import yaml

    status = {"phase": RunPhase.RUNNING, "conditions": [{"type": ConditionType.READY, "reason": Reason.JOB_CREATED}]}
    assert json.loads(json.dumps(status)) == {"phase": "Running",
                                              "conditions": [{"type": "Ready", "reason": "JobCreated"}]}
    assert yaml.safe_load(yaml.safe_dump(status)) == json.loads(json.dumps(status))
    assert vocabulary.KUBERNETES_STARTING_REASONS >= {"ContainerCreating"}
