"""Walking a directory tree the way the reaper does (fd-based, no symlink followed, no other
filesystem entered): how many bytes deleting it would free, and when anything in it last changed."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

from janitor.reaper import freed_by

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")


def path_size(path: str | os.PathLike[str]) -> int:
    """Bytes freed by removing the directory at `path` (0 if it does not exist)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return tree_size(fd, name)
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
    """The lstat of `name` and of every entry below it: fd-based, no symlink followed, no other
    filesystem entered. Entries that vanish mid-walk are passed over; other errors propagate
    when `strict`, else that corner is skipped."""
    fd = _tolerant(strict, partial(os.open, name, _DIR_FLAGS, dir_fd=dir_fd))
    if fd is None:
        return
    dev = os.fstat(fd).st_dev
    stack = [fd]
    try:
        while stack:
            current = stack.pop()
            try:
                yield os.fstat(current)
                for item in _tolerant(strict, partial(_listing, current)) or []:
                    st = _tolerant(strict, partial(item.stat, follow_symlinks=False))
                    if st is None:
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        yield st
                    elif st.st_dev == dev:
                        child = _tolerant(strict, partial(os.open, item.name, _DIR_FLAGS,
                                                          dir_fd=current))
                        if child is not None:
                            stack.append(child)
            finally:
                os.close(current)
    finally:
        for leftover in stack:
            os.close(leftover)


def _listing(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as listing:
        return list(listing)


def _tolerant(strict: bool, call: Callable[[], T]) -> T | None:
    """`call()`, or None when its target vanished (or, unless strict, any other OSError)."""
    try:
        return call()
    except FileNotFoundError:
        return None
    except OSError:
        if strict:
            raise
        return None
