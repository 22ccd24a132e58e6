"""Pod addresses (`status.podIP`, `GENFORGE_METRICS_HOST`) of the local executor are never handed
out while something still holds the pod's ports on them.

The trainer binds `$GENFORGE_METRICS_HOST:$GENFORGE_METRICS_PORT`; a pod that got an address on
which an earlier pod (of this executor, of another executor in this process, of another
`genforge local` on this host, or one that escaped its process group) still listens failed with
`OSError: [Errno 98] Address already in use`, and the Job's retry hid it."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import uuid

import pytest
from harness import wait_for

from genforge_local import pod_addresses
from genforge_local.executor import LocalExecutor

# Binds the pod's metrics address as the trainer's progress server does (SO_REUSEADDR), writes
# "bound <ip>" to $MARKER, then holds it ($HOLD seconds) — or exits 1 if the address is taken.
BINDER = textwrap.dedent("""
    import os, socket, sys, time
    host, port = os.environ["GENFORGE_METRICS_HOST"], int(os.environ["GENFORGE_METRICS_PORT"])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        print(f"bind {host}:{port}: {e}", file=sys.stderr)
        sys.exit(1)
    sock.listen()
    with open(os.environ["MARKER"], "a") as f:
        f.write(f"bound {host}\\n")
    time.sleep(float(os.environ.get("HOLD", "0")))
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binder_job(name: str, marker, port: int, hold: float = 0.0) -> dict:
    env = [{"name": "MARKER", "value": str(marker)}, {"name": "HOLD", "value": str(hold)},
           {"name": "GENFORGE_METRICS_PORT", "value": str(port)}]
    container = {"name": "trainer", "image": "local", "command": [sys.executable, "-c", BINDER], "env": env,
                 "terminationMessagePolicy": "FallbackToLogsOnError"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 2, "containers": [container]}}}}


def job_result(batch_api, api_client, namespace, name, timeout=30.0) -> dict:
    def done():
        job = api_client.sanitize_for_serialization(batch_api.read_namespaced_job(name, namespace))
        conditions = {c["type"] for c in job["status"].get("conditions") or [] if c["status"] == "True"}
        return job["status"] if {"Complete", "Failed"} & conditions else None

    return wait_for(done, timeout=timeout, message=f"Job {name} finished")


@pytest.fixture
def other_namespace(cluster, raw_api):
    name = f"test-{uuid.uuid4().hex[:8]}"
    status, body = raw_api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, body
    yield name
    cluster.call(lambda handler: handler.purge_namespace(name))


@pytest.mark.skipif(not pod_addresses.loopback_aliases_work(), reason="needs 127.0.0.2 and up (Linux)")
def test_a_second_executor_does_not_reuse_an_address_a_running_pod_listens_on(
        cluster, namespace, other_namespace, batch_api, api_client, tmp_path):
    """A plane restarted in the same process (or a second executor, or the kubelet) started
    again from 127.0.0.2, while a pod of the first one still served its metrics port there."""
    port = _free_port()
    first_marker, second_marker = tmp_path / "first", tmp_path / "second"
    with LocalExecutor(cluster.url, tmp_path / "data1", namespace=namespace, shutdown_grace=2) as first:
        batch_api.create_namespaced_job(namespace, binder_job("holder", first_marker, port, hold=60))
        wait_for(lambda: first_marker.exists() and first_marker.read_text(), timeout=20, message="holder bound")
        [holder] = first.processes()
        with LocalExecutor(cluster.url, tmp_path / "data2", namespace=other_namespace, shutdown_grace=2,
                           backoff_base=0.05):
            batch_api.create_namespaced_job(other_namespace, binder_job("fresh", second_marker, port))
            status = job_result(batch_api, api_client, other_namespace, "fresh")
            logs = [log.read_text() for log in (tmp_path / "data2" / "logs").rglob("*.log")]
            # before: the pod got the holder's 127.0.0.2 and failed ("[Errno 98] Address already in use")
            assert status.get("failed") is None and status.get("succeeded") == 1, (status, logs)
            [line] = second_marker.read_text().splitlines()
            assert line != f"bound {holder.ip}"


@pytest.mark.skipif(not pod_addresses.loopback_aliases_work(), reason="needs 127.0.0.2 and up (Linux)")
def test_an_address_held_outside_any_pod_is_skipped(cluster, namespace, batch_api, api_client, tmp_path):
    """A listener the executors here know nothing of (another `genforge local` on this host, a
    trainer orphaned by a killed plane, a process that left its pod's process group) holds the
    metrics port on the addresses a new executor would hand out first."""
    port = _free_port()
    held = []
    try:
        for n in range(2, 2 + 32):  # the addresses a fresh process hands out first
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((f"127.0.0.{n}", port))
            sock.listen()
            held.append(sock)
        with pod_addresses.POOL._lock:  # start the shared numbering at .2 again, as a fresh process would
            pod_addresses.POOL._next = 2
        marker = tmp_path / "marker"
        with LocalExecutor(cluster.url, tmp_path / "data", namespace=namespace, shutdown_grace=2):
            batch_api.create_namespaced_job(namespace, binder_job("fresh", marker, port))
            status = job_result(batch_api, api_client, namespace, "fresh")
        logs = [log.read_text() for log in (tmp_path / "data" / "logs").rglob("*.log")]
        assert status.get("failed") is None and status.get("succeeded") == 1, (status, logs)
        [line] = marker.read_text().splitlines()
        ip = line.split()[1]
        assert ip not in {s.getsockname()[0] for s in held}
    finally:
        for sock in held:
            sock.close()


def test_the_address_pool_skips_taken_addresses_and_coordinates_processes(tmp_path):
    """Unit level: an address is handed out only if its ports bind now and no other pool (in this
    or another process: a lock file per address) holds it; it is freed once the pod's process group is gone."""
    pool_type = pod_addresses.AddressPool
    if not pod_addresses.loopback_aliases_work():
        pytest.skip("needs 127.0.0.2 and up (Linux)")
    port = _free_port()
    one, two = pool_type(lock_dir=tmp_path), pool_type(lock_dir=tmp_path)  # two processes, one host
    a = one.acquire([port])
    b = two.acquire([port])  # nothing listens yet: the lock file alone keeps `a` out
    assert a != b
    with socket.socket() as listener:  # something else listens on the first address `one` would try
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        nxt = one._address(one._next + 1)  # (one._next is `b`, locked by `two`)
        listener.bind((nxt, port))
        listener.listen()
        c = one.acquire([port])
        assert c not in (a, b, nxt)
        assert int(c.rsplit(".", 1)[1]) > int(nxt.rsplit(".", 1)[1])
    # released while its process group still lives: the address stays taken until the group is gone
    one.release(a, pgid=os.getpgid(0))  # this test's own group: alive
    assert a in one.held()
    one.release(c, pgid=None)
    assert c not in one.held()
    one.reclaim()
    assert a in one.held()
    one._draining[a] = (one._draining[a][0], 2 ** 22 + 12345)  # a group id that does not exist
    one.reclaim()
    assert a not in one.held()


def test_a_port_taken_on_every_address_does_not_stall_the_pool(tmp_path):
    """Something listening on 0.0.0.0 at the metrics port takes it on every loopback address:
    after a few probes an address is handed out anyway (the trainer then serves elsewhere)."""
    pool_type = pod_addresses.AddressPool
    pool = pool_type(lock_dir=tmp_path, probes=3)
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ip = pool.acquire([port])
    assert ip.startswith("127.") and ip in pool.held()
    assert pool._next <= pool.FIRST + 4
