"""Execute a plan: move doomed entries into the trash atomically, then reclaim the trash's bytes.

A step is either whole or gone (invariant 7): deletion is one rename into `.janitor-trash/` on the
same filesystem, fsynced, and only then is the trash emptied. Emptying is an fd-based walk that
never follows a symlink and never crosses into another filesystem. Whatever a killed run left in the
trash is reclaimed by the next one.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import count

from janitor import protocol, reserved
from janitor.mounts import mount_points, mount_points_under
from janitor.scan import Entry, newest_entry_ns

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Retry later, not failure: NFS silly-renamed `.nfsXXXX` files keep a directory busy or non-empty
# until the client holding them open lets go.
_RETRY_LATER = frozenset({errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST})
_sequence = count()


@dataclass(frozen=True, slots=True)
class Trashed:
    """One entry moved into the trash (the step is gone from the managed directory)."""

    entry: Entry
    trash_name: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """One doomed entry left in place this pass, and why (it will be looked at again)."""

    entry: Entry
    why: str
    # True when an operation failed (permission, no space, an unwritable audit log), not merely
    # postponed because the step moved on: `janitor sweep` reports it on stderr and exits 5.
    failed: bool = False
    # The rename found no trash directory (removed by hand): get a new one and try again.
    trash_gone: bool = False


@dataclass(slots=True)
class ReclaimStats:
    bytes: int = 0
    files: int = 0
    directories: int = 0
    # Trash entries that could not be finished this time (busy, permission, another mount).
    pending: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, other: ReclaimStats) -> None:
        self.bytes += other.bytes
        self.files += other.files
        self.directories += other.directories
        self.pending.extend(other.pending)
        self.problems.extend(other.problems)


def freed_by(st: os.stat_result) -> int:
    """Bytes of disk that removing this inode frees (a hard-linked file frees nothing yet)."""
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        return 0
    return st.st_blocks * 512


_TRASH_REFUSED = "move it away by hand (look inside first: it should hold only trashed steps)"


def open_trash(dir_fd: int, home_mount: int | None, *, create: bool) -> int | None:
    """Open (creating if asked) the managed directory's trash; None if absent and not created.

    The trash is verified on its fd before anything is renamed into or reclaimed from it: a
    directory of this janitor's user on the managed directory's own mount (a bind mount of an
    outside directory has the same st_dev, and reclaiming "leftovers" would empty it). Anything
    else raises UnsafeObjectError, and nothing in that directory is deleted.
    """
    if create:
        try:
            os.mkdir(protocol.TRASH_DIR, 0o700, dir_fd=dir_fd)
            os.fsync(dir_fd)
        except FileExistsError:
            pass
    try:
        fd = reserved.open_reserved(dir_fd, protocol.TRASH_DIR, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise reserved.open_error(exc, protocol.TRASH_DIR, _TRASH_REFUSED) from None
    try:
        reserved.check_directory(fd, protocol.TRASH_DIR, home_mount, action=_TRASH_REFUSED)
    except BaseException:
        os.close(fd)
        raise
    return fd


def trash_still_valid(dir_fd: int, trash_fd: int) -> bool:
    """Whether an open trash fd is still the managed directory's trash: not removed (a removed
    directory has no links) and not replaced (the name still leads to the same inode)."""
    try:
        held = os.fstat(trash_fd)
        named = os.stat(protocol.TRASH_DIR, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def trash_name(entry: Entry) -> str:
    """A unique trash name that never matches `step_*` and still says what it was."""
    what = "staging" if entry.number is None else str(entry.number)
    return f"{what}.{time.time_ns()}.{os.getpid()}.{next(_sequence)}"


def move_to_trash(dir_fd: int, dir_path: str, trash_fd: int, entry: Entry,
                  mounts: tuple[str, ...]) -> Trashed | Skipped:
    """Rename one doomed entry into the trash if it is still exactly what the plan judged.

    The entry must still be a real directory with the same inode, device and change time as when
    it was scanned: a step rewritten, replaced or swapped for a symlink since then is left alone.
    It is looked at through its own fd (opened without following a symlink), so the checks and
    the listing of its children see one object. A mount on or inside it keeps it whole.
    """
    try:
        fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return Skipped(entry, "already gone")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return Skipped(entry, "replaced since the scan")
        return Skipped(entry, f"unreadable ({exc.strerror}); retried next pass", failed=True)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            return Skipped(entry, "replaced since the scan")
        # A shard rewritten in place changes only itself: look at the children too.
        newest = newest_entry_ns(fd)
    except OSError as exc:
        return Skipped(entry, f"unreadable ({exc.strerror}); retried next pass", failed=True)
    finally:
        os.close(fd)
    if max(st.st_mtime_ns, st.st_ctime_ns, newest) > entry.changed_ns:
        return Skipped(entry, "changed since the scan")
    inside = _mount_points_at_or_inside(dir_path, entry.name, mounts)
    if inside:
        return Skipped(entry, f"is or holds a mount point ({protocol.printable(inside[0])}); "
                       "unmount it first", failed=True)
    name = trash_name(entry)
    try:
        os.rename(entry.name, name, src_dir_fd=dir_fd, dst_dir_fd=trash_fd)
    except FileNotFoundError:
        if _exists(dir_fd, entry.name):
            # The step is still there, so what vanished is the trash (removed by hand): a
            # failure to retry with a new trash, never "already gone".
            return Skipped(entry, f"{protocol.TRASH_DIR} vanished (removed by hand?); "
                           "retried with a new one", failed=True, trash_gone=True)
        return Skipped(entry, "already gone")
    except OSError as exc:
        # One step the janitor cannot move (a directory it may not write: rename must update its
        # '..'; no space to grow the trash) stays whole and is retried next pass; the other doomed
        # steps of the pass still go.
        return Skipped(entry, f"cannot move into the trash ({exc.strerror}); retried next pass",
                       failed=True)
    return Trashed(entry, name)


def _mount_points_at_or_inside(dir_path: str, name: str, mounts: tuple[str, ...]) -> list[str]:
    """Mount points on or inside the step `name` of `dir_path` (just opened as a real dir).

    Such a mount has `/<name>` in its path, since `name` is not a symlink: when no mount point
    does (nearly always), skip resolving the path, which costs an lstat per path component per
    step and was half of a catch-up pass over 100,000 steps.
    """
    needle = f"/{name}"
    if not any(needle in point for point in mounts):
        return []
    step = os.path.realpath(os.path.join(dir_path, name))
    return [point for point in mounts if point == step] + mount_points_under(step, mounts)


def sync_directories(*fds: int) -> None:
    """Make renames durable: fsync both directories a rename touched."""
    for fd in fds:
        os.fsync(fd)


def trash_entries(trash_fd: int) -> list[str]:
    with os.scandir(trash_fd) as listing:
        return sorted(item.name for item in listing)


def reclaim(trash_fd: int, names: list[str] | None = None, *, workers: int = 1) -> ReclaimStats:
    """Remove trash entries (all of them by default), counting what was freed.

    An entry that cannot be finished now (busy NFS files, permissions, a mount inside) stays in the
    trash, listed in `pending`, and is tried again by the next reclaim.

    With `workers` > 1 the subdirectories of each entry are removed concurrently by a thread pool
    (os.unlink releases the GIL). That pays on network filesystems (NFS, Lustre), where every
    unlink is a round trip to the server; on a local disk expect little. The walk is the same
    fd-based one: no symlink followed, no mount point crossed.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dev = os.fstat(trash_fd).st_dev
    stats = ReclaimStats()
    wanted = trash_entries(trash_fd) if names is None else names
    todo = _without_mounts(trash_fd, wanted, stats)
    if workers == 1:
        for name in todo:
            remove_entry(trash_fd, name, dev, stats)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="janitor-reclaim") as pool:
            for name in todo:
                _remove_entry_parallel(pool, trash_fd, name, dev, stats)
    for name in wanted:
        if _exists(trash_fd, name):
            stats.pending.append(protocol.printable(name))
    return stats


