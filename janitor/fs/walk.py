"""The one fd-based tree walk, for reclaiming trash and for measuring trees: its fd use is bounded
at any depth and width, it never follows a symlink and never leaves the starting filesystem.

At most `max_fds` directory fds are held (one more for a listing in progress). Deeper than that,
ancestors' fds are closed and re-opened later by name, one component at a time, from the nearest
still-open ancestor, each with O_NOFOLLOW | O_DIRECTORY and checked against the (st_dev, st_ino)
recorded on the way down: a mismatch means the tree was swapped under the walk, which then stops
with TreeSwappedError and never follows. Pending subdirectories are names, not open fds, so a
directory with 100,000 subdirectories costs memory for names, not fds. Every fd is closed on
every path, exceptions included.

Errors are handed to an `onexc(exc, where)` policy (as shutil.rmtree's onexc): return to pass the
corner over, raise to stop the walk. Something that vanished mid-walk is passed over silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Literal

from janitor.fs import reserved

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_FDS = 16
_MIN_FDS = 2
_OWNER_RWX = stat.S_IRWXU

ErrorPolicy = Callable[[OSError, str], None]


class TreeSwappedError(OSError):
    """A directory on the walk's path is no longer the one recorded on the way down."""

    def __init__(self, where: str) -> None:
        super().__init__(errno.ESTALE, "a directory was replaced during the walk (not followed)")
        self.where = where


def raise_all(exc: OSError, where: str) -> None:
    """The strict policy: any error stops the walk and propagates."""
    raise exc


def pass_over(exc: OSError, where: str) -> None:
    """The tolerant policy: skip the corner that failed (for reports, never decisions)."""


@dataclass(frozen=True, slots=True)
class Visit:
    """One step of the walk.

    - "dir": a directory was entered; `fd` is the directory itself, `st` its fstat.
    - "entry": a non-directory child `name` of the directory open as `fd`; `st` its lstat.
    - "leave": every child of directory `name` was visited; `fd` is its parent, `st` its fstat.
    An fd is valid only until the walk is resumed.
    """

    kind: Literal["dir", "entry", "leave"]
    fd: int
    name: str
    st: os.stat_result


@dataclass(slots=True)
class _Frame:
    name: str
    st: os.stat_result
    fd: int  # -1 while closed to stay within the fd budget
    subdirs: list[tuple[str, int]]  # (name, st_ino) still to descend into


def walk(base_fd: int, name: str, *, onexc: ErrorPolicy = raise_all, dev: int | None = None,
         max_fds: int = MAX_FDS, own_modes: bool = False) -> Generator[Visit, None, None]:
    """Walk `name` (relative to `base_fd`, which stays open throughout) and all below it.

    `dev` is the filesystem not to leave (default: that of `name` itself). With `own_modes`, a
    directory the janitor owns that it may not list, search or write (mode 0500, 0600, 0000) is
    made u+rwx before it is entered: only directories, through verified fds (_make_usable).
    """
    walker = _Walker(base_fd, onexc, max(_MIN_FDS, max_fds), own_modes)
    try:
        yield from walker.run(name, dev)
    finally:
        walker.close_all()


