"""Durable, symlink-safe filesystem primitives: fd-relative opens, fsync, new files, tree removal.

Every step of the publish recipe is built from these, so the fsync discipline lives in one place:
a file's bytes are durable only after fsync of the file, and its name only after fsync of the
directory holding the name.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from janitor import protocol

# O_NOFOLLOW: an entry inside a managed directory is never followed (invariant 6 of docs/design.md).
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def open_directory(path: str | os.PathLike[str]) -> int:
    """Open the managed directory itself (its path may go through a symlink) and return an fd."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_entry_dir(name: str, parent_fd: int, where: str) -> int:
    """Open the real directory `name` inside `parent_fd`, never through a symlink.

    Raises FileNotFoundError if it is missing and NotADirectoryError if it is a symlink or a
    non-directory, with `where` (a human-readable path) in the message.
    """
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(
                f"{where} is not a real directory (a symlink or a file); "
                "trainer_hooks never follows symlinks") from None
        raise


def open_step_dir(root: Path, step_dir: str) -> int:
    """Open the real directory `root/step_dir` (never through a symlink) and return its fd."""
    parent_fd = open_directory(root)
    try:
        return open_entry_dir(step_dir, parent_fd, f"{root / step_dir}")
    finally:
        os.close(parent_fd)


def step_numbers_newest_first(parent_fd: int) -> list[int]:
    """The numbers of the `step_N` directories (never a symlink) in `parent_fd`, newest first."""
    numbers: list[int] = []
    with os.scandir(parent_fd) as entries:
        for entry in entries:
            number = protocol.parse_step_name(entry.name)
            if isinstance(number, int) and entry.is_dir(follow_symlinks=False):
                numbers.append(number)
    return sorted(numbers, reverse=True)


def is_regular_file(name: str, dir_fd: int) -> bool:
    """True if `name` in `dir_fd` exists and is a regular file (a symlink does not count)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def write_new_file(name: str, dir_fd: int, data: bytes) -> None:
    """Create `name` (which must not exist), write `data`, fsync it. The name is not yet durable."""
    fd = os.open(name, _NEW_FILE_FLAGS, 0o666, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(dir_fd: int) -> int:
    """fsync every regular file and every directory below `dir_fd`, then `dir_fd` itself.

    Children before parents, so that when a directory's fsync returns, every name in it points at
    durable data. Symlinks are neither followed nor fsynced. Returns the number of files synced.
    """
    files = 0
    for _root, _dirs, names, sub_fd in os.fwalk(".", topdown=False, follow_symlinks=False,
                                                 dir_fd=dir_fd):
        for name in names:
            if not is_regular_file(name, sub_fd):
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sub_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            files += 1
        os.fsync(sub_fd)
    return files


def unique_name(prefix: str, suffix: str = "") -> str:
    """`prefix` + 16 random hex digits + `suffix`: collision-free among concurrent writers."""
    return f"{prefix}{secrets.token_hex(8)}{suffix}"


def remove_tree(name: str, parent_fd: int) -> None:
    """Remove the directory `name` inside `parent_fd` and everything below it, best effort.

    Used on paths that are already hidden (staging dirs, a replaced step), so a failure or a kill
    here leaves only hidden debris that the janitor removes after its grace period; it must never
    hide the exception that got us here, hence ignore_errors.
    """
    shutil.rmtree(name, dir_fd=parent_fd, ignore_errors=True)
