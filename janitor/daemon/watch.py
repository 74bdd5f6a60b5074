"""Turn filesystem events into "look at this directory again soon", and nothing more.

Inotify mode uses watchdog's inotify observer, one non-recursive watch per directory (the roots,
the directories on the way down, the managed directories), so watches grow with streams, never with
shard files. With `--progress receiver-ready` a few step directories are watched too, for their
`.receiver_ready` sentinel alone (see `Target`). Two adjustments to watchdog, both at its
documented extension points (emitter class, watch group): an unpaired IN_MOVED_FROM (a step renamed
into the trash, which is not watched) must not hold back later events for the move grouper's 0.5 s,
and a kernel queue overflow must reach us (every directory is then rescanned). Handlers only record
which directory is dirty and the name of the child that changed (inotify reports names, so a pass
reads that child again, not the whole directory), and wake the loop; an exception in a watchdog
handler would kill its thread silently, so they catch everything.

Poll mode, for network filesystems where inotify cannot see other hosts' writes, is the daemon's
own cheap stat of each managed directory and the files named in it (see `Signature`), and of each
directory discovery looked at on the way down (`paths.Stamp`), not watchdog's PollingObserver.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

from janitor import protocol

log = structlog.get_logger("janitor.watch")

# Atomic publishes arrive as renames (moved events); in-place marker writes as the close that
# ends them (IN_CLOSE_WRITE). No IN_MODIFY or IN_ATTRIB (FileModifiedEvent): each write and each
# utime or chmod would be one more event, three threads and a pass, for nothing a pass needs: a
# marker is read only once written and closed, and every pass reads every marker again anyway.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileCreatedEvent, FileDeletedEvent,
    FileMovedEvent, FileClosedEvent,
]

# A watch inside a step directory looks only for a sentinel appearing (created or renamed in):
# a shard written there must not wake the loop, and IN_MODIFY would fire on every write.
SENTINEL_EVENT_FILTER: list[type[FileSystemEvent]] = [FileCreatedEvent, FileMovedEvent]

# (the directory to mark dirty, the name of its child that changed, or None: unknown, look at
# all of it)
OnDirty = Callable[[str, str | None], None]


@dataclass(frozen=True, slots=True)
class Target:
    """What an event in a watched directory means: `dirty` is marked dirty, and with `names` only
    events on an entry of one of those names count (a step watched for its `.receiver_ready`);
    `child` is then the name in `dirty` that changed (that step). Without `names`, the changed
    child is the name the event reports."""

    dirty: str
    names: frozenset[str] | None = None
    child: str | None = None


class _ImmediateGrouper(InotifyMoveEventGrouper):
    """Pass every event on at once: we only mark directories dirty, so we need no move pairs."""

    delay = 0.0


class _WatchGroup(InotifyWatchGroup):
    """A watch group that hands events on without delay and reports queue overflows."""

    on_overflow: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._move_event_grouper = _ImmediateGrouper()
        super().__post_init__()

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        callback = type(self).on_overflow
        if callback is not None:
            callback()


class _Emitter(InotifyEmitter):
    group_class: type[_WatchGroup] = _WatchGroup

    def on_thread_start(self) -> None:
        self._inotify = self.group_class(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=False,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=False,
        )


class _Observer(InotifyObserver):
    """watchdog's InotifyObserver (its own inotify instance) with our emitter class."""

    def __init__(self, emitter_class: type[_Emitter], timeout: float) -> None:
        # Our own reader from the start (watchdog 7.1.1 would allocate one at the first watch;
        # earlier releases share one per process): the same attribute name either way.
        reader = InotifyFD()
        reader.daemon = True
        reader.start()
        self._inotify_fd = reader
        BaseObserver.__init__(self, emitter_class, timeout=timeout, inotify_fd=reader)

    def reader_alive(self) -> bool:
        reader = self._inotify_fd
        return reader is not None and bool(reader.is_alive())


class _DirHandler(FileSystemEventHandler):
    def __init__(self, target: Target, on_dirty: OnDirty, watched: str) -> None:
        self.target = target
        self.on_dirty = on_dirty
        self.watched = watched

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            target = self.target
            if target.names is not None:
                if _entry_name(event.src_path) in target.names \
                        or _entry_name(event.dest_path) in target.names:
                    self.on_dirty(target.dirty, target.child)
                return
            for path in (event.src_path, event.dest_path):
                if path:
                    self.on_dirty(target.dirty, self._child(os.fsdecode(path)))
        except Exception:  # a raise here would silently kill watchdog's dispatch thread
            log.exception("watch_handler_failed", directory=self.target.dirty)

    def _child(self, path: str) -> str | None:
        """The name of the watched directory's child an event is about; None for an event on
        the directory itself (or one this watch cannot place): then all of it is looked at."""
        parent, name = os.path.split(path)
        return name if name and parent == self.watched else None


def _entry_name(path: str | bytes) -> str:
    return os.path.basename(os.fsdecode(path)) if path else ""


