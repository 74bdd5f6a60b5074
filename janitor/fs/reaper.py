"""Execute a plan: move doomed entries into the trash atomically, then reclaim the trash's bytes.

A step is either whole or gone (invariant 7): deletion is one rename into `.janitor-trash/` on the
same filesystem, fsynced, and only then is the trash emptied. Emptying is an fd-based walk that
never follows a symlink and never crosses into another filesystem. Whatever a killed run left in the
trash is reclaimed by the next one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import count

from janitor import protocol
from janitor.fs import priority, reserved, walk
from janitor.fs.mounts import mount_points, mount_points_under
from janitor.fs.scan import newest_entry_ns
from janitor.fs.sizes import freed_by
from janitor.model import Entry

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
    # Trash entries whose reclaim failed (not merely busy): printable name -> why, in words.
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, other: ReclaimStats) -> None:
        self.bytes += other.bytes
        self.files += other.files
        self.directories += other.directories
        self.pending.extend(other.pending)
        self.problems.extend(other.problems)
        self.failed.update(other.failed)


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


def reclaim(trash_fd: int, names: list[str] | None = None, *, workers: int = 1,
            idle: bool = False) -> ReclaimStats:
    """Remove trash entries (all of them by default), counting what was freed.

    An entry that cannot be finished now (busy NFS files, permissions, a mount inside, a tree
    swapped mid-walk, no fd left) stays in the trash, listed in `pending` (and, unless merely
    busy, in `failed` with the reason), and is tried again by a later reclaim; it never stops
    the reclaim of the other entries. The walk is janitor.fs.walk's: bounded fds at any depth, no
    symlink followed, no mount point crossed.

    With `workers` > 1 the subdirectories of each entry are removed concurrently by a thread pool
    (os.unlink releases the GIL). That pays on network filesystems (NFS, Lustre), where every
    unlink is a round trip to the server; on a local disk expect little. The fd budget is shared
    out among the workers. With `idle` each worker lowers itself to idle CPU and I/O priority
    as it starts (the daemon's reclaim thread is idle already; `janitor sweep` stays as it is).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dev = os.fstat(trash_fd).st_dev
    stats = ReclaimStats()
    wanted = trash_entries(trash_fd) if names is None else names
    todo = _without_mounts(trash_fd, wanted, stats)
    if workers == 1:
        for name in todo:
            _reclaim_entry(trash_fd, name, dev, stats, None)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="janitor-reclaim",
                                initializer=_idle_worker if idle else None) as pool:
            parallel = _Parallel(pool, max(2, walk.MAX_FDS // workers))
            for name in todo:
                _reclaim_entry(trash_fd, name, dev, stats, parallel)
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
        entry = os.path.join(trash_path, name)
        # A mount ON the entry itself counts too: a bind mount of an outside directory at
        # `.janitor-trash/<entry>` would otherwise be walked and emptied.
        inside = [p for p in points if p == entry] + mount_points_under(entry, points)
        if inside:
            why = f"holds a mount point ({protocol.printable(inside[0])}); unmount it first"
            stats.problems.append(f"{protocol.printable(name)}: {why}")
            stats.failed[protocol.printable(name)] = why
        else:
            kept.append(name)
    return kept


def _idle_worker() -> None:
    """The pool's initializer: a worker inherits its creator's priority on Linux, but says so
    itself, so it is idle whichever thread makes the pool."""
    priority.idle_this_thread()
    priority.label_this_thread()  # after: a labelled thread is an idle one


@dataclass(frozen=True, slots=True)
class _Parallel:
    pool: ThreadPoolExecutor
    fds_each: int  # each worker's share of the fd budget


def _reclaim_entry(trash_fd: int, name: str, dev: int, stats: ReclaimStats,
                   parallel: _Parallel | None) -> None:
    """Reclaim one trash entry; whatever fails is recorded in `stats`, never raised."""
    errors = _EntryErrors(name)
    entry_stats = ReclaimStats()
    try:
        if parallel is None:
            _remove(trash_fd, name, dev, entry_stats, errors, walk.MAX_FDS)
        else:
            _remove_entry_parallel(parallel, trash_fd, name, dev, entry_stats, errors)
    except OSError as exc:  # the walk stopped: a swapped tree, no fd left, EIO
        errors.stopped(exc)
    stats.add(entry_stats)
    errors.report(stats)


class _EntryErrors:
    """What went wrong reclaiming one trash entry: the walk's error policy (onexc) and the
    failures of unlink and rmdir. Busy or non-empty is expected and only leaves the entry
    pending; anything else is a failure with a reason. Thread-safe (parallel reclaim)."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.first: str | None = None
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, exc: OSError, where: str) -> None:
        if exc.errno in _OUT_OF_RESOURCES:
            raise exc  # nothing further in this entry can work now: stop it, go on to the next
        self.note(exc, where)

    def note(self, exc: OSError, where: str) -> None:
        if exc.errno in _RETRY_LATER:
            return
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = f"{_words(exc)} at {self._inside(where)}"

    def stopped(self, exc: OSError) -> None:
        where = exc.where if isinstance(exc, walk.TreeSwappedError) else self.entry
        with self._lock:
            self.count += 1
            self.first = f"{_words(exc)} at {self._inside(where)}; stopped"

    def report(self, stats: ReclaimStats) -> None:
        if self.first is None:
            return
        name = protocol.printable(self.entry)
        more = f" (and {self.count - 1} more)" if self.count > 1 else ""
        stats.problems.append(f"{name}: {self.first}{more}")
        stats.failed[name] = self.first + more

    def _inside(self, where: str) -> str:
        """`where` relative to the entry, for the message."""
        head = self.entry + "/"
        if where.startswith(head):
            return protocol.printable(where[len(head):])
        return "its top" if where == self.entry else protocol.printable(where)


_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def _words(exc: OSError) -> str:
    """'Permission denied' -> 'permission denied' (it goes mid-sentence)."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _remove(parent_fd: int, name: str, dev: int, stats: ReclaimStats, errors: _EntryErrors,
            max_fds: int) -> None:
    """Remove `name` under `parent_fd` entirely: unlink each non-directory, rmdir each directory
    once emptied. Directories of ours with modes that block the walk are made u+rwx first: they
    are in the trash, doomed, and a janitor that is not root could otherwise never reclaim them
    (0500 read-only copies are common)."""
    visits = walk.walk(parent_fd, name, onexc=errors, dev=dev, max_fds=max_fds, own_modes=True)
    with contextlib.closing(visits):  # its fds are closed here, whatever happens
        for visit in visits:
            if visit.kind == "entry":
                if _attempt(os.unlink, visit.name, visit.fd, errors):
                    stats.bytes += freed_by(visit.st)
                    stats.files += 1
            elif visit.kind == "leave" and _attempt(os.rmdir, visit.name, visit.fd, errors):
                stats.bytes += freed_by(visit.st)
                stats.directories += 1


def remove_entry(parent_fd: int, name: str, dev: int, stats: ReclaimStats) -> None:
    """Remove `name` under `parent_fd` entirely, without following symlinks or leaving `dev`;
    a failure is recorded in `stats` (problems, failed), never raised."""
    _reclaim_entry(parent_fd, name, dev, stats, None)


def _remove_entry_parallel(parallel: _Parallel, parent_fd: int, name: str, dev: int,
                           stats: ReclaimStats, errors: _EntryErrors) -> None:
    """_remove, with each top-level subdirectory removed by a pool worker (its own walk)."""
    fd = walk.open_directory(parent_fd, name, dev=dev, own_modes=True)
    if fd is None:  # gone, or not a directory: nothing to share out
        _remove(parent_fd, name, dev, stats, errors, walk.MAX_FDS)
        return
    jobs: list[tuple[Future[None], ReclaimStats]] = []
    try:
        with os.scandir(fd) as listing:
            items = list(listing)
        for item in items:
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.note(exc, f"{name}/{item.name}")
                continue
            if not stat.S_ISDIR(st.st_mode):
                if _attempt(os.unlink, item.name, fd, errors):
                    stats.bytes += freed_by(st)
                    stats.files += 1
                continue
            child_stats = ReclaimStats()  # one per worker: no shared mutable state
            jobs.append((parallel.pool.submit(_remove_child, fd, item.name, dev, child_stats,
                                              errors, parallel.fds_each), child_stats))
    finally:
        # Never close `fd` while a worker may still open names relative to it: a reused fd
        # number would point the walk at another directory.
        wait([job for job, _ in jobs])
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    for _, child_stats in jobs:
        stats.add(child_stats)
    if _attempt(os.rmdir, name, parent_fd, errors):
        stats.bytes += freed_by(st)
        stats.directories += 1


def _remove_child(parent_fd: int, name: str, dev: int, stats: ReclaimStats,
                  errors: _EntryErrors, max_fds: int) -> None:
    try:
        _remove(parent_fd, name, dev, stats, errors, max_fds)
    except OSError as exc:  # this subtree stopped; the entry stays and is retried as a whole
        errors.stopped(exc)


def trash_step(trash_name: str) -> int | None:
    """The step number a trash name says it was (see trash_name); None for staging or foreign."""
    head = trash_name.split(".", 1)[0]
    return int(head) if head.isdigit() and head.isascii() else None


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _attempt(remove: Callable[..., None], name: str, dir_fd: int, errors: _EntryErrors) -> bool:
    """One unlink or rmdir of `name`: True if it happened; gone already is done, a failure noted."""
    try:
        remove(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        errors.note(exc, name)
        return False
    return True