def _without_mounts(trash_fd: int, names: list[str], stats: ReclaimStats) -> list[str]:
    """The entries with no mount point inside. The walk never crosses into another filesystem
    (st_dev), but a bind mount of the same filesystem made inside a step after it was trashed
    would look like a plain directory: the kernel's mount table is the only way to tell."""
    try:
        trash_path = os.readlink(f"/proc/self/fd/{trash_fd}")
    except OSError:
        return names  # no /proc: the st_dev check still keeps other filesystems out
    points = mount_points()
    if not any(point.startswith(os.path.join(trash_path, "")) for point in points):
        return names
    kept = []
    for name in names:
        inside = mount_points_under(os.path.join(trash_path, name), points)
        if inside:
            stats.problems.append(f"{protocol.printable(name)}: holds a mount point "
                                  f"({protocol.printable(inside[0])}); unmount it first")
        else:
            kept.append(name)
    return kept


def _remove_entry_parallel(pool: ThreadPoolExecutor, parent_fd: int, name: str, dev: int,
                           stats: ReclaimStats) -> None:
    """remove_entry, with each top-level subdirectory removed by a pool worker."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(parent_fd, name, st, stats)
        return
    fd = _open_child_dir(parent_fd, name, dev, stats)
    if fd is None:
        return
    jobs: list[tuple[Future[None], ReclaimStats]] = []
    try:
        for child in _unlink_files(fd, dev, stats):
            child_stats = ReclaimStats()  # one per worker: no shared mutable state
            jobs.append((pool.submit(_remove_tree, fd, child, dev, child_stats), child_stats))
    except BaseException:
        wait([job for job, _ in jobs])
        os.close(fd)
        raise
    # Never close `fd` while a worker may still open names relative to it: a reused fd number
    # would point the walk at another directory.
    wait([job for job, _ in jobs])
    failed = next((job.exception() for job, _ in jobs if job.exception() is not None), None)
    if failed is not None:
        os.close(fd)
        raise failed
    for _, child_stats in jobs:
        stats.add(child_stats)
    _remove_directory(fd, parent_fd, name, stats)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def remove_entry(parent_fd: int, name: str, dev: int, stats: ReclaimStats) -> None:
    """Remove `name` under `parent_fd` entirely, without following symlinks or leaving `dev`."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return  # already done (by an earlier, killed run)
    if stat.S_ISDIR(st.st_mode):
        _remove_tree(parent_fd, name, dev, stats)
    else:
        _unlink(parent_fd, name, st, stats)


