"""`janitor run`: keep every managed directory under the roots reconciled until stopped.

Level-triggered: a filesystem event, a poll that saw a change, the rescan timer, an inotify
overflow or a replaced root only marks directories dirty; every decision then comes from a fresh
scan and a fresh marker read. So lost, coalesced or never-sent events cost latency, never safety.
The loop is single-threaded: watchdog threads and signals only wake it through a pipe. Renames into
trash happen here; reclaiming bytes happens on the Reclaimer thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import psutil
import structlog

from janitor import exitcodes, protocol
from janitor.fs import lock, mounts, reaper
from janitor.fs.paths import Discovery, Stamp, check_root, directory_stamp, discover, discover_below
from janitor.health_http import HealthServer, Liveness, start_server
from janitor.metrics import Metrics
from janitor.model import ScanOptions
from janitor.notify import Notifier
from janitor.ops.audit import AuditLog
from janitor.ops.managed import ManagedDirectory, PassResult
from janitor.policy import Plan, Policy
from janitor.reclaimer import Item, Reclaimer
from janitor.watch import InotifyWatcher, Signature, Target, signature

log = structlog.get_logger("janitor")

WatchMode = Literal["auto", "inotify", "poll"]
Mode = Literal["inotify", "poll"]
WOULD_DELETE_EVENTS = 200
HANG_SWITCH_ENV = "JANITOR_TEST_HANG_FILE"  # test-only: a hung loop, to prove the watchdog works
# With --progress receiver-ready, the steps above the loaded one whose `.receiver_ready` is watched
# (inotify) or statted at every poll, per managed directory: the lowest half of this many (the
# receiver usually moves one step at a time) and the newest half (a receiver restarted at the
# newest step). Usually the trainer is a handful of steps ahead and all of them are; a stalled
# receiver with thousands of steps piled up above it costs no more than this.
SENTINEL_STEPS = 16


class StartupError(Exception):
    """The daemon cannot start; `code` is the exit code, the message one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    roots: tuple[str, ...]
    policy: Policy
    options: ScanOptions
    dry_run: bool = False
    max_depth: int = 3
    watch: WatchMode = "auto"
    poll_interval_s: float = 2.0
    rescan_interval_s: float = 30.0
    metrics_addr: tuple[str, int] | None = None
    once: bool = False
    exit_with_pid: int | None = None
    audit: AuditLog | None = None
    reclaim_workers: int = 1


@dataclass(slots=True)
class _Dir:
    """A managed directory the daemon holds, and what it last saw there."""

    managed: ManagedDirectory
    mode: Mode
    markers: tuple[str, ...] = ()
    sentinel_steps: tuple[str, ...] = ()  # step names whose `.receiver_ready` we look out for
    signature: Signature | None = None
    lag: int | None = None
    said: set[str] = field(default_factory=set)  # one-time messages already logged


@dataclass(slots=True)
class _Node:
    """A directory discovery looked at (a root, one on the way down, a managed one) and the stamp
    it had just before that look: in poll mode a different stamp means "look at it again"."""

    depth_left: int
    stamp: Stamp
    managed: bool
    subdirs: tuple[str, ...]
    mode: Mode


