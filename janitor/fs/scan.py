"""Read one managed directory into an immutable Snapshot, relative to an open directory fd.

The scan never follows a symlink and never looks past the directory's own filesystem: an entry that
is a symlink, not a directory, non-canonical or on another device is *foreign* and is reported,
never touched. Every decision the janitor makes comes from a fresh Snapshot.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time
from collections.abc import Iterator

from janitor import protocol
from janitor.fs import reserved
from janitor.fs.pointers import open_problem, read_best, read_depends, read_tracker
from janitor.fs.sizes import newest_in_tree
from janitor.layouts import Layout
from janitor.model import TRASH as TRASH_ITEM
from janitor.model import Consumer, Entry, Foreign, Item, Pointer, ScanOptions, Snapshot, Trash
from janitor.protocol import Invalid


def open_directory(path: str) -> int:
    """Open `path` as a directory fd without following a final symlink."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def scan(dir_fd: int, path: str, options: ScanOptions) -> Snapshot:
    """Read the managed directory open as `dir_fd` (its display path is `path`)."""
    dev = os.fstat(dir_fd).st_dev
    home_mount = reserved.mount_id(dir_fd)
    scanned_ns = time.time_ns()
    entries: list[Entry] = []
    foreign: list[Foreign] = []
    consumers: list[Consumer] = []
    pointers: list[Pointer] = []
    trash_present = False
    with os.scandir(dir_fd) as listing:
        names = [item.name for item in listing]
    for name in names:
        item = classify(dir_fd, dev, home_mount, name, options)
        if isinstance(item, Entry):
            entries.append(item)
        elif isinstance(item, Foreign):
            foreign.append(item)
        elif isinstance(item, Consumer):
            consumers.append(item)
        elif isinstance(item, Pointer):
            pointers.append(item)
        elif isinstance(item, Trash):
            trash_present = True
    entries.sort(key=lambda e: (e.number is None, e.number or 0, e.name))
    consumers.sort(key=lambda c: c.filename)
    foreign.sort(key=lambda f: f.name)
    pointers.sort(key=lambda p: p.filename)
    complete = [e for e in entries if e.complete and e.number is not None]
    best = read_best(dir_fd, complete[-1].name, options) if complete else None
    if best is not None:
        pointers.append(best)
    return Snapshot(path, dev, scanned_ns, tuple(entries), tuple(foreign), tuple(consumers),
                    trash_present, tuple(pointers))


def classify(dir_fd: int, dev: int, home_mount: int | None, name: str,
             options: ScanOptions) -> Item:
    """What the child `name` of the managed directory open as `dir_fd` is now: a step or
    staging directory, a foreign entry, a consumer marker, the trash, or None (nothing the
    janitor decides about, or gone). `scan` is this for every name; the daemon calls it for the
    names an event reported."""
    if name == protocol.TRASH_DIR:
        return TRASH_ITEM
    layout = options.layout
    number = layout.parse(name)
    if number is not None:
        if isinstance(number, Invalid):
            return Foreign(name, number.reason)
        return _classify_step(dir_fd, dev, name, number, options)
    near = layout.near_miss(name)
    if near is not None:
        # `STEP_3`: almost a step, surely meant as one; reported so a typo is not silent.
        return Foreign(name, near)
    if protocol.is_staging_name(name) or layout.is_temporary(name):
        return _read_staging(dir_fd, dev, name)
    if name in layout.reserved:
        return read_tracker(dir_fd, name, options, home_mount)
    consumer = protocol.consumer_of(name)
    if isinstance(consumer, Invalid):
        return Consumer(name, name, None, consumer.reason, 0)
    if consumer is not None:
        return read_consumer(dir_fd, name, consumer, home_mount)
    return None


def scan_items(dir_fd: int, options: ScanOptions) -> Iterator[tuple[str, Item, bool]]:
    """Every child of the managed directory, as (name, what it is, verified), at about one stat
    per complete step: the daemon's index is built from this at start and after an overflow.

    A name the listing says is a directory (d_type, no stat), that parses as a step and holds a
    completion marker is taken as a complete step without its own lstat: its device is taken to
    be the directory's, its inode the listing's, its change time the marker's (a lower bound).
    Those three facts decide nothing until the entry is read again (`classify`): the index reads
    again every name its decisions rest on, and every candidate, before deciding (so `verified`
    is False for these). Everything else is classified exactly as `scan` does.
    """
    dev = os.fstat(dir_fd).st_dev
    home_mount = reserved.mount_id(dir_fd)
    with os.scandir(dir_fd) as listing:
        children = [(item.name, item.inode(), item.is_dir(follow_symlinks=False))
                    for item in listing]
    markers = options.complete_markers
    quick = not options.receiver_ready and bool(markers)
    layout = options.layout
    for name, ino, is_dir in children:
        if quick and is_dir and layout.claims(name):
            entry = _quick_step(dir_fd, dev, name, ino, markers, layout)
            if entry is not None:
                yield name, entry, False
                continue
        yield name, classify(dir_fd, dev, home_mount, name, options), True


