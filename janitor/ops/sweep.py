"""`janitor sweep`: one pass over every managed directory under the given roots, then exit.

Each directory is scanned, planned and (unless dry run) executed through the same ManagedDirectory
the daemon uses; leftovers of a killed run are reclaimed first. Problems are one line each on
stderr; the exit code says what happened (janitor.exitcodes).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from janitor import exitcodes, protocol
from janitor.budget import NO_BUDGET, Budget
from janitor.fs import lock, reaper, reserved
from janitor.fs.paths import check_root, discover
from janitor.fs.scan import deepen
from janitor.fs.sizes import tree_size
from janitor.layouts import AUTO, Layout, searched
from janitor.model import ScanOptions, Snapshot
from janitor.ops.audit import AuditLog
from janitor.ops.managed import ManagedDirectory
from janitor.ops.pinned import look_pinned
from janitor.ops.report import DirectoryReport, human_bytes
from janitor.policy import Plan, Policy, plan, relieve, snapshot_context


@dataclass(frozen=True, slots=True)
class SweepRequest:
    roots: tuple[str, ...]
    policy: Policy
    options: ScanOptions
    dry_run: bool
    max_depth: int
    audit: AuditLog | None = None
    reclaim_workers: int = 1
    budget: Budget = NO_BUDGET


def sweep(request: SweepRequest, problem: Callable[[str], None],
          on_directory: Callable[[DirectoryReport], None]) -> tuple[int, list[DirectoryReport]]:
    """Sweep every root, reporting each directory when done; returns (exit code, reports)."""
    codes: list[int] = []
    reports: list[DirectoryReport] = []
    for root in request.roots:
        bad = check_root(root)
        if bad is not None:
            codes.append(bad[0])
            problem(bad[1])
            continue
        managed = discover(root, request.max_depth,
                           layouts=searched(request.options.layout)).managed
        if not managed:
            what = _what_steps(request.options.layout)
            problem(f"{protocol.printable(root)}: no {what} directory or LOADED_STEP marker "
                    f"within depth {request.max_depth}; nothing to do")
        for path in managed:
            report = sweep_directory(path, request)
            codes.append(_code(report, request.dry_run))
            report.pressure = pressure_of(report, request.budget, request.dry_run)
            for line in [*_problems(report), *report.pressure]:
                problem(line)
            reports.append(report)
            on_directory(report)
    return exitcodes.worst(codes), reports


def sweep_directory(path: str, request: SweepRequest) -> DirectoryReport:
    """One managed directory, start to finish; never raises for a problem a user can meet."""
    report = DirectoryReport(path)
    shown = protocol.printable(path)
    try:
        with ManagedDirectory(path, dry_run=request.dry_run, policy=request.policy,
                              options=request.options, audit=request.audit) as directory:
            report.leftover = directory.reclaim(workers=request.reclaim_workers)
            # Every step's pin read (not only the doomed ones'), so the output shows a step
            # pinned since the marker as `pinned`; the plan is the one executed.
            snapshot, decided = look_pinned(directory)
            if request.budget.relieves:
                snapshot, decided = relieved(directory, snapshot, decided, request.budget,
                                             report.sizes)
            result = directory.execute(snapshot, decided)
            report.result = result
            report.layout = directory.options.layout.name
            for trashed in result.trashed:
                stats = directory.reclaim([trashed.trash_name], workers=request.reclaim_workers)
                report.sizes[trashed.entry.name] = stats.bytes
                report.reclaimed.add(stats)
            for entry in result.snapshot.entries:
                if entry.name not in report.sizes:
                    report.sizes[entry.name] = tree_size(directory.fd, entry.name)
    except lock.LockHeldError as exc:
        report.refused = protocol.printable(str(exc))
    except reserved.UnsafeObjectError as exc:
        report.refused = f"{shown}: {exc.strerror}"
    except OSError as exc:
        moved = 0 if report.result is None else len(report.result.trashed)
        report.error = f"{shown}: {_os_error_line(exc, moved)}"
    else:
        if result.plan.halted is not None:
            report.refused = (f"{shown}: {result.plan.halted}; deleting nothing here until "
                              f"{_until(directory, result.snapshot, result.plan.halted)}")
    return report


def relieved(directory: ManagedDirectory, snapshot: Snapshot, decided: Plan, budget: Budget,
             sizes: dict[str, int]) -> tuple[Snapshot, Plan]:
    """--pressure relieve: over --max-bytes, the plan again with the soft-kept steps chosen
    to go (oldest first, policy.relieve), those read in depth first (a pin found keeps one).
    Each entry's size is measured into `sizes` (the report's: not measured again after)."""
    sizes.update((e.name, tree_size(directory.fd, e.name)) for e in snapshot.entries)
    doomed = {d.entry.name for d in decided.doomed}
    deficit = budget.relieve_deficit(sum(b for n, b in sizes.items() if n not in doomed))
    if not deficit:
        return snapshot, decided
    context, _ = snapshot_context(snapshot, directory.policy)
    chosen = relieve(decided.decisions, directory.policy, context,
                     lambda name: sizes.get(name, 0), deficit)
    if not chosen:
        return snapshot, decided
    names = frozenset(e.name for e in snapshot.steps if e.number in chosen)
    snapshot = deepen(directory.fd, snapshot, names | doomed, directory.options)
    return snapshot, plan(snapshot, directory.policy, chosen)


def pressure_of(report: DirectoryReport, budget: Budget, dry_run: bool) -> list[str]:
    """What --max-bytes and --min-free say of a directory after its sweep (alert mode: one line
    each, nothing more deleted)."""
    if not budget.any or report.result is None:
        return []
    shown = protocol.printable(report.path)
    gone = {d.entry.name for d in report.result.plan.doomed} if dry_run else \
        {t.entry.name for t in report.result.trashed}
    used = sum(size for name, size in report.sizes.items() if name not in gone)
    lines = []
    over = budget.over(used)
    if over:
        lines.append(f"{shown}: pressure: holds {human_bytes(used)}, {human_bytes(over)} over "
                     f"--max-bytes {human_bytes(budget.max_bytes or 0)}; nothing more is deleted "
                     "than the rules allow (janitor status says what keeps it)")
    try:
        vfs = os.statvfs(report.path)
    except OSError:
        return lines
    avail, total = vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize
    short = budget.short(avail, total)
    if short:
        lines.append(f"{shown}: pressure: {human_bytes(avail)} free on its filesystem, "
                     f"{human_bytes(short)} short of --min-free; nothing more is deleted than "
                     "the rules allow")
    return lines


def _until(directory: ManagedDirectory, snapshot: Snapshot, halted: str) -> str:
    """What ends a halt: a layout told apart, a trainer's pointer set right, or (most often)
    the consumer's marker written again."""
    if directory.refusal is not None:
        return "its layout can be told (or --layout names it)"
    if any(halted.startswith(protocol.printable(p.filename)) for p in snapshot.pointers):
        return "the trainer's pointer names a step that is here"
    return "the consumer writes a valid marker"


