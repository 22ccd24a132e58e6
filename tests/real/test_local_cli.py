"""`genforge local --kube` as a user runs it: a real control plane, a kubeconfig that kubectl can
use, the operator watching as the chart's ServiceAccount, a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from genforge_local import kube_binaries

from .conftest import require_binaries

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_genforge_local_kube_serves_kubectl_and_stops_cleanly(tmp_path):
    require_binaries()
    data = tmp_path / "gf"
    process = subprocess.Popen([sys.executable, "-m", "genforge_operator.cli", "local", "--kube", "--data", str(data)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not any("Ctrl-C stops everything" in line for line in lines):
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        banner = "".join(lines)
        assert "real Kubernetes v1.35.4" in banner, banner
        kubectl = str(kube_binaries.find().kubectl)
        env = {**os.environ, "KUBECONFIG": str(data / "kubeconfig")}
        nodes = json.loads(subprocess.run([kubectl, "get", "nodes", "-o", "json"], env=env, check=True,
                                          capture_output=True, text=True).stdout)
        (node,) = nodes["items"]
        assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
        crds = subprocess.run([kubectl, "get", "crd", "-o", "name"], env=env, check=True, capture_output=True,
                              text=True).stdout
        assert crds.count(".genforge.dev") == 6, crds
        whoami = subprocess.run([kubectl, "auth", "can-i", "create", "jobs", "-n", "default",
                                 "--as=system:serviceaccount:genforge-system:genforge-operator"],
                                env=env, capture_output=True, text=True).stdout.strip()
        assert whoami == "yes"
        cannot = subprocess.run([kubectl, "auth", "can-i", "delete", "nodes",
                                 "--as=system:serviceaccount:genforge-system:genforge-operator"],
                                env=env, capture_output=True, text=True).stdout.strip()
        assert cannot == "no"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest = process.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            rest = process.communicate()[0]
    assert process.returncode == 0, "".join(lines) + rest
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes left running: {leftovers}"
