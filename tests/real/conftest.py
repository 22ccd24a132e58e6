"""The real-Kubernetes tier: etcd, kube-apiserver and kube-controller-manager built from their
Go modules (`scripts/kube-binaries`), started on loopback once per session.

    def test_it(kube, kube_namespace):          # a real control plane, a fresh namespace
        kube.real.kubectl("apply", "-f", ...)

    def test_lifecycle(kube, kube_operator):    # plus the real operator, as the chart's ServiceAccount

`kube` is a `LocalControlPlane(kube=True)`: the CRDs applied with `kubectl apply
--server-side`, the chart's operator RBAC applied, and the local executor acting as the
node's kubelet. The operator is started per test (`kube_operator`) authenticated with a
bound token of the chart's ServiceAccount; afterwards the test fails if the operator logged
an error or a traceback, or if the API server pruned any status field the operator wrote
(the API server's audit log holds each status write and the stored result).

Without the binaries these tests are skipped with the command that builds them, unless
`GENFORGE_REQUIRE_KUBE=1` (set by `.ci/run`), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest

from genforge_local import kube_binaries
from genforge_operator.api import KINDS

pytestmark = pytest.mark.kube

OPERATOR_ENV = {
    "GENFORGE_TRAINER_EXTRA_ENV": json.dumps({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    # Short, so that test_lifecycle sees an unschedulable run flagged within seconds (default 600).
    "GENFORGE_POD_START_TIMEOUT": "25",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/real/" in str(item.fspath):
            item.add_marker(pytest.mark.kube)


def require_binaries() -> kube_binaries.KubeBinaries:
    found = kube_binaries.find()
    if found is None:
        message = ("the Kubernetes binaries are not built: run scripts/kube-binaries "
                   f"(cache: {kube_binaries.cache_root()})")
        if os.environ.get("GENFORGE_REQUIRE_KUBE") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """A real control plane with the CRDs, the chart's operator RBAC and the local kubelet (no operator yet)."""
    require_binaries()
    from genforge_local.control_plane import LocalControlPlane

    plane = LocalControlPlane(tmp_path_factory.mktemp("kube") / "data", operator=False, kube=True,
                              operator_env=OPERATOR_ENV)
    plane.start()
    yield plane
    plane.stop()


_LIVE_NAMESPACES: list[str] = []


def delete_namespace(kube, name: str) -> None:
    """Delete the genforge objects first (the operator, if running, handles their finalizers while
    the namespace still takes Events), then the namespace, and wait until both are gone."""
    # Not `delete genforge --all`: the category includes the cluster-scoped AcceleratorPools.
    kinds = ",".join(k.plural for k in KINDS.values() if k.namespaced)
    kube.real.kubectl("delete", kinds, "--all", "-n", name, "--wait=true", "--timeout=120s", check=False)
    kube.real.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)
    if name in _LIVE_NAMESPACES:
        _LIVE_NAMESPACES.remove(name)


def new_namespace(kube) -> str:
    name = f"real-{uuid.uuid4().hex[:8]}"
    kube.real.kubectl("create", "namespace", name)
    kube.real.wait_namespace_ready(name)
    _LIVE_NAMESPACES.append(name)
    return name


@pytest.fixture
def kube_namespace(kube):
    """A fresh namespace, deleted afterwards (objects first, then the namespace) and waited for."""
    name = new_namespace(kube)
    yield name
    if name in _LIVE_NAMESPACES:
        delete_namespace(kube, name)


@pytest.fixture(scope="module")
def module_namespace(kube):
    """One namespace for a module's many short cases (objects with unique names)."""
    name = new_namespace(kube)
    yield name
    if name in _LIVE_NAMESPACES:
        delete_namespace(kube, name)


_LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback \(most recent call last\)")


@pytest.fixture
def kube_operator(kube):
    """The real operator (its own process) as the chart's ServiceAccount, for one test."""
    log_start = kube.operator_log_path.stat().st_size if kube.operator_log_path.exists() else 0
    audit_start = kube.real.audit_mark()
    kube.with_operator = True
    kube.start_operator(timeout=90)
    yield kube
    for name in list(_LIVE_NAMESPACES):  # while the operator can still remove its finalizers
        delete_namespace(kube, name)
    kube._stop_operator()
    kube.with_operator = False
    with open(kube.operator_log_path, encoding="utf-8", errors="replace") as f:
        f.seek(log_start)
        log = f.read()
    problems = [line for line in log.splitlines() if _LOG_PROBLEM.search(line)]
    pruned = pruned_status_fields(kube.real.audit_events(audit_start))
    assert not problems, "the operator logged errors:\n" + "\n".join(problems[:30])
    assert not pruned, "the API server pruned status fields the operator wrote:\n" + "\n".join(pruned[:30])


def pruned_status_fields(events: list[dict]) -> list[str]:
    """Every field of a successful status write (merge patch) that the stored object lacks."""
    problems = []
    for event in events:
        if event.get("stage") != "ResponseComplete" or (event.get("objectRef") or {}).get("subresource") != "status":
            continue
        if (event.get("responseStatus") or {}).get("code", 200) >= 300:
            continue
        sent = (event.get("requestObject") or {}).get("status")
        stored = (event.get("responseObject") or {}).get("status")
        if not isinstance(sent, dict) or stored is None:
            continue
        ref = event["objectRef"]
        for path in _missing(sent, stored, "status"):
            problems.append(f"{ref.get('resource')}/{ref.get('name')}: {path}")
    return problems


def _missing(sent, stored, path: str) -> list[str]:
    if sent is None:
        return []  # a merge patch's null removes the field
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path]
        out = []
        for key, value in sent.items():
            if value is None:
                continue
            if key not in stored:
                out.append(f"{path}.{key}")
            else:
                out += _missing(value, stored[key], f"{path}.{key}")
        return out
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(sent) != len(stored):
            return [path]
        out = []
        for i, (a, b) in enumerate(zip(sent, stored, strict=True)):
            out += _missing(a, b, f"{path}[{i}]")
        return out
    if sent != stored and not (isinstance(sent, int | float) and isinstance(stored, int | float) and sent == stored):
        return [f"{path} (sent {sent!r}, stored {stored!r})"]
    return []
