"""Logs and metrics of each pass: each fact once, not on every pass.

A halted directory, a foreign entry and a dry run's would-delete are logged when first seen;
each postponed deletion and each reclaimed step is logged as it happens; the pass's duration,
the lags and the free space go to the metrics. A rescan that found the index wrong (a missed
event) is logged as a bug and counted.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter

import structlog

from janitor import protocol
from janitor.daemon.fleet import Held
from janitor.daemon.metrics import Metrics
from janitor.daemon.pressure import PressureWatch
from janitor.fs import mounts
from janitor.ops.incremental import RescanResult
from janitor.ops.managed import PassResult
from janitor.policy import Plan, Reason

log = structlog.get_logger("janitor")

WOULD_DELETE_EVENTS = 200
# Dependency warnings logged per pass at most (an adopted tree of broken chains says the rest
# in one count).
DEPENDENCY_EVENTS = 20


class PassRecorder:
    def __init__(self, metrics: Metrics, dry_run: bool,
                 pressure: PressureWatch | None = None) -> None:
        self.metrics = metrics
        self.dry_run = dry_run
        self.pressure = pressure
        self.last_pass_ms = 0.0

    def record(self, path: str, held: Held, result: PassResult,
               reasons: dict[str, str]) -> None:
        """One pass over one directory. `reasons` maps each doomed entry's name to its reason
        (one lookup per trashed step, not a search)."""
        plan = result.plan
        newest = plan.newest_complete
        loaded = plan.progress.loaded_step
        held.lag = None if loaded is None or newest is None else max(0, newest - loaded)
        if held.stream is not None:
            marker_ns = plan.progress.marker_ns
            self.metrics.set_directory(held.stream, loaded, newest,
                                       None if marker_ns is None else marker_ns / 1e9)
        if plan.halted is not None:
            self.metrics.refused("no_valid_marker")
            self.fault(path, held, plan.halted, "deleting_nothing")
        else:
            self.cleared(path, held)
        for foreign in result.snapshot.foreign:
            say_once(held, f"foreign:{foreign.name}", "foreign_entry", directory=path,
                     entry=protocol.printable(foreign.name), why=foreign.reason)
        self._dependencies(path, held, plan)
        for skipped in result.skipped:
            log.info("deletion_postponed", directory=path, step=skipped.entry.number,
                     entry=protocol.printable(skipped.entry.name), why=skipped.why)
        for trashed in result.trashed:
            self.metrics.deleted(reasons[trashed.entry.name])
        if self.dry_run:
            self._would_delete(path, held, plan)
        # --log-level debug: why this pass kept what it looked at. A pass decides only the
        # entries that could be doomed (`looked_at`); `steps` is what the directory holds after.
        log.debug("pass_decided", directory=path, steps=held.tracked.index.step_count,
                  looked_at=len(plan.decisions),
                  reasons=dict(Counter(d.reason.value for d in plan.decisions)),
                  loaded_step=loaded, newest_complete=newest)

    def _dependencies(self, path: str, held: Held, plan: Plan) -> None:
        """Each step kept because its dependency file cannot be read, each dependency that is
        not here and each cycle: a warning once (the steps stay; a person should look)."""
        said = [(f"depends:{d.entry.name}", "dependency_problem", d.entry.number,
                 f"{protocol.printable(d.entry.name)}: {d.entry.depends_problem}; kept")
                for d in plan.decisions if d.reason is Reason.DEPENDENCY_PROBLEM]
        said.extend((f"{n.event}:{n.step}:{n.text}", n.event, n.step, n.text)
                    for n in held.tracked.notes)
        fresh = [s for s in said if s[0] not in held.said]
        for key, event, step, why in fresh[:DEPENDENCY_EVENTS]:
            say_once(held, key, event, directory=path, step=step, why=why)
        if len(fresh) > DEPENDENCY_EVENTS:
            log.warning("dependency_more", directory=path, steps=len(fresh) - DEPENDENCY_EVENTS,
                        why="more steps with dependency problems; janitor sweep --dry-run "
                            "lists them")

    def fault(self, path: str, held: Held, why: str, event: str) -> None:
        """A directory where nothing can be deleted: logged each time the fault begins (again
        after a recovery, or when its reason changes), not on every pass while it lasts (each
        repeat is a debug line)."""
        if held.fault == why:
            log.debug(event, directory=path, why=why, repeated=True)  # --log-level debug
            return
        held.fault = why
        emit = log.error if event == "reconcile_failed" else log.warning
        emit(event, directory=path, why=why)

    def cleared(self, path: str, held: Held) -> None:
        """A pass that could decide: a fault, if there was one, is over."""
        if held.fault is not None:
            log.info("resumed", directory=path, after=held.fault)
            held.fault = None

    def _would_delete(self, path: str, held: Held, plan: Plan) -> None:
        """One `would_delete` event (info: a dry run doing its job is no warning) per newly
        doomed step, at most WOULD_DELETE_EVENTS a pass (a first dry run over 100,000 steps must
        not spend its time logging), then a count; each is counted in would_delete_total."""
        new = [d for d in plan.doomed if f"would:{d.entry.name}" not in held.said]
        held.said.update(f"would:{d.entry.name}" for d in new)
        for decision in new:
            self.metrics.would_delete(decision.reason.value)
        for decision in new[:WOULD_DELETE_EVENTS]:
            log.info("would_delete", directory=path, step=decision.entry.number,
                     reason=decision.reason.value)
        if len(new) > WOULD_DELETE_EVENTS:
            rest = new[WOULD_DELETE_EVENTS:]
            log.info("would_delete_more", directory=path, steps=len(rest),
                     first=rest[0].entry.number, last=rest[-1].entry.number)

    def finished(self, started: float, dirs: dict[str, Held]) -> float:
        """The passes of one loop iteration are done: their time, the lags, the free space."""
        finished = time.monotonic()
        self.last_pass_ms = (finished - started) * 1000
        self.metrics.reconcile_finished(finished - started, time.time())
        self.metrics.set_directory_lags(h.lag for h in dirs.values())
        sizes = _filesystems(dirs)
        self.metrics.set_filesystems(sizes)
        if self.pressure is not None:
            self.pressure.filesystems(sizes, finished)
        return finished

    def rescanned(self, path: str, result: RescanResult) -> None:
        """A finished rescan: what it corrected. Counted as missed events (a bug: the index
        should have heard of them) only where the directory was quiet before the rescan."""
        if not result.corrected:
            return
        fields = {"directory": path, "names": len(result.corrected),
                  "first": [f"{protocol.printable(m.name)}: index {m.indexed}, disk {m.scanned}"
                            for m in result.corrected[:5]]}
        if result.counted:
            self.metrics.index_mismatch(len(result.corrected))
            log.error("index_mismatch", **fields,
                      action="corrected from the rescan; please report this as a bug")
        else:
            log.debug("index_corrected", **fields, why="changed while it was rescanned")


def say_once(held: Held, key: str, event: str, **fields: object) -> None:
    if key not in held.said:
        held.said.add(key)
        log.warning(event, **fields)


def _filesystems(dirs: dict[str, Held]) -> dict[str, tuple[int, int]]:
    """(available, total) bytes by mount point, over the filesystems of the managed directories
    (bounded by the mounts, never by the directories)."""
    table = mounts.mount_table()
    out: dict[str, tuple[int, int]] = {}
    for path in dirs:
        with contextlib.suppress(OSError):
            st = os.statvfs(path)
            out[mounts.mount_point(path, table)] = (st.f_bavail * st.f_frsize,
                                                     st.f_blocks * st.f_frsize)
    return out
