"""The operator's RBAC as the Helm chart defines it, for a local real control plane.

`genforge local --kube` and the real-Kubernetes tests run the operator with exactly the
chart's ServiceAccount, ClusterRole(s) and bindings — no admin credentials — so a request
the chart does not allow fails there as it would on a user's cluster. The chart is
rendered offline with helm-python-sdk (Helm's own Go template engine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from genforge_operator.bundled import charts_dir

RELEASE = "genforge"
NAMESPACE = "genforge-system"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def render(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> list[dict]:
    """Every object `charts/genforge` renders with `values` (templates only)."""
    try:
        import helm_python
    except ImportError as e:  # pragma: no cover - part of the dev extra
        raise RuntimeError("rendering the chart needs helm-python-sdk (pip install 'genforge[dev]')") from e
    with helm_python.Chart.load(str(charts_dir() / "genforge")) as chart:
        files = chart.render(dict(values or {}), name=RELEASE, namespace=namespace)
    objects: list[dict] = []
    for path, text in sorted(files.items()):
        if not path.endswith(".txt"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def operator_rbac(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> tuple[list[dict], str]:
    """The chart's operator ServiceAccount, roles and bindings, and the ServiceAccount's name."""
    rendered = render(values, namespace=namespace)
    deployment = next(o for o in rendered if o.get("kind") == "Deployment")
    account = deployment["spec"]["template"]["spec"].get("serviceAccountName", "default")
    return [o for o in rendered if o.get("kind") in RBAC_KINDS], account
