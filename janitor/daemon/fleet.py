"""The managed directories the daemon holds, the directories on the way down to them, and how
each is watched (inotify, or polled where inotify is blind).

Discovery adopts and releases managed directories; the watch set follows what discovery saw;
polling stats what inotify cannot watch. Everything here only *finds* work and marks it in the
DirtySet: passes themselves are the loop's.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from janitor import exitcodes, protocol
from janitor.daemon.config import DaemonConfig, Mode, StartupError
from janitor.daemon.dirty import DirtySet
from janitor.daemon.metrics import Metrics
from janitor.daemon.watch import InotifyWatcher, Signature, Target, signature
from janitor.fs import lock, mounts
from janitor.fs.paths import Discovery, Stamp, directory_stamp, discover, discover_below
from janitor.layouts import searched
from janitor.ops.incremental import TrackedDirectory
from janitor.ops.managed import ManagedDirectory

log = structlog.get_logger("janitor")

# With --progress receiver-ready, the steps above the loaded one whose `.receiver_ready` is watched
# (inotify) or statted at every poll, per managed directory: the lowest half of this many (the
# receiver usually moves one step at a time) and the newest half (a receiver restarted at the
# newest step). Usually the trainer is a handful of steps ahead and all of them are; a stalled
# receiver with thousands of steps piled up above it costs no more than this.
SENTINEL_STEPS = 16
# Per-directory metrics carry a `stream` label; at most this many directories get one (the
# series of a scrape stay bounded whatever the tree holds). Documented in the README.
MAX_STREAMS = 64

MountTable = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Held:
    """A managed directory the daemon holds, and what it last saw there."""

    tracked: TrackedDirectory
    mode: Mode
    markers: tuple[str, ...] = ()
    sentinel_steps: tuple[str, ...] = ()  # step names whose `.receiver_ready` we look out for
    signature: Signature | None = None
    lag: int | None = None
    said: set[str] = field(default_factory=set)  # one-time messages already logged
    fault: str | None = None  # why nothing can be deleted here now (logged when it began)
    stream: str | None = None  # its label on the per-directory metrics (None: over the cap)

    def polled_names(self) -> tuple[str, ...]:
        """The files inside a polled managed directory whose stat the poll compares."""
        inside = (protocol.RECEIVER_READY_MARKER, *self.tracked.managed.options.complete_markers)
        return self.markers + tuple(f"{step}/{name}" for step in self.sentinel_steps
                                    for name in inside)


@dataclass(slots=True)
class Node:
    """A directory discovery looked at (a root, one on the way down, a managed one) and the stamp
    it had just before that look: in poll mode a different stamp means "look at it again"."""

    depth_left: int
    stamp: Stamp
    managed: bool
    subdirs: tuple[str, ...]
    mode: Mode


class Fleet:
    def __init__(self, config: DaemonConfig, metrics: Metrics, dirty: DirtySet) -> None:
        self.config = config
        self.metrics = metrics
        self.dirty = dirty
        self.dirs: dict[str, Held] = {}
        self.tree: dict[str, Node] = {}
        self.root_ids: dict[str, tuple[int, int] | None] = {}
        self.watcher: InotifyWatcher | None = None
        self.beyond: set[str] = set()  # directories with steps below --max-depth (warned)
        # Managed directories found but not held, each logged when its episode began: another
        # janitor holds the lock (waited for with --standby), or it cannot be opened.
        self.standby: dict[str, dict[str, object] | None] = {}
        self.locked: set[str] = set()
        self.unmanageable: set[str] = set()
        self._cap_said = False
        # The layouts whose steps make a directory managed (all of them with --layout auto).
        self._layouts = searched(config.options.layout)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        for held in self.dirs.values():
            held.tracked.close()
        self.dirs.clear()

    # ---- events from the watcher threads ------------------------------------------------

    def on_event(self, path: str, name: str | None) -> None:
        """Called on watchdog threads: record and wake, nothing else. An event in a directory on
        the way down means "look at that part again" (see `look_again`)."""
        if path in self.dirs:
            self.dirty.child(path, name)
        else:
            self.dirty.relook([path])

    # ---- discovery ----------------------------------------------------------------------

    def discover(self, *, at_start: bool) -> list[str]:
        """Discover below every root; returns the managed directories newly adopted."""
        found: list[str] = []
        table = mounts.mount_table()
        old, self.tree = self.tree, {}
        # The managed directories held are not listed again here (100,000 steps would block the
        # loop): their rescans list them, and `replant` looks below what those find.
        skip = frozenset() if at_start else frozenset(self.dirs)
        beyond: set[str] = set()
        for root in self.config.roots:
            self.root_ids[root] = _identity(root)
            discovery = discover(root, self.config.max_depth, skip, self._layouts)
            found.extend(discovery.managed)
            beyond.update(discovery.beyond)
            self._plant(discovery, table, old)
            if at_start and not discovery.managed:
                log.warning("nothing_managed", root=root, max_depth=self.config.max_depth,
                            why="no directory holding step_* or a LOADED_STEP marker within "
                                "--max-depth", action="watching for one to appear")
        self._saw_beyond(beyond, replace=True)
        for path in sorted(skip - set(self.tree)):
            parent = self.tree.get(os.path.dirname(path))
            if parent is not None and path in parent.subdirs:  # still there: keep what we knew
                prefix = path + os.sep
                for known, node in old.items():
                    if known == path or known.startswith(prefix):
                        self.tree.setdefault(known, node)
                found.append(path)
        for path in [p for p, s in self.dirs.items() if p not in found
                     or not s.tracked.managed.still_same()]:
            self._release(path)
        adopted: list[str] = []
        self._forget_unheld(set(found))
        for path in found:
            if path not in self.dirs and self._adopt(path, table, at_start):
                adopted.append(path)
        return adopted

    def _forget_unheld(self, found: set[str]) -> None:
        """A directory no longer found ends its episode (a later one is logged again)."""
        for path in [p for p in self.standby if p not in found]:
            del self.standby[path]
        self.locked &= found
        self.unmanageable &= found
        self.metrics.set_standby(len(self.standby))

    def _plant(self, discovery: Discovery, table: MountTable, old: dict[str, Node]) -> None:
        """Record what discovery looked at. The same directory keeps the mode it had (one whose
        watch failed stays polled), a new one (or one mounted over) gets its filesystem's; under
        two overlapping roots the deeper reach wins."""
        for visit in discovery.visits:
            held = self.tree.get(visit.path)
            if held is not None and held.depth_left > visit.depth_left:
                continue
            before = old.get(visit.path)
            same = before is not None and before.stamp[:2] == visit.stamp[:2]
            mode = before.mode if before is not None and same else \
                self._mode_for(visit.path, table)
            self.tree[visit.path] = Node(visit.depth_left, visit.stamp, visit.managed,
                                         visit.subdirs, mode)

    def look_again(self, paths: set[str]) -> set[str]:
        """Rediscover below the directories on the way down that changed, and only there: each
        is listed again, a subdirectory new to it is discovered down to --max-depth, one gone is
        dropped with everything below it. Returns the managed directories newly adopted.

        A managed directory is never listed here: its changes are its reconcile's, and one that
        could not be adopted (locked by another janitor) waits for the rescan.
        """
        adopted: set[str] = set()
        table: MountTable | None = None
        for path in sorted(paths):  # a parent before its children
            node = self.tree.get(path)
            if node is None or node.managed or path in self.dirs:
                continue  # dropped with a parent already, or a stale watch's last event
            table = mounts.mount_table() if table is None else table
            discovery = discover_below(path, node.depth_left, self.tree, self._layouts)
            if not discovery.visits:
                self._drop(path)
                continue
            self.tree.pop(path)
            self._plant(discovery, table, {path: node})
            for gone in set(node.subdirs) - set(self.tree[path].subdirs):
                self._drop(gone)
            for found in discovery.managed:
                if found not in self.dirs and self._adopt(found, table, at_start=False):
                    adopted.add(found)
            self._saw_beyond(set(discovery.beyond), replace=False)
        return adopted

    def _saw_beyond(self, paths: set[str], *, replace: bool) -> None:
        """Directories with steps one level below --max-depth: each warned about once."""
        for path in sorted(paths - self.beyond):
            log.warning("steps_beyond_max_depth", directory=path,
                        max_depth=self.config.max_depth,
                        action="not managed; raise --max-depth to adopt it")
        self.beyond = paths if replace else self.beyond | paths

    def health_note(self) -> str | None:
        """What /healthz adds to "ok" when the daemon is alive but keeps nothing, or stands by."""
        if self.standby:
            first = min(self.standby)
            return (f"standby for {len(self.standby)} director"
                    f"{'y' if len(self.standby) == 1 else 'ies'} held by another janitor "
                    f"({protocol.printable(first)}: {lock.describe_holder(self.standby[first])})")
        if self.dirs:
            return None
        note = "no managed directory under " + ", ".join(self.config.roots)
        if self.beyond:
            note += (f" (step_* beyond --max-depth {self.config.max_depth} in "
                     f"{protocol.printable(min(self.beyond))})")
        return note

    def replant(self, path: str, subdirs: tuple[str, ...]) -> list[str]:
        """A rescan of the managed directory `path` listed these plain subdirectories: look
        below new ones (down to --max-depth), forget gone ones. Returns the managed directories
        newly adopted there."""
        node = self.tree.get(path)
        if node is None or node.depth_left <= 0:
            return []
        now = tuple(os.path.join(path, name) for name in subdirs)
        if now == node.subdirs:
            return []
        for gone in set(node.subdirs) - set(now):
            self._drop(gone)
        node.subdirs = now
        table = mounts.mount_table()
        adopted: list[str] = []
        for sub in sorted(set(now) - set(self.tree)):
            discovery = discover_below(sub, node.depth_left - 1, self.tree, self._layouts)
            self._plant(discovery, table, {})
            adopted.extend(found for found in discovery.managed
                           if found not in self.dirs and self._adopt(found, table, False))
        self.arm_watches()
        return adopted

    def _drop(self, path: str) -> None:
        """Forget a directory that went away and everything below it."""
        node = self.tree.pop(path, None)
        if node is None:
            return
        for sub in node.subdirs:
            self._drop(sub)
        if path in self.dirs:
            self._release(path)

    def _release(self, path: str) -> None:
        log.info("directory_released", directory=path, why="gone or replaced")
        self.release_lost(path)

    def release_lost(self, path: str) -> None:
        """Let go of a directory (gone, replaced, or locked by another janitor now)."""
        held = self.dirs.pop(path)
        held.tracked.close()
        if held.stream is not None:
            self.metrics.drop_directory(held.stream)

    def _mode_for(self, path: str, table: MountTable) -> Mode:
        """Poll where asked to, and with `auto` where inotify is blind to other hosts' writes."""
        config = self.config
        remote = config.watch == "auto" and mounts.is_network_fs(
            mounts.filesystem_type(path, table))
        return "poll" if config.watch == "poll" or remote else "inotify"

    def _adopt(self, path: str, table: MountTable, at_start: bool) -> bool:
        config = self.config
        try:
            managed = ManagedDirectory(path, dry_run=config.dry_run, policy=config.policy,
                                       options=config.options, audit=config.audit)
        except lock.LockHeldError as exc:
            return self._held_by_another(path, exc, at_start)
        except OSError as exc:
            # Once per episode at error, not at every rescan; each retry at debug.
            emit = log.debug if path in self.unmanageable else log.error
            self.unmanageable.add(path)
            emit("directory_unmanageable", directory=path, error=os_error(exc),
                 action="retrying at every rescan")
            self.metrics.error("open")
            return False
        if managed.refusal is not None:  # --layout auto could not tell: not ours to manage
            managed.close()
            return self._refused(path, managed.refusal)
        mode = self._mode_for(path, table)
        stream = self._stream_for(path)
        self.dirs[path] = Held(TrackedDirectory(managed), mode, stream=stream)
        if stream is not None:  # present from adoption: an alert must not wait for a delete
            self.metrics.set_directory_trash_bytes(stream, 0)
        self.unmanageable.discard(path)
        self.locked.discard(path)
        log.info("directory_adopted", directory=path, watch=mode,
                 layout=managed.options.layout.name)
        if path in self.standby:
            log.info("took_over", directory=path, after=lock.describe_holder(
                self.standby.pop(path)), why="the janitor that held it stopped")
            self.metrics.set_standby(len(self.standby))
        return True

    def _refused(self, path: str, why: str) -> bool:
        """A directory found but left alone (its layout cannot be told): said once an episode,
        each retry (at every rescan: its steps may become telling) at debug."""
        emit = log.debug if path in self.unmanageable else log.warning
        self.unmanageable.add(path)
        emit("directory_refused", directory=path, why=why,
             action="deleting nothing there; give --layout, or retried at every rescan")
        return False

    def _held_by_another(self, path: str, exc: lock.LockHeldError, at_start: bool) -> bool:
        """Another janitor holds `path`: with --standby wait for it (tried at every rescan),
        else refuse the start, or (found later) log it once and leave it alone."""
        if self.config.standby:
            if path not in self.standby:
                log.info("standby", directory=path, holder=exc.holder,
                         action="deleting nothing here; taking over within "
                                f"{self.config.rescan_interval_s:g} s after it stops")
            self.standby[path] = exc.holder
            self.metrics.set_standby(len(self.standby))
            return False
        if at_start:
            raise StartupError(exitcodes.REFUSED, str(exc)) from None
        emit = log.debug if path in self.locked else log.error  # each retry at debug
        self.locked.add(path)
        emit("directory_locked", directory=path, holder=exc.holder,
             action="left alone; adopted at a rescan once it is free")
        return False

    def _stream_for(self, path: str) -> str | None:
        """The directory's label on the per-directory metrics: its path below its root (the
        root's own name for the root itself), unique, at most MAX_STREAMS of them; beyond the
        cap a directory has none (said once), so the series stay bounded."""
        taken = {held.stream for held in self.dirs.values()}
        if len(taken - {None}) >= MAX_STREAMS:
            if not self._cap_said:
                self._cap_said = True
                log.warning("metrics_stream_cap", directory=path, cap=MAX_STREAMS,
                            action="no per-directory metrics for this and later directories")
            return None
        roots = [os.path.realpath(r) for r in self.config.roots]
        base = max((r for r in roots if path == r or path.startswith(r + os.sep)), key=len,
                   default="")
        name = os.path.relpath(path, base) if base else path
        name = os.path.basename(path) or path if name == "." else name
        stream, n = protocol.printable(name), 1
        while stream in taken:
            n += 1
            stream = f"{protocol.printable(name)}#{n}"
        return stream

    def roots_changed(self) -> bool:
        """Whether a root was replaced or unmounted (device or inode changed)."""
        for root, known in self.root_ids.items():
            if _identity(root) != known:
                log.warning("root_changed", root=root)
                return True
        return False

    # ---- watches ------------------------------------------------------------------------

    def arm_watches(self) -> None:
        """One watch on each inotify-mode directory discovery looked at, and on the sentinel
        steps of each inotify-mode managed directory; a watch that fails turns into polling."""
        wanted: dict[str, Target] = {}
        for path, node in self.tree.items():
            held = self.dirs.get(path)
            if (node.mode if held is None else held.mode) == "inotify":
                wanted[path] = Target(path)
        for path, held in self.dirs.items():
            # A sentinel, or a completion file written in place (prime-rl's `.finished`
            # comes after the acknowledgement, inside a step no parent event tells of).
            inside = frozenset({protocol.RECEIVER_READY_MARKER,
                                *held.tracked.managed.options.complete_markers})
            if held.mode == "inotify":
                wanted.update((os.path.join(path, step), Target(path, inside, step))
                              for step in held.sentinel_steps)
        if not wanted and self.watcher is None:
            self.publish_watching()
            return
        if self.watcher is None:
            self.watcher = InotifyWatcher(self.on_event, self.dirty.overflow)
        armed = self.watcher.watch(wanted)
        for path, line in armed.failed.items():
            if not os.path.lexists(path):
                # Gone since it was looked at (a step the trainer deleted): its parent's event or
                # poll tells; turning its directory to polling would be for nothing.
                continue
            log.warning("watch_failed", detail=line, action="polling this directory instead")
            if path in self.tree:
                self.tree[path].mode = "poll"
            held = self.dirs.get(wanted[path].dirty)
            if held is not None:
                held.mode = "poll"
        self._catch_up(armed.added, wanted)
        self.publish_watching()

    def _catch_up(self, added: Iterable[str], wanted: dict[str, Target]) -> None:
        """A new watch sees only what happens after it is added: whatever changed between the
        look that found a directory and its watch is caught here. A directory on the way down
        whose stamp moved since it was listed is looked at again; a sentinel step that holds a
        `.receiver_ready` now (the scan saw none above the loaded step) is read again.
        Managed directories are scanned after their watch exists, so need nothing."""
        relook: set[str] = set()
        for path in added:
            target = wanted[path]
            if target.names is not None:
                if any(os.path.lexists(os.path.join(path, n)) for n in target.names):
                    self.dirty.child(target.dirty, target.child)
                continue
            node = self.tree.get(path)
            if node is not None and not node.managed and path not in self.dirs \
                    and directory_stamp(path) != node.stamp:
                relook.add(path)
        if relook:
            self.dirty.relook(relook)

    def publish_watching(self) -> None:
        modes = {"inotify": 0, "poll": 0}
        for held in self.dirs.values():
            modes[held.mode] += 1
        self.metrics.set_watching(modes, self.watch_count())

    def watch_count(self) -> int:
        return self.watcher.count if self.watcher is not None else 0

    # ---- polling ------------------------------------------------------------------------

    def polling(self) -> bool:
        """Whether the loop must wake every --poll-interval (with --watch poll always: a root
        that vanished is noticed at the next tick, not at the next heartbeat)."""
        return (self.config.watch == "poll"
                or any(held.mode == "poll" for held in self.dirs.values())
                or any(node.mode == "poll" for node in self.tree.values()))

    def poll(self) -> None:
        """One stat of each polled managed directory and the files named in it (markers, the
        watched steps' sentinels), and one of each polled directory on the way down: no listing.
        A managed directory that changed is relisted; any other directory is looked at again."""
        for path, held in self.dirs.items():
            if held.mode != "poll":
                continue
            now, before = signature(path, held.polled_names()), held.signature
            if now == before:
                continue
            if before is None or now is None or before.directory != now.directory:
                self.dirty.relist([path])  # an entry added, removed or renamed: list it
                continue
            for name in {f[0] for f in set(now.files) ^ set(before.files)}:
                self.dirty.child(path, name.split("/", 1)[0])  # a marker, or a sentinel's step
        relook = [path for path, node in self.tree.items() if node.mode == "poll"
                  and not node.managed and path not in self.dirs
                  and directory_stamp(path) != node.stamp]
        if relook:
            self.dirty.relook(relook)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def os_error(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only filesystem"
    return exc.strerror or str(exc)
