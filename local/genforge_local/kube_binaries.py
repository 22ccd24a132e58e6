"""Build the pinned Kubernetes binaries (kube-apiserver, kube-controller-manager, kubectl, etcd)
from their Go modules, cached in a folder keyed by version; and the pinned ``helm`` (v4) and
Kueue controller manager (with Kueue's CRDs and manifests from the same module).

Standard library only: ``scripts/kube-binaries`` runs this file before the package is
installed, and ``genforge local --kube`` and the real-Kubernetes test tier call
:func:`find` to locate what it built.

Why a wrapper module: ``go install k8s.io/kubernetes/cmd/kube-apiserver@vX`` is refused
because Kubernetes' go.mod replaces its staging modules (k8s.io/api, k8s.io/client-go, …)
with local folders. The wrapper requires ``k8s.io/kubernetes vX`` and replaces every staging
module with its published ``v0.Y.Z`` version; the list is read from Kubernetes' own go.mod,
never hard-coded. etcd's server module does the same with its sibling modules.

The cache (``$GENFORGE_KUBE_CACHE`` or ``~/.cache/genforge/kube``) holds one folder per
version set, e.g. ``k8s-v1.35.4_etcd-v3.6.5/bin``; Go's own module and build caches are
reused, so a second build of another version set is incremental.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl", "etcd")
_K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")


@dataclass(frozen=True)
class KubeBinaries:
    """Where one built version set lives."""

    root: Path
    kubernetes_version: str
    etcd_version: str

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def kube_apiserver(self) -> Path:
        return self.path("kube-apiserver")

    @property
    def kube_controller_manager(self) -> Path:
        return self.path("kube-controller-manager")

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")

    @property
    def etcd(self) -> Path:
        return self.path("etcd")

    def complete(self) -> bool:
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            return False
        return all(os.access(self.path(name), os.X_OK) for name in BINARIES)


def cache_root() -> Path:
    env = os.environ.get("GENFORGE_KUBE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "genforge" / "kube"


def find(kubernetes_version: str = KUBERNETES_VERSION) -> KubeBinaries | None:
    """The complete built version set for ``kubernetes_version``, or None.

    ``$GENFORGE_KUBE_BIN`` names a folder holding the four binaries (e.g. from a
    package manager); it wins when set.
    """
    explicit = os.environ.get("GENFORGE_KUBE_BIN")
    if explicit:
        root = Path(explicit)
        bins = KubeBinaries(root.parent if root.name == "bin" else root, kubernetes_version, "external")
        if all(os.access(bins.path(n), os.X_OK) for n in BINARIES):
            return bins
        return None
    root = cache_root()
    if not root.is_dir():
        return None
    for folder in sorted(root.glob(f"k8s-{kubernetes_version}_etcd-*")):
        bins = KubeBinaries(folder, kubernetes_version, folder.name.split("_etcd-", 1)[1])
        if bins.complete():
            return bins
    return None


# --------------------------------------------------------------------------- build


class _Progress:
    """One line per stage, with a heartbeat while a long Go command runs."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[kube-binaries {elapsed:6.0f}s] {message}", file=self.stream, flush=True)

    def run(self, cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> str:
        self.say(f"{what}: {' '.join(cmd)}")
        done = threading.Event()
        begun = time.monotonic()

        def beat() -> None:
            while not done.wait(30):
                self.say(f"  … {what} still running ({time.monotonic() - begun:.0f}s)")

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        finally:
            done.set()
            thread.join()
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise SystemExit(f"kube-binaries: {what} failed (exit {proc.returncode}):\n{tail}")
        self.say(f"  {what} done in {time.monotonic() - begun:.0f}s")
        return proc.stdout


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def _download(module: str, version: str, workdir: Path, env: dict[str, str]) -> dict:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"kube-binaries: go mod download {module}@{version} failed:\n{out.stdout}{out.stderr}")
    return json.loads(out.stdout)


