"""The images' entry points, run here the way the images run them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, expected", [
    (["genforge", "operator", "--help"], "--all-namespaces"),
    (["genforge-trainer", "--help"], "{prepare,train,finetune,evaluate}"),
], ids=["operator-image", "trainer-image"])
def test_the_entry_points_start(argv, expected):
    result = _run(*argv)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_the_operator_never_imports_torch():
    """The operator image has no torch: importing everything `genforge operator` runs must not need it."""
    code = ("import sys, genforge_operator.cli, genforge_operator.run_operator, genforge_operator.main; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'accelerate')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr


#: The local cluster's packages (the `local` extra): the operator image installs `.[operator]` without them.
LOCAL_CLUSTER_MODULES = ("genforge_local", "kmock", "jsonschema", "cel", "common_expression_language",
                         "rfc3339_validator", "cryptography")


def test_the_operator_never_imports_the_local_cluster():
    """Everything `genforge operator` runs loads none of the local cluster's packages.

    The kubernetes client imports kubernetes-validate (and with it jsonschema) when it happens to
    be installed; it is a dev dependency the operator image lacks, so it is hidden here as it is
    there."""
    code = textwrap.dedent("""
        import sys

        class HideKubernetesValidate:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "kubernetes_validate":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, HideKubernetesValidate())
        import genforge_operator.cli, genforge_operator.main, genforge_operator.run_operator
        try:
            genforge_operator.cli.main(["operator", "--help"])
        except SystemExit:
            pass
        bad = sorted(m for m in sys.modules if m.split(".")[0] in %r)
        print(bad, file=sys.stderr)
        sys.exit(1 if bad else 0)
    """) % (LOCAL_CLUSTER_MODULES,)
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("missing", ["genforge_local", "kmock"])
def test_the_local_cluster_commands_say_what_to_install_when_it_is_missing(missing):
    """`genforge local` and `genforge demo` without the `local` extra (the package or one of its
    dependencies): a clear message, not a traceback."""
    code = textwrap.dedent(f"""
        import sys

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {missing!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Hide())
        from genforge_operator.cli import main
        sys.exit(main(["local"]) * 10 + main(["demo"]))
    """)
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 22, result.stdout + result.stderr
    assert result.stderr.count("pip install 'genforge[local]'") == 2, result.stderr
    assert f"No module named '{missing}" in result.stderr, result.stderr
