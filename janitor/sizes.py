"""How many bytes deleting a directory would free: an fd-based `du` that never follows symlinks and
never leaves the directory's filesystem (the same rules the reaper deletes by)."""

from __future__ import annotations

import os
import stat

from janitor.reaper import freed_by

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    """Bytes freed by removing `name` (relative to `dir_fd`); 0 if it vanished."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return 0
    dev = os.fstat(fd).st_dev
    total = 0
    stack = [fd]
    while stack:
        current = stack.pop()
        try:
            total += freed_by(os.fstat(current))
            with os.scandir(current) as listing:
                items = list(listing)
            for item in items:
                total += _size_of(current, item, dev, stack)
        except OSError:
            pass  # unreadable corner: the size is a report, not a decision
        finally:
            os.close(current)
    return total


def _size_of(parent_fd: int, item: os.DirEntry[str], dev: int, stack: list[int]) -> int:
    st = item.stat(follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return freed_by(st)
    if st.st_dev != dev:
        return 0
    try:
        stack.append(os.open(item.name, _DIR_FLAGS, dir_fd=parent_fd))
    except OSError:
        return 0
    return 0
