"""Multi-node training on one machine: an Indexed Job whose two pods rendezvous through torchrun
on loopback, as the operator's multi-node Jobs do on a cluster.

Run serially: ``flock /tmp/genforge-torch.lock pytest -m torch tests/local``.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from harness import wait_for

from genforge_local.executor import LocalExecutor

pytestmark = [pytest.mark.torch, pytest.mark.slow]

ALL_REDUCE = textwrap.dedent("""
    import json, os
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    result = {"sum": total.item(), "world": dist.get_world_size(), "rank": dist.get_rank()}
    open(os.environ["GENFORGE_TERMINATION_LOG"], "w").write(json.dumps(result))
    dist.destroy_process_group()
""")


def test_indexed_job_rendezvous_over_loopback(cluster, namespace, batch_api, core_api, api_client, tmp_path):
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    # What builders.py gives a 2-node Job (MASTER_ADDR is the index-0 pod's DNS name).
    env = [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
           {"name": "MASTER_ADDR", "value": f"ddp-0.ddp.{namespace}.svc"},
           {"name": "MASTER_PORT", "value": "29500"}, {"name": "NNODES", "value": "2"}]
    command = ["torchrun", "--nnodes=$(NNODES)", "--nproc_per_node=1", "--node_rank=$(NODE_RANK)",
               "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)", "--no-python", sys.executable, str(script)]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ddp"},
           "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                    "template": {"spec": {"subdomain": "ddp", "restartPolicy": "Never", "containers": [
                        {"name": "trainer", "image": "local", "command": command, "env": env}]}}}}
    with LocalExecutor(cluster.url, tmp_path / "data", namespace=namespace):
        batch_api.create_namespaced_job(namespace, job)

        def finished():
            status = api_client.sanitize_for_serialization(batch_api.read_namespaced_job("ddp", namespace))["status"]
            types = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
            return types & {"Complete", "Failed"}

        assert wait_for(finished, timeout=120, interval=0.2) == {"Complete"}
    pods = api_client.sanitize_for_serialization(core_api.list_namespaced_pod(namespace))["items"]
    results = sorted((json.loads(p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]) for p in pods),
                     key=lambda r: r["rank"])
    assert results == [{"sum": 3.0, "world": 2, "rank": 0}, {"sum": 3.0, "world": 2, "rank": 1}]
