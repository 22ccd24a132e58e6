"""High availability as the chart sets it up: two `genforge operator --peering` replicas, one works.

Against the emulated API server with the chart's kopf peering CRDs and a ClusterKopfPeering
object (what templates/peering.yaml creates): a working replica pauses in favour of a
higher-priority one that joins (a rollout: the newest replica takes over), takes over again
when that one stops, and both use only what the HA ClusterRole grants.

Why the replicas start one after the other: the operator sets `settings.peering.mandatory`,
so kopf starts every replica *paused* (its conflict toggle is pre-activated) and logs
"Pausing operations in favour of ..." only on a running -> paused transition. A replica
whose first look at the peering object already shows a live higher-priority peer stays
paused without a word. Started together, which replica lists the peering object first
decides whether the standby ever logs its pause: when the higher-priority replica patched
the object first, the standby (correctly paused, no watch-stream resumed) never logged it,
and this test, which once started both at once, failed repeatedly with "the standby never
logs its pause within 60 s". Started in order, the standby first works alone (logs its
resume), so the pause is a logged transition every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from harness import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Replica:
    def __init__(self, cluster, name: str, peering: str, priority: int):
        env = dict(os.environ, GENFORGE_API_SERVER=cluster.url, GENFORGE_METRICS_PORT="0", POD_ID=name,
                   PYTHONUNBUFFERED="1")
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "genforge_operator.cli", "operator", "--all-namespaces", "--liveness=",
             "--log-format=plain", f"--peering={peering}", f"--priority={priority}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def said(self, text: str, times: int = 1) -> bool:
        return sum(text in line for line in self.lines) >= times

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wait(predicate, what: str, *replicas: Replica) -> None:
    try:
        wait_for(predicate, timeout=60, interval=0.1, message=what)  # two operator starts on a busy CI box
    except TimeoutError as exc:
        logs = "\n".join(f"--- {r.process.args[-1]} ---\n" + "".join(r.lines[-40:]) for r in replicas)
        raise AssertionError(f"{exc}\n{logs}") from None


@pytest.fixture
def peering(cluster):
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.url
    with kubernetes.client.ApiClient(configuration) as client:
        client.user_agent = "genforge-peering-test"
        extensions = kubernetes.client.ApiextensionsV1Api(client)
        for crd in yaml.safe_load_all((ROOT / "charts" / "genforge" / "crds" / "kopf-peerings.yaml").read_text()):
            try:
                extensions.create_custom_resource_definition(crd)
            except kubernetes.client.ApiException as exc:
                assert exc.status == 409  # another test of this session made it
        custom = kubernetes.client.CustomObjectsApi(client)
        name = f"genforge-{uuid.uuid4().hex[:6]}"
        wait_for(lambda: custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", {
            "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}),
            ignore=(kubernetes.client.ApiException,), message="the ClusterKopfPeering")
        yield name, custom


def test_one_replica_works_the_other_stands_by_and_takes_over(cluster, peering):
    from chart.rendering import ci_values, one, render
    from chart.test_rbac import triples

    name, custom = peering
    mark = cluster.mark()
    resumed = "Resuming operations after the pause"
    standby = active = None
    try:
        standby = Replica(cluster, "replica-a", name, priority=1)
        _wait(lambda: standby.said(resumed), "the first replica, alone, works", standby)

        active = Replica(cluster, "replica-b", name, priority=2)
        _wait(lambda: active.said(resumed) and standby.said("Pausing operations in favour of [<Peer replica-b"),
              "the higher-priority replica works and the other pauses", standby, active)
        status = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)["status"]
        assert {"replica-a", "replica-b"} <= set(status)
        assert not active.said("Pausing operations")

        active.stop()
        _wait(lambda: standby.said(resumed, times=2),
              "the standby takes over when the active replica stops", standby, active)
    finally:
        for replica in (active, standby):
            if replica is not None:
                replica.stop()

    used = {(r.group, r.plural, r.verb) for r in cluster.requests(since=mark)
            if r.plural and r.plural.endswith("kopfpeerings") and r.user_agent.startswith("kopf")}
    granted = triples(one(render(ci_values("ha")), "ClusterRole", "genforge-operator")["rules"])
    assert used and used <= granted
