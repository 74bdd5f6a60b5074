"""Open the janitor's reserved names and verify, after opening, that each is what it must be.

A path says nothing about what the kernel hands back: `.janitor.lock` may be a hard link to a file
outside the tree, `.janitor-trash` a bind mount of another directory on the same filesystem (same
`st_dev`), a marker a FIFO that blocks a reader forever. So every reserved object is opened with
O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, then `fstat`-ed and checked on the fd itself: its type, a link
count of 1 for a file, and the same *mount* as the managed directory (the mount ID from
/proc/self/fdinfo, which a same-filesystem bind mount does not share; `st_dev` cannot tell).
An object that fails is refused with one line naming it and what it is; the janitor never reads,
writes, truncates or reclaims through it (invariant 6).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from typing import Any

from janitor.protocol import printable

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_STATX_MNT_ID = 0x1000
_AT_EMPTY_PATH = 0x1000


class UnsafeObjectError(OSError):
    """A reserved name is not what the janitor may use: the message is the one line to show."""

    def __init__(self, name: str, what: str, action: str) -> None:
        super().__init__(errno.EPERM, f"{printable(name)} {what}; {action}")
        self.name = name
        self.what = what


def kind(mode: int) -> str:
    """What a file type is, in words for a message ('a FIFO', 'a symlink', ...)."""
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                        (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "of an unknown file type"


def mount_id(fd: int) -> int | None:
    """The kernel's ID of the mount `fd` lives on (None when the kernel does not say).

    Read from /proc/self/fdinfo (Linux 3.15+); without /proc, from statx(STATX_MNT_ID) (5.8+).
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return _statx_mount_id(fd)


class _StatxTimestamp(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("reserved", ctypes.c_int32))


class _Statx(ctypes.Structure):
    _fields_ = (("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
                ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
                ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
                ("stx_mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16),
                ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
                ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
                ("stx_atime", _StatxTimestamp), ("stx_btime", _StatxTimestamp),
                ("stx_ctime", _StatxTimestamp), ("stx_mtime", _StatxTimestamp),
                ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
                ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
                ("stx_mnt_id", ctypes.c_uint64), ("spare", ctypes.c_uint64 * 13))


@functools.cache
def _statx() -> Any:
    """libc's statx, looked up once. Not through ctypes.util.find_library, which runs ldconfig
    or a compiler in a subprocess: slow on every call, and failing exactly when fds run out
    (EMFILE), which made every directory read as "not on its mount"."""
    for name in ("libc.so.6", None):
        try:
            return ctypes.CDLL(name, use_errno=True).statx
        except (OSError, AttributeError):
            continue
    return None


def _statx_mount_id(fd: int) -> int | None:
    statx = _statx()
    if statx is None:
        return None
    buf = _Statx()
    if statx(fd, b"", _AT_EMPTY_PATH, _STATX_MNT_ID, ctypes.byref(buf)) != 0:
        return None
    return int(buf.stx_mnt_id) if buf.stx_mask & _STATX_MNT_ID else None


def _other_mount(fd: int, expected: int | None, what: str) -> str | None:
    """Why `fd` is not on the mount `expected` (a mount ID), or None when it is. An unknown
    mount ID is never "the same": without one, a bind mount cannot be told apart."""
    actual = mount_id(fd)
    if expected is None or actual is None:
        return ("cannot be told apart from a mount point (the kernel gives no mount ID: "
                "no /proc/self/fdinfo and no statx)")
    return None if actual == expected else what


def check_plain_file(fd: int, name: str, *, action: str) -> os.stat_result:
    """The fstat of `fd` if it is a regular file of its own (one link: writing it can change
    no other name's content)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeObjectError(name, f"is {kind(st.st_mode)}, not a regular file", action)
    if st.st_nlink != 1:
        raise UnsafeObjectError(name, f"is a hard link ({st.st_nlink} names for one file)", action)
    return st


def check_file(fd: int, name: str, home_mount: int | None, *, action: str) -> os.stat_result:
    """The fstat of `fd` if it is a regular file of its own (one link) on the home mount."""
    st = check_plain_file(fd, name, action=action)
    other = _other_mount(fd, home_mount, "is on another mount (a bind mount?)")
    if other is not None:
        raise UnsafeObjectError(name, other, action)
    return st


def check_directory(fd: int, name: str, home_mount: int | None, *,
                    action: str) -> os.stat_result:
    """The fstat of `fd` if it is a directory on the home mount owned by this user (or root)."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeObjectError(name, f"is {kind(st.st_mode)}, not a directory", action)
    other = _other_mount(fd, home_mount, "is a mount point (another mount, perhaps a bind mount)")
    if other is not None:
        raise UnsafeObjectError(name, other, action)
    euid = os.geteuid()
    if euid not in (0, st.st_uid):
        raise UnsafeObjectError(name, f"is owned by uid {st.st_uid}, not by this janitor "
                                f"(uid {euid})", action)
    return st


def still_named(dir_fd: int, name: str, fd: int) -> bool:
    """Whether `name` in `dir_fd` still leads to the object open as `fd`: not removed (no links
    left) and not replaced by another inode. A lock or a trash removed by hand while held is
    noticed this way before its next use."""
    try:
        held = os.fstat(fd)
        named = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def open_error(exc: OSError, name: str, action: str) -> OSError:
    """The one-line error for a reserved name that could not even be opened safely.

    Errors that mean "this is not a plain file or directory" (a symlink, a socket, a directory
    where a file belongs) become UnsafeObjectError; others (EACCES, EROFS, ENOSPC) pass through.
    """
    what = {errno.ELOOP: "is a symlink (never followed)",
            errno.ENXIO: "is a FIFO, socket or device with nothing behind it",
            errno.EISDIR: "is a directory, not a regular file",
            errno.ENOTDIR: "is not a directory"}.get(exc.errno or 0)
    if what is None:
        return exc
    return UnsafeObjectError(name, what, action)


def open_reserved(dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """os.open of a reserved name relative to `dir_fd` with the safe flags added."""
    return os.open(name, flags | _OPEN_FLAGS, mode, dir_fd=dir_fd)
