"""`janitor run`: keep every managed directory under the roots reconciled until stopped.

Level-triggered: a filesystem event, a poll that saw a change, the rescan timer, an inotify
overflow or a replaced root only mark work in the DirtySet; every decision then comes from a
fresh read of the names it rests on (see ops.incremental) and a fresh marker read. So lost,
coalesced or never-sent events cost latency, never safety. The loop is single-threaded: watchdog
threads and signals only wake it through a pipe. Renames into trash happen here; reclaiming
bytes happens on the Reclaimer's threads, at idle priority. A timer rescan is spread over loop
iterations of at most RESCAN_SLICE_S each, so a reaction never waits behind a whole tree.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import socket
import time
from datetime import UTC, datetime

import psutil
import structlog

from janitor import __version__, exitcodes
from janitor.daemon.budgets import Budgets
from janitor.daemon.config import DaemonConfig, StartupError
from janitor.daemon.dirty import DirtySet, Want
from janitor.daemon.fleet import SENTINEL_STEPS, Fleet, Held, Node, os_error
from janitor.daemon.footprint import Footprint
from janitor.daemon.health_http import HealthServer, Liveness, start_server
from janitor.daemon.metrics import Metrics
from janitor.daemon.notify import Notifier
from janitor.daemon.pressure import PressureWatch
from janitor.daemon.reclaimer import Item, Reclaimer
from janitor.daemon.recorder import PassRecorder
from janitor.daemon.watch import signature
from janitor.fs import lock, presence, reaper
from janitor.fs.paths import check_root
from janitor.index import DirectoryIndex
from janitor.ops.managed import ManagedDirectory, PassResult

log = structlog.get_logger("janitor")

HANG_SWITCH_ENV = "JANITOR_TEST_HANG_FILE"  # test-only: a hung loop, to prove the watchdog works
# The longest a rescan works in one loop iteration before events are looked at again.
RESCAN_SLICE_S = 0.01
# --min-free under --pressure relieve: how often each filesystem's free space is looked at
# between passes (a statvfs each), so space taken outside the managed directories is seen too.
FREE_CHECK_S = 1.0


class Daemon:
    """The reconcile loop and its lifecycle: signals, the heartbeat, HTTP, the reclaimer."""

    def __init__(self, config: DaemonConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.metrics = Metrics()
        self.liveness = Liveness(config.rescan_interval_s, time.monotonic())
        self.dirty = DirtySet()
        self.fleet = Fleet(config, self.metrics, self.dirty)
        self.pressure = PressureWatch(config.budget, self.metrics)
        self.recorder = PassRecorder(self.metrics, config.dry_run, self.pressure)
        self._stop_signal: int | None = None
        self._http: HealthServer | None = None
        self._pid_watch: psutil.Process | None = None
        self._deleted_steps = 0
        self._rearm = False
        self._announcer: presence.Announcer | None = None
        self._announced_at = -math.inf
        self._since = datetime.now(UTC).isoformat(timespec="seconds")
        # Sizes are measured only when someone can read them (the metrics are served).
        served = config.metrics_addr is not None
        # Sizes are needed where they are shown (metrics) or watched (--max-bytes), and where
        # relief chooses by them (--min-free under --pressure relieve).
        budget = config.budget
        sized = served or budget.max_bytes is not None or budget.relieves_free
        self.footprint = Footprint(self._publish_bytes) if sized else None
        self._trash_bytes: dict[str, int] = {}
        self.budgets = Budgets(budget, self.footprint, self.fleet.dirs, self.dirty,
                               self.pressure, self._trash_bytes, RESCAN_SLICE_S / 2)
        self.reclaimer = Reclaimer(self._on_deleted, self._publish_trash if sized else None,
                                   workers=config.reclaim_workers)

    @property
    def dirs(self) -> dict[str, Held]:
        return self.fleet.dirs

    @property
    def tree(self) -> dict[str, Node]:
        return self.fleet.tree

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code. Raises StartupError before READY."""
        self._check_start()
        self._install_signals()
        try:
            self._start_http()
            self._announce()
            self.fleet.discover(at_start=True)
            if not self.config.once:
                self.fleet.arm_watches()
            self._reclaim_leftovers()
            self._full_pass()
            gc.freeze()  # see _freeze; at start there is no garbage worth a collection first
            if self.config.once:
                self._finish("once")
                return self._once_code()
            self.notifier.ready(self._status_text())
            config = self.config
            log.info("ready", version=__version__, roots=list(config.roots),
                     directories=len(self.dirs), watches=self.fleet.watch_count(),
                     dry_run=config.dry_run, standby=config.standby,
                     standing_by=len(self.fleet.standby), policy=config.policy.describe(),
                     policy_text=str(config.policy),
                     audit=None if config.audit is None else str(config.audit.path))
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
        signal.set_wakeup_fd(self.dirty.wake_w, warn_on_full_buffer=False)

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
        if self._http is not None:
            self._http.close()
        if self._announcer is not None:
            self._announcer.close()
        self.fleet.close()
        self.dirty.close()
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
            deadlines = [next_rescan, now + self._heartbeat_s(), *self.budgets.deadlines(now)]
            if self.fleet.polling():
                deadlines.append(next_poll)
            busy = self._rescanning() or (self.footprint is not None and self.footprint.pending) \
                or self.budgets.busy
            timeout = 0.0 if busy else min(deadlines) - time.monotonic()
            self.dirty.wait(max(0.0, timeout))
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
                self.fleet.poll()
            self._check_roots()
            self._check_watcher()
            self._reconcile_dirty()
            self._advance_rescans()
            self._advance_footprint()
            self.budgets.check_free(now)
            self.budgets.advance_split(time.monotonic())
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

    def _hang_if_asked(self) -> None:
        switch = os.environ.get(HANG_SWITCH_ENV)
        if switch and os.path.exists(switch):
            log.warning("hanging_on_purpose", switch=switch)
            while True:  # a test-only fault: the loop stops, so the watchdog must notice
                time.sleep(3600)

    def _heartbeat(self) -> None:
        """After a successful loop pass: tell systemd we are alive and what we are doing."""
        self.liveness.note(self.fleet.health_note())
        self._publish_presence()
        if self.notifier.maybe_watchdog(time.monotonic()):
            self.notifier.status(self._status_text())

    def _once_code(self) -> int:
        """--once exits as `sweep` would: 5 when a directory could not be read, 4 when one was
        left untouched (a bad marker, another janitor's lock), else 0."""
        fleet = self.fleet
        faults = [held.fault for held in self.dirs.values() if held.fault is not None]
        if fleet.unmanageable or any(f.startswith("reconcile failed") for f in faults):
            return exitcodes.ERROR
        if faults or fleet.locked or fleet.standby:
            return exitcodes.REFUSED
        return exitcodes.EXIT_OK

    # ---- presence: what `janitor status` learns of a daemon that holds no lock -------------

    def _announce(self) -> None:
        try:
            self._announcer = presence.Announcer()
        except OSError as exc:  # no socket (fds, a sandbox): status just cannot see this one
            log.warning("presence_unavailable", error=os_error(exc),
                        action="janitor status will not show this daemon's role")

    def _publish_presence(self) -> None:
        """The record status reads (at most once a second: it is O(directories))."""
        now = time.monotonic()
        if self._announcer is None or now - self._announced_at < 1.0:
            return
        self._announced_at = now
        config = self.config
        role = "dry-run" if config.dry_run else "active"
        directories: list[dict[str, object]] = [
            {"path": path, "dev": held.tracked.managed.dev, "ino": held.tracked.managed.ino,
             "role": role, "watch": held.mode} for path, held in self.dirs.items()]
        for path in self.fleet.standby:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                directories.append({"path": path, "dev": st.st_dev, "ino": st.st_ino,
                                    "role": "standby", "watch": None})
        self._announcer.publish({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": self._since, "version": __version__,
                                 "dry_run": config.dry_run, "standby": config.standby,
                                 "roots": list(config.roots), "directories": directories})

    def _status_text(self) -> str:
        return (f"{len(self.dirs)} directories, {self._deleted_steps} steps deleted, "
                f"last pass {self.recorder.last_pass_ms:.1f} ms"
                + (" (dry run)" if self.config.dry_run else ""))

    # ---- the timer, the roots, the watcher ------------------------------------------------

    def _rescan(self) -> None:
        """The timer: rediscover, retry leftover trash, and start checking every directory's
        index against a full re-read (spread over the next iterations, `_advance_rescans`)."""
        self.dirty.full(self.fleet.discover(at_start=False))
        self.fleet.arm_watches()
        self._reclaim_leftovers()
        for held in self.dirs.values():
            held.tracked.start_rescan()
        self._idle_pass_finished()

    def _rescanning(self) -> bool:
        return any(held.tracked.rescanning for held in self.dirs.values())

    def _advance_rescans(self) -> None:
        """At most RESCAN_SLICE_S of rescanning, then back to the events. A finished rescan is
        followed by a pass (what it corrected is decided on; partial steps whose grace ran out
        meanwhile are swept), as the timer's full pass was."""
        deadline = time.monotonic() + RESCAN_SLICE_S
        for path, held in list(self.dirs.items()):
            if not held.tracked.rescanning:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                result = held.tracked.advance_rescan(left)
            except OSError as exc:
                log.error("reconcile_failed", directory=path, error=os_error(exc))
                self.metrics.error("reconcile")
                continue
            if result is None:
                return
            self.recorder.rescanned(path, result)
            if self.footprint is not None:
                self.footprint.refresh(path, held.tracked.index)
            _freeze()
            self.dirty.touch([path])
            self.dirty.full(self.fleet.replant(path, result.subdirs))

    def _idle_pass_finished(self) -> None:
        """A full pass over no managed directory (none exists yet) is finished at once: an idle
        daemon is alive, and /healthz must not have a sidecar restarted before the first step."""
        if not self.dirs:
            self.liveness.pass_finished(time.monotonic())

    def _check_roots(self) -> None:
        """A root replaced or unmounted: start over below it."""
        if self.fleet.roots_changed():
            self.fleet.discover(at_start=False)
            self.fleet.arm_watches()
            self.dirty.full(self.dirs)

    def _check_watcher(self) -> None:
        watcher = self.fleet.watcher
        if watcher is None:
            return
        dead = watcher.dead()
        if dead is None:
            return
        log.error("watcher_died", why=dead, action="re-arming")
        self.liveness.observer_died(dead)
        watcher.rearm()
        still = watcher.dead()
        if still is not None:
            raise SystemExit(_fatal(f"the file watcher died and could not be restarted ({still})"))
        self.liveness.observer_recovered()
        self.dirty.full(self.dirs)  # events were lost meanwhile

    # ---- reconcile -------------------------------------------------------------------------

    def _full_pass(self) -> None:
        self.dirty.full(self.dirs)
        self._reconcile_dirty()
        self._idle_pass_finished()
        self._heartbeat()

    def _reconcile_dirty(self) -> None:
        pending = self.dirty.take()
        dirty = pending.dirty
        if pending.overflowed:
            log.warning("inotify_overflow", action="rescanning every directory")
            self.metrics.inotify_overflow()
        if pending.overflowed or pending.rediscover:
            adopted = self.fleet.discover(at_start=False)
            self.fleet.arm_watches()
            for path in adopted if not pending.overflowed else self.dirs:
                dirty.setdefault(path, Want()).full = True
        elif pending.relook:
            for path in self.fleet.look_again(pending.relook):
                dirty.setdefault(path, Want()).full = True
            self.fleet.arm_watches()
        if not dirty:
            return
        started = time.monotonic()
        decided = False
        for path in sorted(dirty):
            held = self.dirs.get(path)
            if held is not None:
                self.budgets.hook(path, held)
                decided = self._reconcile(path, held, dirty[path]) or decided
        if decided:
            self.liveness.pass_finished(self.recorder.finished(started, self.dirs))
        else:  # only echoes: alive, and nothing new for the metrics
            self.liveness.pass_finished(time.monotonic())
        if self._rearm and not self.config.once:
            self._rearm = False
            self.fleet.arm_watches()

    def _reconcile(self, path: str, held: Held, want: Want) -> bool:
        """One pass over one directory; False when it decided nothing (an echo skipped)."""
        tracked = held.tracked
        if held.mode == "poll":
            # Taken before the pass reads: a marker written during this pass (our own fsyncs
            # take milliseconds) must differ at the next poll, not be absorbed.
            held.signature = signature(path, held.polled_names())
        if not tracked.managed.still_same():
            self.dirty.rediscover()
            return True
        try:
            if want.full:
                result = tracked.full_pass(self._stopping)
            elif want.relist:
                result = tracked.relist_pass(self._stopping)
            else:
                changed = tracked.changed_pass(want.names, self._stopping,
                                               skip_if_unchanged=True)
                if changed is None:
                    return False  # an echo: nothing named changed, nothing to decide
                result = changed
        except lock.LockHeldError as exc:
            # Our lock file was removed or replaced and another janitor locked the new one:
            # stop deleting here at once (invariant 8); the next rescan tries to adopt it again.
            log.error("lock_lost", directory=path, holder=exc.holder,
                      action="released the directory; deleting nothing here")
            self.metrics.error("lock")
            self.fleet.release_lost(path)
            return True
        except OSError as exc:
            self.recorder.fault(path, held, f"reconcile failed: {os_error(exc)}",
                                "reconcile_failed")
            self.metrics.error("reconcile")
            return True
        held.markers = tuple(sorted(tracked.index.consumers))
        if self.config.policy.gated and self.config.options.receiver_ready:
            steps = _sentinel_steps(held, result)
            if steps != held.sentinel_steps:
                held.sentinel_steps = steps
                self._rearm = self._rearm or held.mode == "inotify"
        reasons = {d.entry.name: d.reason.value for d in result.plan.doomed}
        self.recorder.record(path, held, result, reasons)
        self._measure(path, held, want, result)
        if result.trashed:
            managed = tracked.managed
            trash_fd = managed.trash_fd(create=False)
            assert trash_fd is not None
            items = [Item(t.trash_name, t.entry.number, reasons[t.entry.name])
                     for t in result.trashed]
            try:
                self.reclaimer.submit(path, trash_fd, items, sync_fds=(managed.fd, trash_fd))
            except OSError as exc:  # out of fds: the steps wait in the trash, whole
                log.error("reclaim_deferred", directory=path, steps=len(items),
                          error=os_error(exc), action="reclaimed at the next rescan")
                self.metrics.error("reclaim")
        return True

    # ---- sizes (only when metrics are served) ----------------------------------------------

    def _measure(self, path: str, held: Held, want: Want, result: PassResult) -> None:
        """What a pass changed, for the per-directory bytes: a full or relisting pass (or a
        directory new to it) is compared whole, an event's pass only by the names it read
        (the event's and those the decision rested on, such as a newest step just completed)."""
        footprint = self.footprint
        if footprint is None:
            return
        index = held.tracked.index
        self.budgets.passed(path, result)  # sized before the footprint forgets the trashed
        if want.full or want.relist or not footprint.known(path):
            footprint.refresh(path, index)
        else:
            footprint.touch(path, held.tracked.last_read, index)
        if result.trashed:
            footprint.removed(path, [t.entry.name for t in result.trashed])

    def _advance_footprint(self) -> None:
        if self.footprint is None or not self.footprint.pending:
            return

        def held(path: str) -> tuple[int, DirectoryIndex] | None:
            found = self.dirs.get(path)
            return None if found is None else (found.tracked.managed.fd, found.tracked.index)

        self.footprint.advance(held, RESCAN_SLICE_S / 2)

    def _publish_bytes(self, path: str, bytes_: int) -> None:
        held = self.dirs.get(path)
        if held is None:
            return
        if held.stream is not None:
            self.metrics.set_directory_bytes(held.stream, bytes_)
        self.pressure.directory(path, held.stream, bytes_ + self._trash_bytes.get(path, 0))
        self.budgets.sized(path, bytes_)

    def _publish_trash(self, path: str, bytes_: int, total: int) -> None:
        """Called on the reclaim thread: trash bytes of one directory and of all of them."""
        self.metrics.set_trash_pending_bytes(total)
        self._trash_bytes[path] = bytes_  # read by the loop's next budget check
        held = self.dirs.get(path)
        if held is not None and held.stream is not None:
            self.metrics.set_directory_trash_bytes(held.stream, bytes_)

    def _reclaim_leftovers(self) -> None:
        if self.config.dry_run:
            return
        for path, held in self.dirs.items():
            trash_fd = _open_trash_quietly(held.tracked.managed)
            try:
                if trash_fd is not None and reaper.trash_entries(trash_fd):
                    self.reclaimer.submit(path, trash_fd, None)
            except OSError as exc:  # out of fds, or the trash unreadable: the next rescan
                log.error("reclaim_deferred", directory=path, error=os_error(exc),
                          action="retrying at the next rescan")
                self.metrics.error("reclaim")

    def _on_deleted(self, directory: str, item: Item, stats: reaper.ReclaimStats) -> None:
        """Called on the reclaim thread once a trashed step's bytes are freed."""
        self._deleted_steps += 1
        self.budgets.reclaimed(directory, item.trash_name)
        self.metrics.reclaimed(stats.bytes, stats.files)
        log.info("deleted", directory=directory, step=item.step, reason=item.reason,
                 bytes=stats.bytes, files=stats.files)