@dataclass(frozen=True, slots=True)
class Armed:
    """What one `watch` call changed: the directories newly watched, and those that could not be
    (path -> one line: the path, printable, and why)."""

    added: tuple[str, ...]
    failed: dict[str, str]


class InotifyWatcher:
    """Keeps exactly one non-recursive inotify watch on each directory it is given."""

    def __init__(self, on_dirty: OnDirty, on_overflow: Callable[[], None]) -> None:
        self._on_dirty = on_dirty
        group = type("_Group", (_WatchGroup,), {"on_overflow": staticmethod(on_overflow)})
        self._emitter_class = type("_BoundEmitter", (_Emitter,), {"group_class": group})
        self._observer = self._new_observer()
        self._watches: dict[str, Any] = {}
        self._targets: dict[str, Target] = {}
        # (st_dev, st_ino) of each watched path when its watch was added: an inotify watch follows
        # the inode, so a path renamed over or deleted and re-created needs a new watch.
        self._identities: dict[str, tuple[int, int] | None] = {}
        self._lock = threading.Lock()

    def _new_observer(self) -> _Observer:
        observer = _Observer(self._emitter_class, timeout=0.5)
        observer.daemon = True
        observer.start()
        return observer

    @property
    def count(self) -> int:
        return len(self._watches)

    def watch(self, wanted: Mapping[str, Target]) -> Armed:
        """Watch exactly the directories in `wanted` from now on, each for its target."""
        added: list[str] = []
        failed: dict[str, str] = {}
        with self._lock:
            for path in [p for p in self._watches if wanted.get(p) != self._targets.get(p)
                         or self._replaced(p)]:
                self._unschedule(path)
            for path in sorted(set(wanted) - set(self._watches)):
                target = wanted[path]
                # Identity first: a replacement between the stat and the watch shows as a
                # mismatch next time (one needless re-watch), never as a watch on a stale inode.
                identity = _identity(path)
                try:
                    self._watches[path] = self._observer.schedule(
                        _DirHandler(target, self._on_dirty, path), path, recursive=False,
                        event_filter=EVENT_FILTER if target.names is None
                        else SENTINEL_EVENT_FILTER)
                except OSError as exc:
                    failed[path] = f"{protocol.printable(path)}: {exc.strerror or exc}"
                else:
                    self._identities[path] = identity
                    self._targets[path] = target
                    added.append(path)
        return Armed(tuple(added), failed)

    def _replaced(self, path: str) -> bool:
        return _identity(path) != self._identities.get(path)

    def _unschedule(self, path: str) -> None:
        watch = self._watches.pop(path)
        self._identities.pop(path, None)
        self._targets.pop(path, None)
        # KeyError/OSError: the directory is gone and the kernel dropped the watch already.
        with contextlib.suppress(KeyError, OSError):
            self._observer.unschedule(watch)

    def dead(self) -> str | None:
        """Why watching stopped working (observer or an emitter thread died), or None."""
        if not self._observer.is_alive():
            return "inotify observer thread died"
        if not self._observer.reader_alive():
            return "inotify reader thread died"
        for emitter in list(self._observer.emitters):
            # watchdog stops an emitter whose directory was deleted: that is no death, the next
            # watch() drops or replaces it.
            if not emitter.is_alive() and not self._replaced(emitter.watch.path):
                return f"inotify emitter for {protocol.printable(emitter.watch.path)} died"
        return None

    def rearm(self) -> None:
        """Start over with a fresh observer watching the same directories."""
        with self._lock:
            targets = dict(self._targets)
            self._stop_observer()
            self._watches.clear()
            self._identities.clear()
            self._targets.clear()
            self._observer = self._new_observer()
        self.watch(targets)

    def _stop_observer(self) -> None:
        try:
            self._observer.stop()
            self._observer.join(timeout=1.0)
        except Exception:  # a broken observer must not stop us replacing it
            log.warning("observer_stop_failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._stop_observer()
            self._watches.clear()
            self._identities.clear()
            self._targets.clear()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class Signature:
    """What polling compares: the directory's own times plus the stat of each file named inside.

    A step created, renamed or removed changes the directory's mtime; a marker rewritten in place
    changes only the marker's, and a sentinel created inside a step only the step's, so those are
    statted by name (names from the last scan: consumer markers, `step_N/.receiver_ready`).
    A marker replaced by rename is another inode, even within one tick of the clock.
    """

    directory: tuple[int, int, int]
    files: tuple[tuple[str, int, int, int], ...]


def signature(path: str, names: Iterable[str]) -> Signature | None:
    """Stat `path` and the files `names` (relative to it) without listing anything (cheap even
    with 100,000 steps)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    files = []
    for name in sorted(names):
        try:
            fst = os.stat(os.path.join(path, name), follow_symlinks=False)
            files.append((name, fst.st_ino, fst.st_mtime_ns, fst.st_size))
        except OSError:
            files.append((name, -1, -1, -1))
    return Signature((st.st_ino, st.st_mtime_ns, st.st_ctime_ns), tuple(files))
