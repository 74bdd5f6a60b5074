"""Which trees a user may point the janitor at, and discovering managed directories in them."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections import deque
from collections.abc import Container
from dataclasses import dataclass

from janitor import exitcodes, protocol
from janitor.layouts import STEP, Layout

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


# What polling compares for a directory discovery looked at: (st_dev, st_ino, st_mtime_ns,
# st_ctime_ns). An entry added, removed or renamed changes the mtime; a replacement the inode.
Stamp = tuple[int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def directory_stamp(path: str) -> Stamp | None:
    """The stamp of `path` now (never following a symlink), or None if it cannot be statted."""
    try:
        return stamp_of(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Visit:
    """One directory discovery listed, with its stamp taken (from the open directory) before the
    listing: anything added after the listing shows as a different stamp, never as nothing."""

    path: str
    depth_left: int  # how many levels below it discovery may still descend
    stamp: Stamp
    managed: bool
    subdirs: tuple[str, ...]  # the paths of the subdirectories descended into (none at depth 0)


@dataclass(frozen=True, slots=True)
class Discovery:
    """Managed directories under a root, and every directory looked at (the ones to watch)."""

    managed: tuple[str, ...]
    visited: tuple[str, ...]
    visits: tuple[Visit, ...] = ()
    # Directories one level below --max-depth that hold steps or a marker: never adopted, so
    # said (a user who set the depth one too low would otherwise see nothing at all).
    beyond: tuple[str, ...] = ()


def discover(root: str, max_depth: int, skip: Container[str] = frozenset(),
             layouts: tuple[Layout, ...] = (STEP,)) -> Discovery:
    """Find managed directories: the root and descendants down to `max_depth` that hold steps
    of one of `layouts`, a tracker of one, or a consumer marker. Never descends into step,
    hidden or symlinked directories, nor into those in `skip` (below the root).

    The root itself is resolved first: a user may name it through a symlink (`/ckpt -> /mnt/x`);
    below it, nothing is followed.
    """
    return discover_below(os.path.realpath(root), max_depth, skip, layouts)


def discover_below(path: str, depth_left: int, known: Container[str],
                   layouts: tuple[Layout, ...] = (STEP,)) -> Discovery:
    """Look at `path` (already resolved: it is not followed if a symlink) and below it, except
    inside the directories in `known`: the daemon's rediscovery of one part of a tree, whose other
    directories it already holds. `path` itself is always looked at; empty if it cannot be."""
    managed: list[str] = []
    visits: list[Visit] = []
    beyond: list[str] = []
    queue: deque[tuple[str, int]] = deque([(path, depth_left)])
    while queue:
        here, left = queue.popleft()
        try:
            stamp, has_steps, names = _look(here, layouts)
        except OSError:  # gone, not a directory, a symlink, unreadable: nothing to manage there
            continue
        subdirs = tuple(os.path.join(here, name) for name in sorted(names)) if left > 0 else ()
        visits.append(Visit(here, left, stamp, has_steps, subdirs))
        if has_steps:
            managed.append(here)
        if left == 0 and len(beyond) < PEEK_BEYOND:
            peek = sorted(names)[: PEEK_BEYOND - len(beyond)]
            beyond.extend(p for p in (os.path.join(here, n) for n in peek)
                          if _holds_steps(p, layouts))
        queue.extend((sub, left - 1) for sub in subdirs if sub not in known)
    return Discovery(tuple(managed), tuple(v.path for v in visits), tuple(visits),
                     tuple(beyond))


# At most this many directories below --max-depth are looked into per discovery (one listing
# each, stopped at the first step or marker), so a wide tree costs a bounded few listings.
PEEK_BEYOND = 32


def _holds_steps(path: str, layouts: tuple[Layout, ...]) -> bool:
    """Whether `path` (not followed if a symlink) directly holds a step, tracker or marker."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with os.scandir(fd) as listing:
            return any(_tells(fd, item.name, layouts) for item in listing)
    except OSError:
        return False
    finally:
        os.close(fd)


def _tells(dir_fd: int, name: str, layouts: tuple[Layout, ...]) -> bool:
    """Whether the child `name` makes its directory a managed one: a consumer marker, a
    layout's tracker, or a name one of `layouts` claims as a step. A bare number (Orbax's
    grammar) counts only as a directory holding one of that layout's completion files: a
    directory of dated or numbered folders is not a checkpoint tree."""
    if protocol.consumer_of(name) is not None:
        return True
    for layout in layouts:
        if name in layout.reserved:
            return True
        if not layout.claims(name):
            continue
        if layout.prefix:
            return True
        if holds_any(dir_fd, name, layout.complete):
            return True
    return False


def holds_any(dir_fd: int, step: str, names: tuple[str, ...]) -> bool:
    """Whether the directory `step` in `dir_fd` holds one of `names` (never followed)."""
    for name in names:
        try:
            os.stat(f"{step}/{name}", dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        return True
    return False


def _look(path: str, layouts: tuple[Layout, ...]) -> tuple[Stamp, bool, list[str]]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    has_steps = False
    subdirs: list[str] = []
    try:
        stamp = stamp_of(os.fstat(fd))
        with os.scandir(fd) as listing:
            for item in listing:
                name = item.name
                if _tells(fd, name, layouts):
                    has_steps = True
                elif not name.startswith(".") and item.is_dir(follow_symlinks=False):
                    subdirs.append(name)
    finally:
        os.close(fd)
    return stamp, has_steps, subdirs


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
