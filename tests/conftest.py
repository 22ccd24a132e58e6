"""Shared fixtures: the emulated cluster (one per session) and clients for it.

    def test_something(cluster, namespace, custom_api):
        custom_api.create_namespaced_custom_object("genforge.dev", "v1alpha1", namespace, ...)

The operator itself comes from `tests/integration/conftest.py` (fixture `operator`).
See `tests/harness.py` for `wait_for`, `OperatorRunner` and `RawApi`.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest
from harness import pruned_status_fields


def _prefer_the_pinned_kubectl() -> None:
    """Tests run the project's own kubectl (v1.35.4, built by scripts/kube-binaries) when it is
    built, whatever else is on PATH: one pinned client for the emulated and the real tier."""
    import os

    from genforge_local import kube_binaries

    found = kube_binaries.find()
    if found is not None:
        os.environ["PATH"] = f"{found.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


_prefer_the_pinned_kubectl()

_KUBECTL_MISSING = "kubectl is not installed (scripts/kube-binaries builds it)"


def pytest_collection_modifyitems(config, items):
    import os

    # CI builds kubectl (GENFORGE_REQUIRE_KUBE=1): there a missing one fails (runtest_setup), never skips.
    if shutil.which("kubectl") is None and os.environ.get("GENFORGE_REQUIRE_KUBE") != "1":
        for item in items:
            if "kubectl" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=_KUBECTL_MISSING))


def pytest_runtest_setup(item):
    if "kubectl" in item.keywords and shutil.which("kubectl") is None:
        pytest.fail(f"{_KUBECTL_MISSING}; GENFORGE_REQUIRE_KUBE=1 makes that a failure", pytrace=False)


#: Declared dependencies (pyproject's `all` extra) that some tests skip without. With
#: GENFORGE_REQUIRE_DEPS=1 (set by .ci/run) such a skip is a failure: a broken install must
#: not pass as a green run. Skips for other reasons (a package that *is* installed, a test
#: that runs with its siblings) stay skips.
DECLARED = frozenset({"torch", "diffusers", "accelerate", "peft", "lupa", "helm_python", "kubernetes_validate",
                      "hadolint", "kubectl", "jsonschema", "celpy", "cel", "cryptography", "playwright", "chromium",
                      "ai_edge_litert"})
_MISSING = re.compile(r"could not import '([\w.]+)'|\b([\w-]+) is not installed")


def declared_dependency_missing(reason: str) -> str | None:
    """The declared dependency a skip reason says is missing, else None."""
    match = _MISSING.search(reason or "")
    if not match:
        return None
    name = (match.group(1) or match.group(2)).split(".")[0]
    return name if name in DECLARED else None


def _fail_if_a_declared_dependency_is_missing(report) -> None:
    if not report.skipped or os.environ.get("GENFORGE_REQUIRE_DEPS") != "1":
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    missing = declared_dependency_missing(reason)
    if missing:
        report.outcome = "failed"
        report.longrepr = (f"{reason}\n{missing} is a declared dependency: GENFORGE_REQUIRE_DEPS=1 makes its "
                           "absence a failure, not a skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_a_declared_dependency_is_missing(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_a_declared_dependency_is_missing(outcome.get_result())


@pytest.fixture(scope="session")
def cluster():
    """The emulated API server serving the genforge CRDs from `crds/` plus the built-in kinds."""
    from genforge_local import EmulatedCluster
    from genforge_operator.bundled import crd_dir

    emulated = EmulatedCluster(crd_dir=crd_dir())
    emulated.start()
    yield emulated
    emulated.stop()


@pytest.fixture(scope="session")
def kubeconfig(cluster, tmp_path_factory):
    """A kubeconfig file pointing at the emulated cluster (for kubectl and other clients)."""
    return cluster.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


@pytest.fixture(scope="session")
def api_client(cluster):
    """A `kubernetes.client.ApiClient` for the emulated cluster."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.url
    with kubernetes.client.ApiClient(configuration) as client:
        yield client


@pytest.fixture(scope="session")
def custom_api(api_client):
    import kubernetes

    return kubernetes.client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def core_api(api_client):
    import kubernetes

    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def batch_api(api_client):
    import kubernetes

    return kubernetes.client.BatchV1Api(api_client)


@pytest.fixture
def namespace(cluster, raw_api, request):
    """A fresh namespace for one test; it and everything in it is removed afterwards.

    The emulated API server admits genforge objects as kube-apiserver does (it refuses an
    invalid status and prunes fields the CRD lacks); afterwards no status write in the
    namespace may have lost a field to pruning (see :func:`pruned_status_fields`), unless
    the test is marked ``writes_status`` (it writes status itself, e.g. to test the emulator)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    since = cluster.mark()
    status, body = raw_api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, body
    yield name
    try:
        problems = [] if request.node.get_closest_marker("writes_status") else pruned_status_fields(cluster, name, since)
    finally:
        cluster.call(lambda handler: handler.purge_namespace(name))
    assert not problems, (
        "status fields the CRD schema does not declare were written (a real API server prunes "
        "them, as the emulated one did):\n" + "\n".join(problems)
    )


@pytest.fixture
def raw_api(cluster):
    """Plain HTTP to the emulated API server (`harness.RawApi`)."""
    from harness import RawApi

    return RawApi(cluster.url)


@pytest.fixture
def pool(custom_api):
    """A CPU AcceleratorPool at $3600/h: one dollar per second, so money moves visibly in a test."""
    from datetime import datetime

    name = f"cpu-{datetime.now().strftime('%H%M%S%f')}"
    custom_api.create_cluster_custom_object("genforge.dev", "v1alpha1", "acceleratorpools", {
        "apiVersion": "genforge.dev/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": name},
        "spec": {"accelerator": {"type": "cpu"}, "pricePerHour": "3600", "relativeThroughput": 1000.0}})
    yield name
    custom_api.delete_cluster_custom_object("genforge.dev", "v1alpha1", "acceleratorpools", name)