def _sentinel_steps(held: Held, result: PassResult) -> tuple[str, ...]:
    """The steps above the loaded one (every step while no sentinel exists) where a new
    `.receiver_ready` would move it, and the loaded step itself while it is incomplete (prime-rl
    writes `.finished` into the step just acknowledged, which no parent event tells of): at
    most SENTINEL_STEPS (see there)."""
    index = held.tracked.index
    loaded = result.plan.progress.loaded_step
    above = index.steps_above(loaded)
    if loaded is not None and loaded in index.step_numbers and \
            not index.step(loaded).complete:
        above = [loaded, *above]
    if len(above) > SENTINEL_STEPS:
        half = SENTINEL_STEPS // 2
        above = above[:half] + above[-half:]
    return tuple(index.step(n).name for n in above)


def _freeze() -> None:
    """Move every object alive now out of the cyclic collector's reach (gc.freeze): an index of
    100,000 steps holds some 300,000 objects, and a full collection walking them blocks the loop
    for tens of milliseconds; they are freed by reference counting all the same (the index holds
    no cycles). A collection first, so no garbage cycle is frozen; after the first freeze it
    walks only what was made since. Called once the index is built and after each rescan."""
    gc.collect()
    gc.freeze()


def _still_running(process: psutil.Process) -> bool:
    """psutil counts a zombie as running; it has exited, only its parent has not reaped it yet."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _open_trash_quietly(managed: ManagedDirectory) -> int | None:
    try:
        return managed.trash_fd(create=False)
    except OSError as exc:
        log.error("trash_unusable", directory=managed.path, error=str(exc))
        return None


def _fatal(message: str) -> int:
    log.critical("fatal", why=message)
    return exitcodes.ERROR