_REPLACE_LOCAL = re.compile(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(\.\.?/\S*)\s*$")
_REQUIRE = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)(?:\s+//.*)?$")
_GO_DIRECTIVE = re.compile(r"^go\s+(\S+)\s*$", re.M)


def local_replacements(go_mod: str) -> list[str]:
    """Module paths that a go.mod replaces with a local folder (``=> ./…`` or ``=> ../…``)."""
    found = []
    for line in go_mod.splitlines():
        m = _REPLACE_LOCAL.match(line)
        if m and "FORBIDDEN" not in m.group(2):
            found.append(m.group(1))
    return found


def required_version(go_mod: str, module: str) -> str:
    for line in go_mod.splitlines():
        m = _REQUIRE.match(line)
        if m and m.group(1) == module:
            return m.group(2)
    raise SystemExit(f"kube-binaries: {module} is not required by this go.mod")


def go_directive(go_mod: str) -> str:
    m = _GO_DIRECTIVE.search(go_mod)
    return m.group(1) if m else "1.24"


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes v1.35.4 publishes its staging modules as v0.35.4."""
    m = re.fullmatch(r"v1\.(\d+\.\d+.*)", kubernetes_version)
    if not m:
        raise SystemExit(f"kube-binaries: unexpected Kubernetes version {kubernetes_version!r}")
    return f"v0.{m.group(1)}"


def wrapper_go_mod(name: str, go_version: str, requires: dict[str, str], replaces: dict[str, str]) -> str:
    lines = [f"module {name}", "", f"go {go_version}", "", "require ("]
    lines += [f"\t{mod} {ver}" for mod, ver in requires.items()]
    lines += [")", "", "replace ("]
    lines += [f"\t{mod} => {mod} {ver}" for mod, ver in sorted(replaces.items())]
    lines += [")", ""]
    return "\n".join(lines)


def _tools_go(packages: list[str]) -> str:
    imports = "\n".join(f'\t_ "{p}"' for p in packages)
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def _ldflags(kubernetes_version: str, commit: str) -> str:
    m = re.match(r"v(\d+)\.(\d+)", kubernetes_version)
    major, minor = m.group(1), m.group(2)
    values = {
        "gitVersion": kubernetes_version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": commit,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in values.items()]
    return " ".join(flags)


def build(kubernetes_version: str = KUBERNETES_VERSION, *, force: bool = False) -> KubeBinaries:
    progress = _Progress()
    env = _go_env()
    root = cache_root()
    src = root / "src" / kubernetes_version
    src.mkdir(parents=True, exist_ok=True)

    progress.say(f"resolving k8s.io/kubernetes {kubernetes_version}")
    k8s = _download("k8s.io/kubernetes", kubernetes_version, src, env)
    k8s_mod = Path(k8s["GoMod"]).read_text()
    etcd_version = required_version(k8s_mod, "go.etcd.io/etcd/server/v3")
    commit = ""
    info = json.loads(Path(k8s["Info"]).read_text())
    commit = (info.get("Origin") or {}).get("Hash", "") or "unknown"

    bins = KubeBinaries(root / f"k8s-{kubernetes_version}_etcd-{etcd_version}", kubernetes_version, etcd_version)
    if bins.complete() and not force:
        progress.say(f"up to date: {bins.bin_dir}")
        return bins
    bins.bin_dir.mkdir(parents=True, exist_ok=True)

    # Kubernetes: one wrapper module, every staging module pinned to its published version.
    staging = [m for m in local_replacements(k8s_mod) if m.startswith("k8s.io/")]
    if not staging:
        raise SystemExit("kube-binaries: found no staging modules in Kubernetes' go.mod")
    stage_ver = staging_version(kubernetes_version)
    kube_dir = src / "kubernetes"
    kube_dir.mkdir(exist_ok=True)
    (kube_dir / "go.mod").write_text(
        wrapper_go_mod(
            "genforge.dev/kube-binaries/kubernetes",
            go_directive(k8s_mod),
            {"k8s.io/kubernetes": kubernetes_version},
            {m: stage_ver for m in staging},
        )
    )
    packages = [f"k8s.io/kubernetes/cmd/{c}" for c in _K8S_COMMANDS]
    (kube_dir / "tools.go").write_text(_tools_go(packages))
    progress.say(f"{len(staging)} staging modules pinned to {stage_ver}")
    progress.run(["go", "mod", "tidy"], kube_dir, env, "resolve Kubernetes modules")
    out_tmp = bins.bin_dir / ".partial"
    out_tmp.mkdir(exist_ok=True)
    progress.run(
        ["go", "build", "-trimpath", "-ldflags", _ldflags(kubernetes_version, commit), "-o", str(out_tmp) + "/", *packages],
        kube_dir,
        env,
        "build " + ", ".join(_K8S_COMMANDS),
    )

    # etcd: its server module replaces its sibling modules with local folders too.
    etcd = _download("go.etcd.io/etcd/server/v3", etcd_version, src, env)
    etcd_mod = Path(etcd["GoMod"]).read_text()
    etcd_dir = src / "etcd"
    etcd_dir.mkdir(exist_ok=True)
    (etcd_dir / "go.mod").write_text(
        wrapper_go_mod(
            "genforge.dev/kube-binaries/etcd",
            go_directive(etcd_mod),
            {"go.etcd.io/etcd/server/v3": etcd_version},
            {m: etcd_version for m in local_replacements(etcd_mod)},
        )
    )
    (etcd_dir / "tools.go").write_text(_tools_go(["go.etcd.io/etcd/server/v3"]))
    progress.run(["go", "mod", "tidy"], etcd_dir, env, "resolve etcd modules")
    progress.run(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out_tmp / "etcd"), "go.etcd.io/etcd/server/v3"],
        etcd_dir,
        env,
        f"build etcd {etcd_version}",
    )

    manifest = {"kubernetes": kubernetes_version, "etcd": etcd_version, "commit": commit, "binaries": {}}
    for name in BINARIES:
        built = out_tmp / name
        data = built.read_bytes()
        manifest["binaries"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        os.replace(built, bins.path(name))
    shutil.rmtree(out_tmp, ignore_errors=True)
    (bins.root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    progress.say(f"built {', '.join(BINARIES)} in {bins.bin_dir}")
    return bins


# --------------------------------------------------------------------------- helm and Kueue


@dataclass(frozen=True)
class Tool:
    """A Go command built with ``go install module/path@version`` (no replace directives)."""

    name: str
    module: str
    version: str
    package: str
    version_flags: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def binary(self) -> Path:
        return self.root / "bin" / self.name

    def complete(self) -> bool:
        return (self.root / "manifest.json").is_file() and os.access(self.binary, os.X_OK)


HELM = Tool("helm", "helm.sh/helm/v4", "v4.3.2", "helm.sh/helm/v4/cmd/helm",
            ("-X helm.sh/helm/v4/internal/version.version=v4.3.2",))
KUEUE = Tool("kueue", "sigs.k8s.io/kueue", "v0.17.0", "sigs.k8s.io/kueue/cmd/kueue",
             ("-X sigs.k8s.io/kueue/pkg/version.GitVersion=v0.17.0",))
TOOLS = (HELM, KUEUE)
#: Kueue's CRDs and default manifests, copied from its module next to the binary.
KUEUE_CONFIG_PARTS = ("config/components/crd/bases", "config/components/webhook", "config/components/manager",
                      "config/components/rbac")


def find_tool(tool: Tool) -> Path | None:
    """The built binary of `tool`, or None (``$GENFORGE_HELM`` / ``$GENFORGE_KUEUE`` name one built elsewhere)."""
    explicit = os.environ.get(f"GENFORGE_{tool.name.upper()}")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    return tool.binary if tool.complete() else None


def kueue_config_dir() -> Path:
    """Kueue's manifests (``config/components/...``) of the pinned version, copied at build time."""
    return KUEUE.root / "config"


def build_tool(tool: Tool, *, force: bool = False) -> Path:
    progress = _Progress()
    if tool.complete() and not force:
        progress.say(f"up to date: {tool.binary}")
        return tool.binary
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env.setdefault("GOTOOLCHAIN", "local")
    partial = tool.root / "bin" / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    env["GOBIN"] = str(partial)
    ldflags = " ".join(["-s", "-w", *tool.version_flags])
    progress.run(["go", "install", "-trimpath", "-ldflags", ldflags, f"{tool.package}@{tool.version}"],
                 tool.root, env, f"build {tool.name} {tool.version}")
    built = partial / tool.name
    data = built.read_bytes()
    os.replace(built, tool.binary)
    shutil.rmtree(partial, ignore_errors=True)
    manifest = {"module": tool.module, "version": tool.version,
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if tool is KUEUE:
        source = Path(_download(tool.module, tool.version, tool.root, env)["Dir"])
        target = kueue_config_dir()
        shutil.rmtree(target, ignore_errors=True)
        for part in KUEUE_CONFIG_PARTS:
            shutil.copytree(source / part, target / Path(part).relative_to("config"))
        for path in target.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # module files are read-only
    (tool.root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    progress.say(f"built {tool.binary}")
    return tool.binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kube-binaries",
        description="Build kube-apiserver, kube-controller-manager, kubectl and etcd from their Go modules (cached).",
    )
    parser.add_argument("--kubernetes", default=KUBERNETES_VERSION, help="k8s.io/kubernetes version (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is complete")
    parser.add_argument("--no-tools", action="store_true",
                        help=f"skip {', '.join(f'{t.name} {t.version}' for t in TOOLS)} (built by default)")
    parser.add_argument("--print-dir", action="store_true", help="print the bin folder of a complete build and exit (1 if none)")
    args = parser.parse_args(argv)
    if args.print_dir:
        found = find(args.kubernetes)
        if not found:
            return 1
        print(found.bin_dir)
        return 0
    if shutil.which("go") is None:
        print("kube-binaries: the go command is not on PATH (Go 1.24 or newer is needed)", file=sys.stderr)
        return 2
    bins = build(args.kubernetes, force=args.force)
    print(bins.bin_dir)
    if not args.no_tools:
        for tool in TOOLS:
            print(build_tool(tool, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
