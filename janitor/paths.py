"""Which trees a user may point the janitor at, and discovering managed directories in them."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections import deque
from dataclasses import dataclass

from janitor import exitcodes, protocol

# Directories no checkpoint tree should be: pointing the janitor here is almost surely a typo.
_SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",  # noqa: S108 (refused, not used)
})


def refusal(path: str) -> str | None:
    """Why `path` must not be a root (`/`, a home or system directory), or None when fine."""
    real, shown = os.path.realpath(path), protocol.printable(path)
    if real in _SYSTEM_DIRS:
        return (f"{shown} is a system directory; "
                "point the janitor at the checkpoint directory itself")
    homes = {os.path.realpath(os.path.expanduser("~"))}
    with contextlib.suppress(OSError):
        homes.update(os.path.realpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir != "/")
    if real in homes:
        return f"{shown} is a home directory; point the janitor at the checkpoint directory itself"
    return None


@dataclass(frozen=True, slots=True)
class Discovery:
    """Managed directories under a root, and every directory looked at (the ones to watch)."""

    managed: tuple[str, ...]
    visited: tuple[str, ...]


def discover(root: str, max_depth: int) -> Discovery:
    """Find managed directories: the root and descendants down to `max_depth` that hold `step_*`
    entries or a consumer marker. Never descends into step, hidden or symlinked directories.

    The root itself is resolved first: a user may name it through a symlink (`/ckpt -> /mnt/x`);
    below it, nothing is followed.
    """
    root = os.path.realpath(root)
    managed: list[str] = []
    visited: list[str] = []
    queue: deque[tuple[str, int]] = deque([(root, 0)])
    while queue:
        path, depth = queue.popleft()
        try:
            has_steps, subdirs = _look(path)
        except OSError:  # gone, not a directory, a symlink, unreadable: nothing to manage there
            continue
        visited.append(path)
        if has_steps:
            managed.append(path)
        if depth < max_depth:
            queue.extend((os.path.join(path, name), depth + 1) for name in sorted(subdirs))
    return Discovery(tuple(managed), tuple(visited))


def _look(path: str) -> tuple[bool, list[str]]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    has_steps = False
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as listing:
            for item in listing:
                name = item.name
                if protocol.looks_like_step(name) or protocol.consumer_of(name) is not None:
                    has_steps = True
                elif not name.startswith(".") and item.is_dir(follow_symlinks=False):
                    subdirs.append(name)
    finally:
        os.close(fd)
    return has_steps, subdirs


def check_root(path: str) -> tuple[int, str] | None:
    """Why `path` cannot be a root, as (exit code, one line), or None when it can."""
    shown = protocol.printable(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return exitcodes.USAGE, f"{shown} does not exist; check the path (is the volume mounted?)"
    except PermissionError:
        return exitcodes.ERROR, (f"{shown} is not accessible (permission denied); "
                                 "run as a user who can read it")
    if not stat.S_ISDIR(st.st_mode):
        return exitcodes.USAGE, (f"{shown} is not a directory; "
                                 "give the directory that holds the step_* directories")
    why = refusal(path)
    return None if why is None else (exitcodes.REFUSED, why)