def _quick_step(dir_fd: int, dev: int, name: str, ino: int, markers: tuple[str, ...],
                layout: Layout) -> Entry | None:
    """A complete step from one lookup of its completion marker, or None: read it in full."""
    number = layout.parse(name)
    if number is None or isinstance(number, Invalid):
        return None
    for marker in markers:
        try:
            mst = _lstat_inside(dir_fd, name, marker)
        except OSError:
            return None
        if mst is not None and stat.S_ISREG(mst.st_mode):
            # Its dependencies are read now, not guessed: the kept steps that name others are
            # the ones no pass reads again.
            depends, problem = read_depends(dir_fd, name, layout.depends)
            return Entry(name, number, True, False, max(mst.st_mtime_ns, mst.st_ctime_ns), dev,
                         ino, None, depends, problem)
    return None


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _classify_step(dir_fd: int, dev: int, name: str, number: int,
                   options: ScanOptions) -> Item:
    st = _lstat(dir_fd, name)
    if st is None:
        return None  # vanished between listing and stat: nothing to decide about
    if stat.S_ISLNK(st.st_mode):
        return Foreign(name, "a symlink (never followed)")
    if not stat.S_ISDIR(st.st_mode):
        return Foreign(name, "not a directory")
    if st.st_dev != dev:
        return Foreign(name, "a mount point (another filesystem)")
    try:
        return _read_step(dir_fd, name, number, st, options)
    except PermissionError:
        # Unsure what it holds (a pin? a marker?): never a candidate for deletion.
        return Foreign(name, "unreadable (permission denied)")


def _read_step(dir_fd: int, name: str, number: int, st: os.stat_result,
               options: ScanOptions) -> Entry:
    """A shallow look: the directory, its completion marker, sentinel and dependency files by
    name.

    The pin file and the children's times (a shard rewritten in place) matter only for a step
    the plan would delete, so `deepen` reads them for those alone: a pass over 100,000 steps
    costs two stats a step, not a listing.
    """
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    complete = False
    for marker in options.complete_markers:
        mst = _lstat_inside(dir_fd, name, marker)
        if mst is not None and stat.S_ISREG(mst.st_mode):
            complete = True
            changed = max(changed, mst.st_mtime_ns, mst.st_ctime_ns)
    ready_ns = None
    if options.receiver_ready:
        rst = _lstat_inside(dir_fd, name, protocol.RECEIVER_READY_MARKER)
        if rst is not None and stat.S_ISREG(rst.st_mode):
            ready_ns = rst.st_mtime_ns
    depends, problem = read_depends(dir_fd, name, options.layout.depends)
    entry = Entry(name, number, complete, False, changed, st.st_dev, st.st_ino, ready_ns,
                  depends, problem)
    if not complete:  # incomplete steps are few, and their children show a write in progress
        entry = _deep(dir_fd, entry, options)
    return entry


def deepen(dir_fd: int, snapshot: Snapshot, names: frozenset[str],
           options: ScanOptions) -> Snapshot:
    """The snapshot with the named entries looked at in depth: one listing of each finds the pin
    file, and a shard rewritten in place (open, truncate, write: neither the directory's times
    nor the marker's change) moves the step's change time forward (invariant 4). Re-planning a
    deepened snapshot only ever keeps more."""
    entries: list[Entry] = []
    foreign = list(snapshot.foreign)
    for entry in snapshot.entries:
        if entry.name not in names:
            entries.append(entry)
            continue
        if entry.number is None:
            entries.append(_deep_staging(dir_fd, entry, snapshot.scanned_ns))
            continue
        try:
            entries.append(_deep(dir_fd, entry, options))
        except PermissionError:
            # Unsure what it holds: never a candidate for deletion, as in the shallow scan.
            foreign.append(Foreign(entry.name, "unreadable (permission denied)"))
    return dataclasses.replace(snapshot, entries=tuple(entries), foreign=tuple(foreign))