class Daemon:
    """The reconcile loop and everything it owns (watcher, reclaimer, HTTP, notifier)."""

    def __init__(self, config: DaemonConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.metrics = Metrics()
        self.liveness = Liveness(config.rescan_interval_s, time.monotonic())
        self.dirs: dict[str, _Dir] = {}
        self.tree: dict[str, _Node] = {}
        self.root_ids: dict[str, tuple[int, int] | None] = {}
        self._dirty: set[str] = set()
        self._relook: set[str] = set()  # directories on the way down that changed
        self._rearm = False
        self._rediscover = False
        self._overflowed = False
        self._dirty_lock = threading.Lock()
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watcher: InotifyWatcher | None = None
        self._http: HealthServer | None = None
        self._pid_watch: psutil.Process | None = None
        self._deleted_steps = 0
        self._last_pass_ms = 0.0
        self.reclaimer = Reclaimer(self._on_deleted,
                                   self.metrics.set_trash_pending_bytes
                                   if config.metrics_addr else None,
                                   workers=config.reclaim_workers)

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code. Raises StartupError before READY."""
        self._check_start()
        self._install_signals()
        try:
            self._start_http()
            self._discover(at_start=True)
            if not self.config.once:
                self._arm_watches()
            self._reclaim_leftovers()
            self._full_pass()
            if self.config.once:
                self._finish("once")
                return exitcodes.EXIT_OK
            self.notifier.ready(self._status_text())
            log.info("ready", directories=len(self.dirs), watches=self._watch_count(),
                     dry_run=self.config.dry_run, policy=self.config.policy.describe())
            return self._loop()
        finally:
            self._shutdown()

    def _check_start(self) -> None:
        for root in self.config.roots:
            bad = check_root(root)
            if bad is not None:
                raise StartupError(*bad)
        if self.config.exit_with_pid is not None:
            try:
                self._pid_watch = psutil.Process(self.config.exit_with_pid)
            except psutil.Error:
                raise StartupError(exitcodes.USAGE, f"--exit-with-pid {self.config.exit_with_pid}:"
                                   " no such process; give the trainer's pid") from None

    def _install_signals(self) -> None:
        # Explicit handlers: as PID 1 in a container, Python would otherwise ignore SIGTERM.
        def stop(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _start_http(self) -> None:
        if self.config.metrics_addr is None:
            return
        try:
            self._http = start_server(self.config.metrics_addr, self.metrics,
                                      lambda: self.liveness.check(time.monotonic()))
        except OSError as exc:
            raise StartupError(exitcodes.ERROR, f"{exc}; choose another --metrics-addr") from None

    def _shutdown(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        if self._watcher is not None:
            self._watcher.close()
        if self._http is not None:
            self._http.close()
        for state in self.dirs.values():
            state.managed.close()
        self.dirs.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.notifier.close()

    def _finish(self, why: str) -> None:
        """A last pass and the reclaim of everything queued, then stop (--once, --exit-with-pid)."""
        self._full_pass()
        drained = self.reclaimer.drain(timeout_s=3600.0)
        log.info("finished", why=why, deleted_steps=self._deleted_steps, reclaim_done=drained)

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self) -> int:
        now = time.monotonic()
        next_rescan = now + self.config.rescan_interval_s
        next_poll = now + self.config.poll_interval_s
        while not self._stopping():
            self._hang_if_asked()
            deadlines = [next_rescan, now + self._heartbeat_s()]
            if self._polling():
                deadlines.append(next_poll)
            timeout = min(deadlines) - time.monotonic()
            self._wait(max(0.0, timeout))
            if self._stopping():
                break
            now = time.monotonic()
            if self._pid_watch is not None and not _still_running(self._pid_watch):
                self._finish(f"process {self.config.exit_with_pid} exited")
                return exitcodes.EXIT_OK
            if now >= next_rescan:
                next_rescan = now + self.config.rescan_interval_s
                self._rescan()
            if now >= next_poll:
                next_poll = now + self.config.poll_interval_s
                self._poll()
            self._check_roots()
            self._check_watcher()
            self._reconcile_dirty()
            self._heartbeat()
        self.notifier.stopping()
        log.info("stopping", signal=signal.Signals(self._stop_signal or 0).name)
        return exitcodes.EXIT_OK

    def _stopping(self) -> bool:
        return self._stop_signal is not None

    def _heartbeat_s(self) -> float:
        """How long the loop may sleep: it feeds the watchdog and watches --exit-with-pid."""
        interval = self.notifier.watchdog_interval_s or 5.0
        if self._pid_watch is not None:
            interval = min(interval, 0.5)
        return interval

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already means "wake up"
            os.write(self._wake_w, b"\0")

    def _hang_if_asked(self) -> None:
        switch = os.environ.get(HANG_SWITCH_ENV)
        if switch and os.path.exists(switch):
            log.warning("hanging_on_purpose", switch=switch)
            while True:  # a test-only fault: the loop stops, so the watchdog must notice
                time.sleep(3600)

    def _heartbeat(self) -> None:
        """After a successful loop pass: tell systemd we are alive and what we are doing."""
        if self.notifier.maybe_watchdog(time.monotonic()):
            self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        return (f"{len(self.dirs)} directories, {self._deleted_steps} steps deleted, "
                f"last pass {self._last_pass_ms:.1f} ms"
                + (" (dry run)" if self.config.dry_run else ""))

    # ---- what makes a directory dirty ----------------------------------------------------

    def _on_dirty(self, path: str) -> None:
        """Called on watchdog threads: record and wake, nothing else. An event in a directory on
        the way down means "look at that part again" (see `_look_again`)."""
        with self._dirty_lock:
            if path in self.dirs:
                self._dirty.add(path)
            else:
                self._relook.add(path)
        self._wake()

    def _on_overflow(self) -> None:
        with self._dirty_lock:
            self._overflowed = True
        self._wake()

    def _take_dirty(self) -> tuple[set[str], set[str], bool, bool]:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            relook, self._relook = self._relook, set()
            rediscover, self._rediscover = self._rediscover, False
            overflowed, self._overflowed = self._overflowed, False
        return dirty, relook, rediscover, overflowed

    def _polling(self) -> bool:
        """Whether the loop must wake every --poll-interval (with --watch poll always: a root
        that vanished is noticed at the next tick, not at the next heartbeat)."""
        return (self.config.watch == "poll"
                or any(state.mode == "poll" for state in self.dirs.values())
                or any(node.mode == "poll" for node in self.tree.values()))

    def _poll(self) -> None:
        """One stat of each polled managed directory and the files named in it (markers, the
        watched steps' sentinels), and one of each polled directory on the way down: no listing.
        A managed directory that changed is reconciled; any other directory is looked at again."""
        dirty = [path for path, state in self.dirs.items() if state.mode == "poll"
                 and signature(path, _polled_names(state)) != state.signature]
        relook = [path for path, node in self.tree.items() if node.mode == "poll"
                  and not node.managed and path not in self.dirs
                  and directory_stamp(path) != node.stamp]
        with self._dirty_lock:
            self._dirty.update(dirty)
            self._relook.update(relook)

    def _rescan(self) -> None:
        """The timer: rediscover, retry leftover trash, and reconcile every directory."""
        self._discover(at_start=False)
        self._arm_watches()
        self._reclaim_leftovers()
        with self._dirty_lock:
            self._dirty.update(self.dirs)
        self._idle_pass_finished()

    def _idle_pass_finished(self) -> None:
        """A full pass over no managed directory (none exists yet) is finished at once: an idle
        daemon is alive, and /healthz must not have a sidecar restarted before the first step."""
        if not self.dirs:
            self.liveness.pass_finished(time.monotonic())

    def _check_roots(self) -> None:
        """A root replaced or unmounted (device or inode changed): start over below it."""
        for root, known in self.root_ids.items():
            if _identity(root) != known:
                log.warning("root_changed", root=root)
                self._discover(at_start=False)
                self._arm_watches()
                with self._dirty_lock:
                    self._dirty.update(self.dirs)
                return

    def _check_watcher(self) -> None:
        if self._watcher is None:
            return
        dead = self._watcher.dead()
        if dead is None:
            return
        log.error("watcher_died", why=dead, action="re-arming")
        self.liveness.observer_died(dead)
        self._watcher.rearm()
        still = self._watcher.dead()
        if still is not None:
            raise SystemExit(_fatal(f"the file watcher died and could not be restarted ({still})"))
        self.liveness.observer_recovered()
        with self._dirty_lock:
            self._dirty.update(self.dirs)

    # ---- discovery and watches -----------------------------------------------------------

    def _discover(self, *, at_start: bool) -> None:
        found: list[str] = []
        table = mounts.mount_table()
        old, self.tree = self.tree, {}
        for root in self.config.roots:
            self.root_ids[root] = _identity(root)
            discovery = discover(root, self.config.max_depth)
            found.extend(discovery.managed)
            self._plant(discovery, table, old)
        for path in [p for p, s in self.dirs.items() if p not in found
                     or not s.managed.still_same()]:
            self._release(path)
        for path in found:
            if path not in self.dirs:
                self._adopt(path, table, at_start)

    def _plant(self, discovery: Discovery, table: tuple[tuple[str, str], ...],
               old: dict[str, _Node]) -> None:
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
            self.tree[visit.path] = _Node(visit.depth_left, visit.stamp, visit.managed,
                                          visit.subdirs, mode)

    def _look_again(self, paths: set[str]) -> set[str]:
        """Rediscover below the directories on the way down that changed, and only there: each
        is listed again, a subdirectory new to it is discovered down to --max-depth, one gone is
        dropped with everything below it. Returns the managed directories newly adopted.

        A managed directory is never listed here: its changes are its reconcile's (the scan lists
        it), and one that could not be adopted (locked by another janitor) waits for the rescan.
        """
        adopted: set[str] = set()
        table: tuple[tuple[str, str], ...] | None = None
        for path in sorted(paths):  # a parent before its children
            node = self.tree.get(path)
            if node is None or node.managed or path in self.dirs:
                continue  # dropped with a parent already, or a stale watch's last event
            table = mounts.mount_table() if table is None else table
            discovery = discover_below(path, node.depth_left, self.tree)
            if not discovery.visits:
                self._drop(path)
                continue
            self.tree.pop(path)
            self._plant(discovery, table, {path: node})
            for gone in set(node.subdirs) - set(self.tree[path].subdirs):
                self._drop(gone)
            for found in discovery.managed:
                if found not in self.dirs:
                    self._adopt(found, table, at_start=False)
                    if found in self.dirs:
                        adopted.add(found)
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
        self.dirs.pop(path).managed.close()

    def _mode_for(self, path: str, table: tuple[tuple[str, str], ...]) -> Mode:
        """Poll where asked to, and with `auto` where inotify is blind to other hosts' writes."""
        config = self.config
        remote = config.watch == "auto" and mounts.is_network_fs(
            mounts.filesystem_type(path, table))
        return "poll" if config.watch == "poll" or remote else "inotify"

    def _adopt(self, path: str, table: tuple[tuple[str, str], ...], at_start: bool) -> None:
        config = self.config
        try:
            managed = ManagedDirectory(path, dry_run=config.dry_run, policy=config.policy,
                                       options=config.options, audit=config.audit)
        except lock.LockHeldError as exc:
            if at_start:
                raise StartupError(exitcodes.REFUSED, str(exc)) from None
            log.error("directory_locked", directory=path, holder=exc.holder)
            return
        except OSError as exc:
            log.error("directory_unmanageable", directory=path, error=_os_error(exc),
                      action="retrying at the next rescan")
            self.metrics.error("open")
            return
        mode = self._mode_for(path, table)
        self.dirs[path] = _Dir(managed, mode)
        log.info("directory_adopted", directory=path, watch=mode)

    def _arm_watches(self) -> None:
        """One watch on each inotify-mode directory discovery looked at, and on the sentinel
        steps of each inotify-mode managed directory; a watch that fails turns into polling."""
        wanted: dict[str, Target] = {}
        for path, node in self.tree.items():
            state = self.dirs.get(path)
            if (node.mode if state is None else state.mode) == "inotify":
                wanted[path] = Target(path)
        sentinel = frozenset({protocol.RECEIVER_READY_MARKER})
        for path, state in self.dirs.items():
            if state.mode == "inotify":
                wanted.update((os.path.join(path, step), Target(path, sentinel))
                              for step in state.sentinel_steps)
        if not wanted and self._watcher is None:
            self._publish_watching()
            return
        if self._watcher is None:
            self._watcher = InotifyWatcher(self._on_dirty, self._on_overflow)
        armed = self._watcher.watch(wanted)
        for path, line in armed.failed.items():
            if not os.path.lexists(path):
                # Gone since it was looked at (a step the trainer deleted): its parent's event or
                # poll tells; turning its directory to polling would be for nothing.
                continue
            log.warning("watch_failed", detail=line, action="polling this directory instead")
            if path in self.tree:
                self.tree[path].mode = "poll"
            state = self.dirs.get(wanted[path].dirty)
            if state is not None:
                state.mode = "poll"
        self._catch_up(armed.added, wanted)
        self._publish_watching()

    def _catch_up(self, added: Iterable[str], wanted: dict[str, Target]) -> None:
        """A new watch sees only what happens after it is added: whatever changed between the
        look that found a directory and its watch is caught here. A directory on the way down
        whose stamp moved since it was listed is looked at again; a sentinel step that holds a
        `.receiver_ready` now (the scan saw none above the loaded step) gets its directory
        reconciled. Managed directories are scanned after their watch exists, so need nothing."""
        relook: set[str] = set()
        dirty: set[str] = set()
        for path in added:
            target = wanted[path]
            if target.names is not None:
                if any(os.path.lexists(os.path.join(path, n)) for n in target.names):
                    dirty.add(target.dirty)
                continue
            node = self.tree.get(path)
            if node is not None and not node.managed and path not in self.dirs \
                    and directory_stamp(path) != node.stamp:
                relook.add(path)
        if relook or dirty:
            with self._dirty_lock:
                self._relook.update(relook)
                self._dirty.update(dirty)
            self._wake()

    def _publish_watching(self) -> None:
        modes = {"inotify": 0, "poll": 0}
        for state in self.dirs.values():
            modes[state.mode] += 1
        self.metrics.set_watching(modes, self._watch_count())

    def _watch_count(self) -> int:
        return self._watcher.count if self._watcher is not None else 0

    # ---- reconcile -------------------------------------------------------------------------

    def _full_pass(self) -> None:
        with self._dirty_lock:
            self._dirty.update(self.dirs)
        self._reconcile_dirty()
        self._idle_pass_finished()
        self._heartbeat()

    def _reconcile_dirty(self) -> None:
        dirty, relook, rediscover, overflowed = self._take_dirty()
        if overflowed:
            log.warning("inotify_overflow", action="rescanning every directory")
            self.metrics.inotify_overflow()
            rediscover = True
            dirty.update(self.dirs)
        if rediscover:
            self._discover(at_start=False)
            self._arm_watches()
            dirty.update(p for p in self.dirs if p not in dirty)
        elif relook:
            dirty.update(self._look_again(relook))
            self._arm_watches()
        if not dirty:
            return
        started = time.monotonic()
        for path in sorted(dirty):
            state = self.dirs.get(path)
            if state is not None:
                self._reconcile(path, state)
        finished = time.monotonic()
        self._last_pass_ms = (finished - started) * 1000
        self.metrics.reconcile_finished(finished - started, time.time())
        self.metrics.set_directory_lags(s.lag for s in self.dirs.values())
        self.metrics.set_filesystem_free_bytes(_free_bytes(self.dirs))
        self.liveness.pass_finished(finished)
        if self._rearm and not self.config.once:
            self._rearm = False
            self._arm_watches()

    def _reconcile(self, path: str, state: _Dir) -> None:
        managed = state.managed
        if state.mode == "poll":
            state.signature = signature(path, _polled_names(state))
        if not managed.still_same():
            with self._dirty_lock:
                self._rediscover = True
            return
        try:
            result = managed.reconcile(stop=self._stopping, sync=False)
        except lock.LockHeldError as exc:
            # Our lock file was removed or replaced and another janitor locked the new one:
            # stop deleting here at once (invariant 8); the next rescan tries to adopt it again.
            log.error("lock_lost", directory=path, holder=exc.holder,
                      action="released the directory; deleting nothing here")
            self.metrics.error("lock")
            self.dirs.pop(path).managed.close()
            return
        except OSError as exc:
            log.error("reconcile_failed", directory=path, error=_os_error(exc))
            self.metrics.error("reconcile")
            return
        # The poll signature stays the one taken before the scan: a marker written during this
        # pass (our own fsyncs take milliseconds) must differ at the next poll, not be absorbed.
        # New marker names, and our own renames, cost one more pass at the next poll.
        state.markers = tuple(c.filename for c in result.snapshot.consumers)
        if self.config.policy.gated and self.config.options.receiver_ready:
            steps = _sentinel_steps(result)
            if steps != state.sentinel_steps:
                state.sentinel_steps = steps
                self._rearm = self._rearm or state.mode == "inotify"
        reasons = {d.entry.name: d.reason.value for d in result.plan.doomed}
        self._record(path, state, result, reasons)
        if result.trashed:
            trash_fd = managed.trash_fd(create=False)
            assert trash_fd is not None
            items = [Item(t.trash_name, t.entry.number, reasons[t.entry.name])
                     for t in result.trashed]
            self.reclaimer.submit(path, trash_fd, items, sync_fds=(managed.fd, trash_fd))

    def _record(self, path: str, state: _Dir, result: PassResult,
                reasons: dict[str, str]) -> None:
        """Logs and metrics for one pass: each fact once, not on every pass. `reasons` maps each
        doomed entry's name to its reason (one lookup per trashed step, not a search)."""
        plan = result.plan
        newest = plan.newest_complete
        loaded = plan.progress.loaded_step
        state.lag = None if loaded is None or newest is None else max(0, newest - loaded)
        if plan.halted is not None:
            self.metrics.refused("no_valid_marker")
            _say_once(state, f"halt:{plan.halted}", "deleting_nothing", directory=path,
                      why=plan.halted)
        for foreign in result.snapshot.foreign:
            _say_once(state, f"foreign:{foreign.name}", "foreign_entry", directory=path,
                      entry=protocol.printable(foreign.name), why=foreign.reason)
        for skipped in result.skipped:
            log.info("deletion_postponed", directory=path, step=skipped.entry.number,
                     entry=protocol.printable(skipped.entry.name), why=skipped.why)
        for trashed in result.trashed:
            self.metrics.deleted(reasons[trashed.entry.name])
        if self.config.dry_run:
            self._log_would_delete(path, state, plan)

    def _log_would_delete(self, path: str, state: _Dir, plan: Plan) -> None:
        """One `would_delete` event per newly doomed step, at most WOULD_DELETE_EVENTS a pass
        (a first dry run over 100,000 steps must not spend its time logging), then a count."""
        new = [d for d in plan.doomed if f"would:{d.entry.name}" not in state.said]
        for decision in new[:WOULD_DELETE_EVENTS]:
            _say_once(state, f"would:{decision.entry.name}", "would_delete", directory=path,
                      step=decision.entry.number, reason=decision.reason.value)
        if len(new) > WOULD_DELETE_EVENTS:
            rest = new[WOULD_DELETE_EVENTS:]
            state.said.update(f"would:{d.entry.name}" for d in rest)
            log.warning("would_delete_more", directory=path, steps=len(rest),
                        first=rest[0].entry.number, last=rest[-1].entry.number)

    def _reclaim_leftovers(self) -> None:
        if self.config.dry_run:
            return
        for path, state in self.dirs.items():
            trash_fd = _open_trash_quietly(state.managed)
            if trash_fd is not None and reaper.trash_entries(trash_fd):
                self.reclaimer.submit(path, trash_fd, None)

    def _on_deleted(self, directory: str, item: Item, stats: reaper.ReclaimStats) -> None:
        """Called on the reclaim thread once a trashed step's bytes are freed."""
        self._deleted_steps += 1
        self.metrics.reclaimed(stats.bytes, stats.files)
        log.info("deleted", directory=directory, step=item.step, reason=item.reason,
                 bytes=stats.bytes, files=stats.files)


def _sentinel_steps(result: PassResult) -> tuple[str, ...]:
    """The steps above the loaded one (every step while no sentinel exists) where a new
    `.receiver_ready` would move it: at most SENTINEL_STEPS (see there)."""
    loaded = result.plan.progress.loaded_step
    trashed = {t.entry.name for t in result.trashed}
    above = sorted((e for e in result.snapshot.steps if e.number is not None
                    and (loaded is None or e.number > loaded) and e.name not in trashed),
                   key=lambda e: e.number or 0)
    if len(above) > SENTINEL_STEPS:
        half = SENTINEL_STEPS // 2
        above = above[:half] + above[-half:]
    return tuple(e.name for e in above)


def _polled_names(state: _Dir) -> tuple[str, ...]:
    """The files inside a polled managed directory whose stat the poll compares."""
    return state.markers + tuple(f"{step}/{protocol.RECEIVER_READY_MARKER}"
                                 for step in state.sentinel_steps)


def _say_once(state: _Dir, key: str, event: str, **fields: object) -> None:
    if key not in state.said:
        state.said.add(key)
        log.warning(event, **fields)


def _still_running(process: psutil.Process) -> bool:
    """psutil counts a zombie as running; it has exited, only its parent has not reaped it yet."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _free_bytes(dirs: dict[str, _Dir]) -> Iterable[int]:
    for path in dirs:
        with contextlib.suppress(OSError):
            st = os.statvfs(path)
            yield st.f_bavail * st.f_frsize


def _open_trash_quietly(managed: ManagedDirectory) -> int | None:
    try:
        return managed.trash_fd(create=False)
    except OSError as exc:
        log.error("trash_unusable", directory=managed.path, error=str(exc))
        return None


def _os_error(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only filesystem"
    return exc.strerror or str(exc)


def _fatal(message: str) -> int:
    log.critical("fatal", why=message)
    return exitcodes.ERROR
