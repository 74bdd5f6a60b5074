"""What the kernel says about mounts: which filesystem a path is on, and mounts below a path."""

from __future__ import annotations

import os

import psutil

# Filesystems where inotify cannot see writes made on other hosts: watch them by polling.
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "ceph", "cifs", "smb3", "smbfs", "9p", "beegfs",
    "glusterfs", "afs", "ocfs2", "gfs2", "panfs", "wekafs", "virtiofs",
})


def mount_table() -> tuple[tuple[str, str], ...]:
    """Every (mount point, filesystem type) visible to this process."""
    return tuple((p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True))


def mount_points(table: tuple[tuple[str, str], ...] | None = None) -> tuple[str, ...]:
    return tuple(point for point, _ in (mount_table() if table is None else table))


def mount_points_under(path: str, points: tuple[str, ...]) -> list[str]:
    """Mount points strictly inside `path` (a step holding one must not be moved or walked)."""
    prefix = os.path.join(os.path.realpath(path), "")
    return [p for p in points if p.startswith(prefix)]


def filesystem_type(path: str, table: tuple[tuple[str, str], ...] | None = None) -> str:
    """The type of the filesystem `path` lives on (the longest mount point that contains it)."""
    real = os.path.realpath(path)
    best, best_type = "", "unknown"
    for point, fstype in mount_table() if table is None else table:
        inside = real == point or real.startswith(os.path.join(point, ""))
        if inside and len(point) >= len(best):
            best, best_type = point, fstype
    return best_type


def is_network_fs(fstype: str) -> bool:
    """True where inotify is blind to other hosts' writes (network and FUSE filesystems)."""
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse")