def _deep_staging(dir_fd: int, entry: Entry, scanned_ns: int) -> Entry:
    """A staging directory about to be swept as abandoned: look at its whole tree first, since a
    writer may be busy deep inside it (DCP writes into subdirectories). Unreadable: in progress."""
    try:
        newest = newest_in_tree(dir_fd, entry.name)
    except OSError:
        newest = scanned_ns
    return dataclasses.replace(entry, changed_ns=max(entry.changed_ns, newest))


def _deep(dir_fd: int, entry: Entry, options: ScanOptions) -> Entry:
    wanted = {*options.complete_markers, options.pin_file}
    newest, found = _list_step(dir_fd, entry.name, wanted)
    return dataclasses.replace(entry, pinned=options.pin_file in found,
                               changed_ns=max(entry.changed_ns, newest))


def _list_step(dir_fd: int, name: str,
               wanted: set[str]) -> tuple[int, dict[str, os.stat_result]]:
    """Newest mtime/ctime among the step's children, and the lstat of each `wanted` child.

    One open, one listing and one lstat per child (the scan's cost at 100,000 steps). A step
    gone or swapped for a symlink since its lstat reads as empty: the rename-time check catches
    the swap. PermissionError propagates: a step we cannot read is never a deletion candidate.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return 0, {}
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return 0, {}
        raise
    newest = 0
    found: dict[str, os.stat_result] = {}
    try:
        with os.scandir(fd) as listing:
            for item in listing:
                try:
                    child = item.stat(follow_symlinks=False)
                except PermissionError:
                    raise  # listable but not searchable: unsure what it holds
                except OSError:
                    continue  # vanished since the listing
                newest = max(newest, child.st_mtime_ns, child.st_ctime_ns)
                if item.name in wanted:
                    found[item.name] = child
        if newest == 0:
            # Empty, or readable but not searchable (no x bit): a lookup inside tells which,
            # raising PermissionError for the latter as a per-file lstat would have.
            _lstat_inside(dir_fd, name, next(iter(wanted)))
    finally:
        os.close(fd)
    return newest, found


def _lstat_inside(dir_fd: int, name: str, child: str) -> os.stat_result | None:
    try:
        return os.stat(f"{name}/{child}", dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def newest_child_ns(dir_fd: int, name: str) -> int:
    """Newest mtime/ctime among a directory's direct children (a write in progress shows here)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return 0  # gone or swapped since the lstat: the rename-time check catches the swap
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return 0
        raise
    try:
        return newest_entry_ns(fd)
    finally:
        os.close(fd)


def newest_entry_ns(fd: int) -> int:
    """Newest mtime/ctime among the direct children of the directory open as `fd`."""
    newest = 0
    with os.scandir(fd) as listing:
        for item in listing:
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def _read_staging(dir_fd: int, dev: int, name: str) -> Entry | None:
    st = _lstat(dir_fd, name)
    if st is None or not stat.S_ISDIR(st.st_mode) or st.st_dev != dev:
        return None  # not ours to sweep: only real staging directories on this filesystem
    try:
        changed = max(st.st_mtime_ns, st.st_ctime_ns, newest_child_ns(dir_fd, name))
    except PermissionError:
        return None
    return Entry(name, None, False, False, changed, st.st_dev, st.st_ino)


def read_consumer(dir_fd: int, filename: str, consumer: str,
                  home_mount: int | None) -> Consumer | None:
    """Read one consumer marker safely, verified after opening (invariant 6): a regular file of
    its own (one link) on the managed directory's mount; never a symlink, never a blocking FIFO.
    Anything else is a marker problem, which halts the directory (invariant 5)."""
    try:
        fd = reserved.open_reserved(dir_fd, filename, os.O_RDONLY)
    except FileNotFoundError:
        # Gone (removed since it was listed, or the name an event reported is gone): a marker
        # removed is a consumer that stopped, exactly as if it had never been listed.
        return None
    except OSError as exc:
        return Consumer(consumer, filename, None, open_problem(exc, filename), 0)
    try:
        try:
            st = reserved.check_file(fd, filename, home_mount, action="")
        except reserved.UnsafeObjectError as exc:
            return Consumer(consumer, filename, None, exc.what, 0)
        data = os.read(fd, protocol.MAX_MARKER_BYTES + 1)
    except OSError as exc:
        return Consumer(consumer, filename, None, f"unreadable ({exc.strerror})", 0)
    finally:
        os.close(fd)
    value = protocol.parse_marker(data, st.st_size)
    if isinstance(value, Invalid):
        return Consumer(consumer, filename, None, value.reason, st.st_mtime_ns, st.st_ctime_ns)
    return Consumer(consumer, filename, value, None, st.st_mtime_ns, st.st_ctime_ns)

