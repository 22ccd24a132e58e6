"""`LocalControlPlane` / `genforge local`: the API server, the executor and the operator together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from harness import wait_for

from genforge_local.control_plane import LocalControlPlane


def test_without_operator_serves_the_api_and_runs_jobs(tmp_path):
    import kubernetes

    with LocalControlPlane(tmp_path / "data", operator=False) as plane:
        config = yaml.safe_load(plane.kubeconfig_path.read_text())
        assert config["clusters"][0]["cluster"]["server"] == plane.url
        configuration = kubernetes.client.Configuration()
        configuration.host = plane.url
        with kubernetes.client.ApiClient(configuration) as client:
            batch = kubernetes.client.BatchV1Api(client)
            batch.create_namespaced_job("default", {
                "metadata": {"name": "touch"},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{
                    "name": "trainer", "image": "local",
                    "command": [sys.executable, "-c", "import json, os; p = json.loads(os.environ['GENFORGE_PATH_MAP']);"
                                                      "open(os.path.join(p['/data'], 'hello'), 'w').write('x')"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "genforge-data"}}]}}}})
            wait_for(lambda: batch.read_namespaced_job("touch", "default").status.succeeded == 1, timeout=20,
                     ignore=(AttributeError,))
        # The genforge-data PVC is the data folder itself: file:///data/x lands in <data>/x.
        assert (plane.data_dir / "hello").read_text() == "x"
        assert (plane.logs_dir / "default").is_dir()
    assert plane.cluster is None and plane.executor is None


@pytest.mark.integration
def test_with_operator_watches_everything_and_serves_metrics(tmp_path):
    with LocalControlPlane(tmp_path / "data") as plane:
        assert plane.operator_alive()
        with urllib.request.urlopen(plane.metrics_url, timeout=10) as response:
            assert b"genforge_" in response.read()
        env = plane.operator_environment()
        assert env["GENFORGE_API_SERVER"] == plane.url and env["GENFORGE_STORAGE_PVC"] == "genforge-data"
        pid = plane.operator_process.pid
    assert not _alive(pid)
    assert "kopf" in plane.operator_log_path.read_text()


@pytest.mark.integration
def test_genforge_local_runs_until_sigint_and_stops_everything(tmp_path):
    data = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-m", "genforge_operator.cli", "local", "--data", str(data)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line or not line:
                break
        banner = "".join(lines)
        assert "API server:  http://127.0.0.1:" in banner and "metrics:" in banner, banner
        assert (data / "kubeconfig").exists()
        operator_pid = int(banner.split("operator:    pid ")[1].split(",")[0])
        assert _alive(operator_pid)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert "stopping" in out
    wait_for(lambda: not _alive(operator_pid), timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True
