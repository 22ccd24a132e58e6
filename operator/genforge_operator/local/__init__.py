"""The local control plane: an emulated Kubernetes API server (and, later, a local executor).

Serves the test harness today and `genforge local` / `genforge demo` later.
"""

from .emulator import EmulatedCluster, Fault, KubeApiEmulator, RequestRecord, Stall, load_crds

__all__ = ["EmulatedCluster", "Fault", "KubeApiEmulator", "RequestRecord", "Stall", "load_crds"]