def _attempt(remove: Callable[..., None], name: str, dir_fd: int, stats: ReclaimStats) -> bool:
    """One unlink or rmdir of `name`: True if it happened; gone already is done, a failure noted."""
    try:
        remove(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        _note_failure(stats, name, exc)
        return False
    return True


def _unlink(dir_fd: int, name: str, st: os.stat_result, stats: ReclaimStats) -> None:
    if _attempt(os.unlink, name, dir_fd, stats):
        stats.bytes += freed_by(st)
        stats.files += 1


def _note_failure(stats: ReclaimStats, name: str, exc: OSError) -> None:
    # Busy or non-empty is expected and retried silently (the entry shows as pending); anything
    # else is worth a line in the log.
    if exc.errno not in _RETRY_LATER:
        stats.problems.append(f"{protocol.printable(name)}: {exc.strerror}")


@dataclass(slots=True)
class _Frame:
    fd: int
    parent_fd: int
    name: str
    subdirs: list[str]


def _remove_tree(parent_fd: int, name: str, dev: int, stats: ReclaimStats) -> None:
    """Iterative fd-based rmtree: a stack of open directories, deepest last, no recursion."""
    fd = _open_child_dir(parent_fd, name, dev, stats)
    if fd is None:
        return
    stack = [_Frame(fd, parent_fd, name, _unlink_files(fd, dev, stats))]
    while stack:
        frame = stack[-1]
        if frame.subdirs:
            child = frame.subdirs.pop()
            child_fd = _open_child_dir(frame.fd, child, dev, stats)
            if child_fd is not None:
                stack.append(_Frame(child_fd, frame.fd, child,
                                    _unlink_files(child_fd, dev, stats)))
            continue
        stack.pop()
        _remove_directory(frame.fd, frame.parent_fd, frame.name, stats)


def _remove_directory(fd: int, parent_fd: int, name: str, stats: ReclaimStats) -> None:
    """Close the emptied directory `fd` and rmdir it (`name` under `parent_fd`)."""
    st = os.fstat(fd)
    os.close(fd)
    if _attempt(os.rmdir, name, parent_fd, stats):
        stats.bytes += freed_by(st)
        stats.directories += 1


def _open_child_dir(parent_fd: int, name: str, dev: int, stats: ReclaimStats) -> int | None:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a symlink or file: unlink it
            _unlink(parent_fd, name, os.stat(name, dir_fd=parent_fd, follow_symlinks=False),
                    stats)
        else:
            _note_failure(stats, name, exc)
        return None
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        stats.problems.append(f"{protocol.printable(name)}: a mount point, not crossed")
        return None
    return fd


def _unlink_files(fd: int, dev: int, stats: ReclaimStats) -> list[str]:
    """Unlink every non-directory in `fd`; return the subdirectories still to descend into."""
    subdirs: list[str] = []
    with os.scandir(fd) as listing:
        items = list(listing)  # list first: unlinking while reading a directory may skip entries
    for item in items:
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            _unlink(fd, item.name, st, stats)
        elif st.st_dev != dev:
            stats.problems.append(f"{protocol.printable(item.name)}: a mount point, not crossed")
        else:
            subdirs.append(item.name)
    return subdirs
