"""What the kernel says about mounts: which filesystem a path is on, and mounts below a path."""

from __future__ import annotations

import os
import select
import threading

import psutil

# Filesystems where inotify cannot see writes made on other hosts: watch them by polling.
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "ceph", "cifs", "smb3", "smbfs", "9p", "beegfs",
    "glusterfs", "afs", "ocfs2", "gfs2", "panfs", "wekafs", "virtiofs",
})


MountTable = tuple[tuple[str, str], ...]


class _Cached:
    """The mount table, parsed again only when the kernel says it changed: an open
    /proc/self/mounts polls POLLPRI|POLLERR once after every mount or unmount (proc(5)), so a
    reaction costs one poll() instead of a parse of every mount. Without /proc: parsed each time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: MountTable | None = None
        self._poller: select.poll | None = None
        self._fd = -1
        self._pid = -1

    def _open(self) -> None:
        """One open file description per process: after a fork the parent's would share its
        change flag with the child, and one of them would miss a change."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._poller, self._table, self._pid = -1, None, None, os.getpid()
        try:
            # A raw fd held for the life of the process (a file object would warn at exit).
            self._fd = os.open("/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLPRI | select.POLLERR)

    def get(self) -> MountTable:
        with self._lock:
            if self._pid != os.getpid():
                self._open()
            changed = self._poller is None or self._table is None or bool(self._poller.poll(0))
            if changed:
                self._table = _parse()
            assert self._table is not None
            return self._table


def _parse() -> MountTable:
    return tuple((p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True))


_CACHE = _Cached()


def mount_table() -> MountTable:
    """Every (mount point, filesystem type) visible to this process."""
    return _CACHE.get()


def mount_points(table: tuple[tuple[str, str], ...] | None = None) -> tuple[str, ...]:
    return tuple(point for point, _ in (mount_table() if table is None else table))


def mount_points_under(path: str, points: tuple[str, ...]) -> list[str]:
    """Mount points strictly inside `path` (a step holding one must not be moved or walked)."""
    prefix = os.path.join(os.path.realpath(path), "")
    return [p for p in points if p.startswith(prefix)]


def filesystem_type(path: str, table: tuple[tuple[str, str], ...] | None = None) -> str:
    """The type of the filesystem `path` lives on (the longest mount point that contains it)."""
    return _containing(path, table)[1]


def mount_point(path: str, table: tuple[tuple[str, str], ...] | None = None) -> str:
    """The mount point of the filesystem `path` lives on ("" when none contains it)."""
    return _containing(path, table)[0]


def _containing(path: str, table: tuple[tuple[str, str], ...] | None) -> tuple[str, str]:
    real = os.path.realpath(path)
    best, best_type = "", "unknown"
    for point, fstype in mount_table() if table is None else table:
        inside = real == point or real.startswith(os.path.join(point, ""))
        if inside and len(point) >= len(best):
            best, best_type = point, fstype
    return best, best_type


def is_network_fs(fstype: str) -> bool:
    """True where inotify is blind to other hosts' writes (network and FUSE filesystems)."""
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse")
