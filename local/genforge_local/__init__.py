"""genforge's local cluster, for development and tests: no Kubernetes needed.

An emulated API server (`emulator`, with `kubectl_support` in front of it for kubectl), a
home-made Job controller and a process "kubelet" (`executor`, `jobcontrol`), the same node
for a real kube-apiserver (`kubelet`, `real_cluster`, `kube_binaries`), and what puts them
together: `control_plane` (`genforge local`) and `demo` (`genforge demo`). docs/local.md
describes each piece.

It ships apart from the operator, which never imports it: `pip install 'genforge[local]'`.
"""

from .custom_resources import load_crds
from .emulated_cluster import EmulatedCluster
from .emulator import Fault, KubeApiEmulator, RequestRecord, Stall

__all__ = ["EmulatedCluster", "Fault", "KubeApiEmulator", "RequestRecord", "Stall", "load_crds"]
