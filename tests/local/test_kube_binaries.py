"""The Kubernetes binary builder's pure parts: reading go.mod files, writing the wrapper module."""

from __future__ import annotations

import pytest

from genforge_local import kube_binaries as kb

KUBERNETES_GO_MOD = """module k8s.io/kubernetes

go 1.25.0

require (
\tgo.etcd.io/etcd/client/v3 v3.6.5
\tk8s.io/api v0.0.0
)

require (
\tgo.etcd.io/etcd/server/v3 v3.6.5 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""

ETCD_GO_MOD = """module go.etcd.io/etcd/server/v3

go 1.24

replace (
\tgo.etcd.io/etcd/api/v3 => ../api
\tgo.etcd.io/etcd/client/v3 => ../client/v3
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""


def test_local_replacements_are_read_from_the_go_mod():
    assert kb.local_replacements(KUBERNETES_GO_MOD) == ["k8s.io/api", "k8s.io/client-go"]
    assert kb.local_replacements(ETCD_GO_MOD) == ["go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/client/v3"]


def test_required_versions_and_go_directive():
    assert kb.required_version(KUBERNETES_GO_MOD, "go.etcd.io/etcd/server/v3") == "v3.6.5"
    assert kb.go_directive(KUBERNETES_GO_MOD) == "1.25.0"
    with pytest.raises(SystemExit):
        kb.required_version(KUBERNETES_GO_MOD, "example.com/absent")


@pytest.mark.parametrize(("kubernetes", "staging"), [("v1.35.4", "v0.35.4"), ("v1.34.0", "v0.34.0"),
                                                     ("v1.36.0-rc.1", "v0.36.0-rc.1")])
def test_staging_modules_are_published_as_v0(kubernetes, staging):
    assert kb.staging_version(kubernetes) == staging


def test_wrapper_module_replaces_every_staging_module_with_its_published_version():
    text = kb.wrapper_go_mod("example.test/w", "1.25.0", {"k8s.io/kubernetes": "v1.35.4"},
                             {m: "v0.35.4" for m in kb.local_replacements(KUBERNETES_GO_MOD)})
    assert "\tk8s.io/kubernetes v1.35.4\n" in text
    assert "\tk8s.io/api => k8s.io/api v0.35.4\n" in text and "\tk8s.io/client-go => k8s.io/client-go v0.35.4\n" in text
    assert "./staging" not in text


def test_version_flags_set_both_version_packages():
    flags = kb._ldflags("v1.35.4", "abc")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.35.4" in flags and f"-X {pkg}.gitMinor=35" in flags


def test_find_honours_an_explicit_folder(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("GENFORGE_KUBE_BIN", str(bin_dir))
    assert kb.find() is None  # empty: not usable
    for name in kb.BINARIES:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    found = kb.find()
    assert found is not None and found.kube_apiserver == bin_dir / "kube-apiserver"


def test_an_incomplete_cache_is_not_found(tmp_path, monkeypatch):
    monkeypatch.delenv("GENFORGE_KUBE_BIN", raising=False)
    monkeypatch.setenv("GENFORGE_KUBE_CACHE", str(tmp_path))
    folder = tmp_path / f"k8s-{kb.KUBERNETES_VERSION}_etcd-v3.6.5" / "bin"
    folder.mkdir(parents=True)
    (folder / "kubectl").write_text("")
    assert kb.find() is None
