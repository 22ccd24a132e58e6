"""No module of genforge's three packages imports a module that imports it back (at module
level or inside a function), and the in-cluster operator never reaches the local cluster."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"genforge_operator": ROOT / "operator" / "genforge_operator",
            "genforge_local": ROOT / "local" / "genforge_local",
            "genforge_trainer": ROOT / "trainer" / "genforge_trainer"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _parse(source: str) -> ast.AST:
    # CPython 3.11's AST constructor checks its recursion depth before and after; a garbage
    # collection running a finalizer in between (other tests' leftovers) makes it raise
    # "SystemError: AST constructor recursion depth mismatch" (seen once in CI). Not our bug.
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        gc.enable()


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (a package's own submodules importing it excluded)."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(_parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = (".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                          if node.level else node.module or "")
                targets = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def test_no_module_imports_one_that_imports_it_back():
    edges = import_graph()
    assert len(edges) > 60, "the walk found too few modules"
    mutual = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
    assert not mutual, mutual


def test_the_graph_sees_imports_inside_functions():
    """The check would be blind without it: render imports schema at module level, the
    CLI imports each command's module lazily (inside a function)."""
    edges = import_graph()
    assert "genforge_operator.schema" in edges["genforge_operator.render"]
    assert "genforge_operator.money" in edges["genforge_operator.reconcile"]


def test_the_operator_package_never_imports_the_local_cluster():
    edges = import_graph()
    offenders = sorted((a, b) for a, targets in edges.items() if a.startswith("genforge_operator")
                       for b in targets if b.startswith("genforge_local"))
    assert not offenders, offenders
