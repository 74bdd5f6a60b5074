"""What a directory tree holds, read with the reaper's own walk (janitor.fs.walk: fd-based, bounded
fds, no symlink followed, no other filesystem entered): how many bytes deleting it would free, and
when anything in it last changed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from janitor.fs import walk


def freed_by(st: os.stat_result) -> int:
    """Bytes of disk that removing this inode frees (a hard-linked file frees nothing yet)."""
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        return 0
    return st.st_blocks * 512


def path_size(path: str | os.PathLike[str]) -> int:
    """Bytes freed by removing the directory at `path` (0 if it does not exist). Walked from
    the directory itself, so it may be a mount point (the walk stays on its starting mount)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return tree_size(fd, ".")
    finally:
        os.close(fd)


def tree_size(dir_fd: int, name: str) -> int:
    """Bytes freed by removing `name` (relative to `dir_fd`); 0 if it vanished.

    An unreadable corner is skipped: the size is a report, never a decision.
    """
    return sum(freed_by(st) for st in walk_stats(dir_fd, name, strict=False))


def newest_in_tree(dir_fd: int, name: str) -> int:
    """The newest mtime/ctime of `name` and everything below it (a write in progress anywhere
    in the tree shows here). Raises OSError (e.g. PermissionError) where it cannot look: this
    one feeds a decision, and an unread corner might hide a live writer."""
    return max((max(st.st_mtime_ns, st.st_ctime_ns) for st in walk_stats(dir_fd, name,
                                                                         strict=True)),
               default=0)


def walk_stats(dir_fd: int, name: str, *, strict: bool) -> Iterator[os.stat_result]:
    """The lstat of `name` and of every entry below it (janitor.fs.walk: bounded fds, no symlink
    followed, no other filesystem entered). Entries that vanish mid-walk are passed over; other
    errors propagate when `strict`, else that corner is skipped."""
    onexc = walk.raise_all if strict else walk.pass_over
    try:
        for visit in walk.walk(dir_fd, name, onexc=onexc):
            if visit.kind != "leave":
                yield visit.st
    except OSError:  # the walk stopped: a tree swapped under it, no fd left to re-open with
        if strict:
            raise