class _Walker:
    def __init__(self, base_fd: int, onexc: ErrorPolicy, max_fds: int, own_modes: bool) -> None:
        self.base_fd = base_fd
        self.onexc = onexc
        self.max_fds = max_fds
        self.own_modes = own_modes
        self.stack: list[_Frame] = []
        self.open_count = 0
        self.home_mount = reserved.mount_id(base_fd)

    def _on_home_mount(self, fd: int) -> bool:
        """Whether the directory `fd` is on the mount of `base_fd`, the directory the walk
        starts from (the trash, when reclaiming), the walk's root included: st_dev cannot tell a
        bind mount of the same filesystem, made at any time, even mid-walk; the mount ID can.
        Costs one read of /proc/self/fdinfo per directory (not per file)."""
        return _same_mount(fd, self.home_mount)

    # ---- the walk ------------------------------------------------------------------------

    def run(self, name: str, dev: int | None) -> Iterator[Visit]:
        try:
            st = os.stat(name, dir_fd=self.base_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.onexc(exc, name)
            return
        if not stat.S_ISDIR(st.st_mode):
            yield Visit("entry", self.base_fd, name, st)
            return
        if dev is None:
            dev = st.st_dev
        elif st.st_dev != dev:
            self.onexc(OSError(errno.EXDEV, "another filesystem, not entered"), name)
            return
        yield from self._enter(self.base_fd, name, st.st_ino, dev)
        while self.stack:
            top = self.stack[-1]
            if top.subdirs:
                child, ino = top.subdirs.pop()
                yield from self._enter(self._fd_of(len(self.stack) - 1), child, ino, dev)
                continue
            self.stack.pop()
            self._close(top)
            parent_fd = self._fd_of(len(self.stack) - 1) if self.stack else self.base_fd
            yield Visit("leave", parent_fd, top.name, top.st)

    def _enter(self, parent_fd: int, name: str, ino: int, dev: int) -> Iterator[Visit]:
        """Open the directory `name` (listed with inode `ino`), then visit its children."""
        try:
            fd = _open_dir(parent_fd, name, ino, self.own_modes)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # Swapped for a symlink or a file since the listing: never followed, visited as
                # the non-directory it now is (a reclaim unlinks the symlink itself).
                yield from self._swapped_for_entry(parent_fd, name)
            else:
                self.onexc(exc, self.where(name))
            return
        st = _verified(fd, dev, ino, self.where(name), self.own_modes)
        if not self._on_home_mount(fd):
            os.close(fd)
            self.onexc(OSError(errno.EXDEV, "a mount point (a bind mount?), not crossed"),
                       self.where(name))
            return
        frame = _Frame(name, st, fd, [])
        self.stack.append(frame)
        self.open_count += 1
        self._within_budget(keep=len(self.stack) - 1)
        yield Visit("dir", fd, name, st)
        yield from self._children(frame, dev)

    def _children(self, frame: _Frame, dev: int) -> Iterator[Visit]:
        """Visit the non-directories of the directory just entered; note its subdirectories."""
        fd = frame.fd
        try:
            with os.scandir(fd) as listing:
                items = list(listing)  # list first: unlinking while reading may skip entries
        except OSError as exc:
            self.onexc(exc, self.where_frame(len(self.stack) - 1))
            return
        for item in items:
            try:
                child = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.onexc(exc, self.where(item.name))
                continue
            if not stat.S_ISDIR(child.st_mode):
                yield Visit("entry", fd, item.name, child)
            elif child.st_dev != dev:
                self.onexc(OSError(errno.EXDEV, "a mount point, not crossed"),
                           self.where(item.name))
            else:
                frame.subdirs.append((item.name, child.st_ino))

    def _swapped_for_entry(self, parent_fd: int, name: str) -> Iterator[Visit]:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.onexc(exc, self.where(name))
            return
        if stat.S_ISDIR(st.st_mode):  # swapped back: it is looked at again on the next walk
            self.onexc(TreeSwappedError(self.where(name)), self.where(name))
            return
        yield Visit("entry", parent_fd, name, st)

    # ---- the fd budget -------------------------------------------------------------------

    def _fd_of(self, index: int) -> int:
        """The open fd of frame `index`, re-opening it (and the closed frames above the nearest
        open ancestor) by name if it was closed. Each must still be the directory recorded."""
        frame = self.stack[index]
        if frame.fd >= 0:
            return frame.fd
        below = index - 1
        while below >= 0 and self.stack[below].fd < 0:
            below -= 1
        fd = self.base_fd if below < 0 else self.stack[below].fd
        for at in range(below + 1, index + 1):
            here = self.stack[at]
            try:
                child = os.open(here.name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    raise TreeSwappedError(self.where_frame(at)) from exc
                raise
            st = os.fstat(child)
            if (st.st_dev, st.st_ino) != (here.st.st_dev, here.st.st_ino):
                os.close(child)
                raise TreeSwappedError(self.where_frame(at))
            here.fd = child
            self.open_count += 1
            self._within_budget(keep=at, also=len(self.stack) - 1)
            fd = child
        return fd

    def _within_budget(self, keep: int, also: int = -1) -> None:
        """Close frames' fds until at most max_fds are open. The victim is the open frame whose
        gap down to the next open one is smallest (lowest first): the deep end of the stack stays
        dense, the shallow end keeps anchors spread out, so re-opening stays short."""
        while self.open_count > self.max_fds:
            victim, best, previous = -1, 0, -1
            for at, frame in enumerate(self.stack):
                if frame.fd < 0:
                    continue
                gap = at - previous
                previous = at
                if at in (keep, also):
                    continue
                if victim < 0 or gap < best:
                    victim, best = at, gap
            if victim < 0:
                return
            self._close(self.stack[victim])

    def _close(self, frame: _Frame) -> None:
        if frame.fd >= 0:
            fd, frame.fd = frame.fd, -1
            self.open_count -= 1
            os.close(fd)

    def close_all(self) -> None:
        for frame in self.stack:
            with contextlib.suppress(OSError):
                self._close(frame)
        self.stack.clear()

    # ---- names for messages --------------------------------------------------------------

    def where(self, name: str) -> str:
        return _short_path([f.name for f in self.stack] + [name])

    def where_frame(self, index: int) -> str:
        return _short_path([f.name for f in self.stack[:index + 1]])


def open_directory(parent_fd: int, name: str, *, dev: int, own_modes: bool = False) -> int | None:
    """Open the directory `name` as the walk would (no symlink, on `dev`, the inode lstat saw,
    u+rwx first with `own_modes`); None if it is gone or not a directory. Raises OSError."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if st.st_dev != dev:
        raise OSError(errno.EXDEV, "another filesystem, not entered")
    fd = _open_dir(parent_fd, name, st.st_ino, own_modes)
    _verified(fd, dev, st.st_ino, name, own_modes)
    if not _same_mount(fd, reserved.mount_id(parent_fd)):
        os.close(fd)
        raise OSError(errno.EXDEV, "a mount point (a bind mount?), not crossed")
    return fd


def _same_mount(fd: int, home_mount: int | None) -> bool:
    """Whether `fd` is on the mount `home_mount`. Without mount IDs (no /proc, no statx) the
    st_dev checks are all there is."""
    return home_mount is None or reserved.mount_id(fd) == home_mount


def _verified(fd: int, dev: int, ino: int, where: str, own_modes: bool) -> os.stat_result:
    """The fstat of a directory just opened, if it is the one listed; else `fd` is closed and
    TreeSwappedError raised. With `own_modes` it is made u+rwx if ours and not already."""
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise TreeSwappedError(where)  # noqa: TRY301 (the fd must be closed on any error)
        if own_modes:
            _make_owner_rwx(fd, st)
    except BaseException:
        os.close(fd)
        raise
    return st


def _open_dir(parent_fd: int, name: str, ino: int, own_modes: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        if not (own_modes and _make_usable(parent_fd, name, ino)):
            raise
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def _make_owner_rwx(fd: int, st: os.stat_result) -> None:
    """u+rwx on an open directory of ours that we may not search or write (0500, 0600): else its
    entries can be neither looked at nor unlinked by a janitor that is not root."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid() and mode & _OWNER_RWX != _OWNER_RWX:
        os.fchmod(fd, mode | _OWNER_RWX)


def _make_usable(parent_fd: int, name: str, ino: int) -> bool:
    """u+rwx on a directory of ours that cannot even be opened for reading (mode 0000, 0300).

    Through an O_PATH fd (which needs no permission on the directory itself), fstat-checked to be
    the very directory listed and the janitor's own. A directory cannot be hard-linked, so the
    chmod reaches nothing outside the tree being walked; /proc/self/fd/N names exactly that inode
    (fchmod refuses O_PATH fds, and a chmod by name could race a swap)."""
    try:
        fd = os.open(name, _PATH_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_ino != ino or st.st_uid != os.geteuid():
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | _OWNER_RWX)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _short_path(parts: list[str]) -> str:
    """A relative path for a message, elided in the middle when deep (a 3,000-deep chain)."""
    if len(parts) > 6:
        parts = [*parts[:3], f"...({len(parts) - 5} more)...", *parts[-2:]]
    return "/".join(parts)
