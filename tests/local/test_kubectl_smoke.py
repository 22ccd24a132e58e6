"""The real kubectl against the bare emulated cluster, through the kubeconfig it writes.

The full kubectl surface (client-side validation, printer columns, describe) is served by
`genforge local` and tested in `test_kubectl.py`; this checks the harness's own cluster.
"""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.kubectl

MANIFEST = """\
apiVersion: genforge.dev/v1alpha1
kind: TrainingRun
metadata: {name: smoke, labels: {team: a}}
spec:
  modelRef: {name: shapes}
  datasetRef: {name: shapes}
  training: {steps: 5, batchSize: 1}
  hardware: {pool: cpu}
"""


@pytest.fixture
def kubectl(kubeconfig, namespace):
    def run(*args: str, input: str | None = None) -> str:
        # The bare emulator serves no OpenAPI documents: client-side validation is off.
        result = subprocess.run(["kubectl", "-n", namespace, *args], input=input, capture_output=True, text=True,
                                env={**os.environ, "KUBECONFIG": str(kubeconfig)}, timeout=60)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    return run


def test_apply_get_patch_delete(kubectl):
    assert "created" in kubectl("apply", "--validate=false", "-f", "-", input=MANIFEST)
    assert kubectl("get", "tr", "-l", "team=a", "-o", "name") == "trainingrun.genforge.dev/smoke\n"
    assert kubectl("get", "genforge", "-o", "name") == "trainingrun.genforge.dev/smoke\n"

    kubectl("patch", "trainingrun", "smoke", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    assert kubectl("get", "trainingrun", "smoke", "-o", "jsonpath={.spec.suspend} {.metadata.generation}") == "true 2"
    assert "unchanged" in kubectl("apply", "--validate=false", "-f", "-", input=MANIFEST)

    assert "deleted" in kubectl("delete", "trainingrun", "smoke")
    assert kubectl("get", "trainingruns", "-o", "name") == ""
