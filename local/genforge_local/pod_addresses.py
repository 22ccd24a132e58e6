"""Pod addresses on one host: each pod process gets a loopback address of its own (127.0.0.2, .3, …).

In a cluster a pod IP is the pod's alone; here every pod shares the host's loopback, so the
address is what keeps two trainers' metrics ports apart (`status.podIP`,
`GENFORGE_METRICS_HOST`). `POOL` hands them out for every executor and kubelet of this
process and coordinates with other processes on the host (see `AddressPool`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock files, the bind probe alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

ADDRESS_LINGER_SECONDS = 60.0  # the longest a released address waits for its pod's process group
ADDRESS_PROBES = 64  # candidates whose ports are tried before one is handed out anyway


def loopback_aliases_work() -> bool:
    """Whether 127.0.0.2 can be bound (Linux: all of 127/8 is local; macOS needs aliases)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


def port_free(ip: str, port: int) -> bool:
    """Whether `ip:port` binds right now, without SO_REUSEADDR: nothing listens there and no
    connection of an earlier listener lingers (TIME_WAIT, FIN_WAIT, …)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((ip, port))
        return True
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still exists (its sockets close only once it has exited)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AddressPool:
    """The pod addresses (127.0.0.2, .3, …) of every executor in this process.

    In a cluster a pod IP is the pod's alone; here every pod shares the host's loopback, so
    an address is handed out only when

    * no executor of this process holds it: one numbering for all of them, so a restarted
      plane, a second executor or the kubelet do not start again at 127.0.0.2;
    * no other process on this host holds it (another `genforge local`, a test run): a lock
      file per address in `lock_dir`, `flock`ed while the address is held (the kernel drops
      the lock when the holder dies);
    * every port the pod will listen on binds there right now (`port_free`), so nothing the
      pools do not know of is in the way: a trainer orphaned by a killed plane, a process
      that left its pod's process group, connections of an earlier pod still closing.

    A released address stays held until its pod's process group is gone — SIGKILL is
    asynchronous and a dying process keeps its sockets until it has exited — or, at most,
    `linger` seconds (then the bind probe still guards it). When `probes` candidates in a
    row have a port taken (something listens on 0.0.0.0 at that port), the first of them is
    handed out with a warning: the trainer then serves elsewhere or not at all, it does not fail.
    """

    FIRST, LAST = 2, 0xFFFFFE

    def __init__(self, lock_dir: str | os.PathLike[str] | None = None, *,
                 linger: float = ADDRESS_LINGER_SECONDS, probes: int = ADDRESS_PROBES):
        default = Path(tempfile.gettempdir()) / f"genforge-pod-addresses-{os.getuid()}"
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default
        self.linger, self.probes = linger, probes
        self._lock = threading.Lock()
        self._next = self.FIRST
        self._held: dict[str, tuple[int | None, object]] = {}  # address -> (its lock file's fd, owner)
        self._draining: dict[str, tuple[float, int]] = {}  # released, group alive -> (give up at, pgid)
        self._lock_dir_warned = False

    @staticmethod
    def _address(n: int) -> str:
        return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def acquire(self, ports: Iterable[int] = (), *, owner: object = None) -> str:
        wanted = sorted({port for port in ports if 0 < port < 65536})
        with self._lock:
            self._reclaim()
            fallback: tuple[str, int | None] | None = None
            probed = 0
            for _ in range(self.probes * 256):  # skipping held ones; never a walk over all of 127/8
                n = self._next
                self._next = self.FIRST if n >= self.LAST else n + 1
                ip = self._address(n)
                if n & 255 in (0, 255) or ip in self._held:
                    continue
                locked, fd = self._try_lock(ip)
                if not locked:
                    continue  # another process on this host holds it
                if all(port_free(ip, port) for port in wanted):
                    if fallback is not None:
                        self._unlock(*fallback)
                    self._held[ip] = (fd, owner)
                    return ip
                if fallback is None:
                    fallback = (ip, fd)
                else:
                    self._unlock(ip, fd)
                probed += 1
                if probed >= self.probes:
                    break
            if fallback is None:
                raise RuntimeError("no free loopback address for a pod: every candidate is held")
            ip, fd = fallback
            logger.warning("port(s) %s are taken on %d loopback addresses in a row (something listens on "
                           "0.0.0.0?): pod address %s is handed out anyway, its server cannot listen there",
                           ",".join(map(str, wanted)), probed, ip)
            self._held[ip] = (fd, owner)
            return ip

    def release(self, ip: str, pgid: int | None, *, owner: object = None) -> None:
        """`ip`'s pod has ended; free it once process group `pgid` is gone (None: it never started)."""
        with self._lock:
            if ip not in self._held or self._held[ip][1] is not owner or ip in self._draining:
                return
            if pgid is not None and group_alive(pgid):
                self._draining[ip] = (time.monotonic() + self.linger, pgid)
            else:
                self._free(ip)

    def reclaim(self) -> None:
        """Free the released addresses whose process groups are gone (`acquire` does it first)."""
        with self._lock:
            self._reclaim()

    def _reclaim(self) -> None:
        now = time.monotonic()
        for ip, (deadline, pgid) in list(self._draining.items()):
            if not group_alive(pgid):
                self._free(ip)
            elif now >= deadline:
                logger.warning("process group %d of the pod on %s outlived its pod by %.0f s; the address is "
                               "free again for a pod whose ports bind there", pgid, ip, self.linger)
                self._free(ip)

    def _free(self, ip: str) -> None:
        self._draining.pop(ip, None)
        fd, _owner = self._held.pop(ip)
        self._unlock(ip, fd)

    def _try_lock(self, ip: str) -> tuple[bool, int | None]:
        """(False, None): another process holds `ip`; (True, fd or None without lock files)."""
        if fcntl is None:
            return True, None
        path = self.lock_dir / ip
        try:
            self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            if not self._lock_dir_warned:
                self._lock_dir_warned = True
                logger.warning("cannot lock pod addresses in %s (%s): other processes on this host are not "
                               "told which addresses this one uses (the bind probe still guards them)",
                               self.lock_dir, e)
            return True, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                raise BlockingIOError  # its last holder unlinked it meanwhile: someone may hold the new one
        except OSError:
            os.close(fd)
            return False, None
        return True, fd

    def _unlock(self, ip: str, fd: int | None) -> None:
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_dir / ip)  # while still locked: see `_try_lock`'s inode check
        os.close(fd)


POOL = AddressPool()