def _what_steps(layout: Layout) -> str:
    """How the steps a layout looks for are named, for "found none" messages."""
    if layout.name == AUTO:
        return "step (of any layout)"
    return f"{layout.prefix}*{layout.suffix}" if layout.prefix else "N"


def _os_error_line(exc: OSError, moved: int = 0) -> str:
    """One line for an OSError that ended a directory's sweep, saying what was done before it:
    steps already moved into the trash are gone from the tree (whole, in the trash), and a later
    run reclaims them."""
    if moved:
        return (f"moved {_steps(moved)} to the trash, then: {exc.strerror or exc}; what is in the "
                "trash is reclaimed on the next run")
    if exc.errno == errno.EROFS:
        return "read-only filesystem; nothing can be deleted here (use --dry-run to inspect)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ("permission denied writing here; run as a user who can write this directory, "
                "or use --dry-run to inspect")
    if exc.errno == errno.ENOSPC:
        return "no space left to record the lock; free some space by hand first"
    return f"{exc.strerror or exc}; nothing was deleted in this directory"


def _steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def _reclaim_lines(report: DirectoryReport) -> list[str]:
    """One line per trash entry whose reclaim failed, saying what was done and what was not."""
    path = protocol.printable(report.path)
    trashed = [] if report.result is None else report.result.trashed
    steps = {protocol.printable(t.trash_name): t.entry.number for t in trashed}
    lines = []
    for name, why in report.leftover.failed.items():
        what = _what(name, reaper.trash_step(name))
        lines.append(f"{path}: could not reclaim {what} left in the trash by an earlier run: "
                     f"{why}; retried on the next run")
    for name, why in report.reclaimed.failed.items():
        lines.append(f"{path}: moved {_steps(len(trashed))} to the trash; could not reclaim "
                     f"{_what(name, steps.get(name))}: {why}; it stays in the trash (the step is "
                     "gone from the tree) and is retried on the next run")
    return lines


def _what(trash_name: str, step: int | None) -> str:
    return trash_name + (f" (step {step})" if step is not None else "")


def _problems(report: DirectoryReport) -> list[str]:
    shown = protocol.printable(report.path)
    lines = [line for line in (report.error, report.refused) if line]
    lines.extend(_reclaim_lines(report))
    if report.result is not None:
        # Foreign step-like names are never touched, but a person should hear about each once.
        lines.extend(f"{shown}: {protocol.printable(f.name)}: foreign, never touched "
                     f"({f.reason})" for f in report.result.snapshot.foreign)
        lines.extend(f"{shown}: {protocol.printable(s.entry.name)} kept: {s.why}"
                     for s in report.result.skipped if s.failed)
    failed = report.reclaimed.failed.keys() | report.leftover.failed.keys()
    pending = [name for name in report.reclaimed.pending + report.leftover.pending
               if name not in failed]
    if pending:
        lines.append(f"{shown}: {len(pending)} trash entries are busy (open files on NFS?);"
                     " they will be retried on the next run")
    return lines


def _code(report: DirectoryReport, dry_run: bool) -> int:
    if report.error or report.reclaimed.failed or report.leftover.failed:
        return exitcodes.ERROR
    if report.result is not None and any(s.failed for s in report.result.skipped):
        return exitcodes.ERROR
    if report.refused:
        return exitcodes.REFUSED
    if report.deleted_count(dry_run):
        return exitcodes.DELETED
    return exitcodes.NOTHING_TO_DO
