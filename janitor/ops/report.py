"""Turn what a sweep saw and did into text for people and JSON for programs (the same facts)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from janitor import protocol
from janitor.budget import Holding
from janitor.fs import reaper
from janitor.fs.reaper import ReclaimStats, trash_step
from janitor.fs.sizes import tree_size
from janitor.model import Consumer
from janitor.ops.managed import ManagedDirectory, PassResult
from janitor.policy import SOFT_REASONS, Context, Decision, Policy, Reason, gate_allows

# What holds the bytes of the trash (being reclaimed) in a per-reason split.
TRASH_HOLDER = "trash"


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def holder(decision: Decision, policy: Policy, context: Context) -> str:
    """The rule that holds a step's bytes, for the per-reason split of a directory under
    pressure: its reason, except that a step kept by a soft rule, or needed by another kept
    step, which the consumer gate would keep too is held by the gate (dropping the other rule
    would not free it, and --pressure relieve never takes it)."""
    entry = decision.entry
    if decision.delete or decision.reason not in (*SOFT_REASONS, Reason.DEPENDED_ON) or \
            gate_allows(entry, policy, context):
        return decision.reason.value
    loaded = context.progress.loaded_step
    if loaded is None or entry.number is None or entry.number >= loaded:
        return Reason.AT_OR_ABOVE_LOADED.value
    return Reason.CHANGED_AFTER_MARKER.value


def held_text(held: Sequence[Holding], limit: int = 6) -> str:
    """`at-or-above-loaded 12.0 GiB (9 steps), interval-multiple 3.1 GiB (31 steps), ...`:
    the largest `limit` holders, and how many bytes the rest hold."""
    parts = []
    for holding in held[:limit]:
        if holding.reason == TRASH_HOLDER:
            parts.append(f"the trash {human_bytes(holding.bytes)} (being reclaimed)")
        else:
            steps = f"{holding.steps} step" + ("" if holding.steps == 1 else "s")
            parts.append(f"{holding.reason} {human_bytes(holding.bytes)} ({steps})")
    rest = held[limit:]
    if rest:
        parts.append(f"{len(rest)} more reasons {human_bytes(sum(h.bytes for h in rest))}")
    return ", ".join(parts) if parts else "nothing"


def gate_text(held: Sequence[Holding], loaded: int | None, newest: int | None,
              consumers: Sequence[Consumer], policy: Policy) -> str | None:
    """When the consumer gate holds the most: who is behind and by how much (None otherwise)."""
    top = held[0].reason if held else None
    if top == Reason.CHANGED_AFTER_MARKER.value:
        return ("the largest holder was written after the consumer's marker (a resumed "
                "trainer?): it goes once a consumer writes its marker again")
    if top != Reason.AT_OR_ABOVE_LOADED.value or loaded is None:
        return None
    if policy.progress == "receiver-ready":
        source = f"the newest .receiver_ready is in step {loaded}"
    else:
        behind = [c for c in consumers if c.step == loaded]
        source = ", ".join(f"{protocol.printable(c.filename)}={c.step}" for c in behind) or \
            f"loaded step {loaded}"
    lag = "" if newest is None else \
        f", newest complete {newest}, lag {max(0, newest - loaded)} steps"
    return f"the consumer is behind: {source}{lag}"


def trash_usage(directory: ManagedDirectory) -> tuple[int, int]:
    """Entries and bytes in a directory's trash (0, 0 without one): what is being reclaimed."""
    trash_fd = reaper.open_trash(directory.fd, directory.mount_id, create=False)
    if trash_fd is None:
        return 0, 0
    try:
        names = reaper.trash_entries(trash_fd)
        return len(names), sum(tree_size(trash_fd, name) for name in names)
    finally:
        os.close(trash_fd)


@dataclass(slots=True)
class DirectoryReport:
    """One managed directory's outcome in a sweep."""

    path: str
    result: PassResult | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    reclaimed: ReclaimStats = field(default_factory=ReclaimStats)
    leftover: ReclaimStats = field(default_factory=ReclaimStats)
    refused: str | None = None
    error: str | None = None
    layout: str | None = None  # the layout the directory was read with (detected with auto)
    pressure: list[str] = field(default_factory=list)  # --max-bytes / --min-free lines
    # Under --max-bytes / --min-free: each entry's holder (see `holder`), and the policy the
    # directory was planned with (what says who is behind).
    holders: dict[str, str] = field(default_factory=dict)
    policy: Policy | None = None
    held: list[Holding] = field(default_factory=list)  # by reason, when under pressure

    def deleted_count(self, dry_run: bool) -> int:
        if self.result is None:
            return 0
        return len(self.result.plan.doomed) if dry_run else len(self.result.trashed)

    def freed_bytes(self, dry_run: bool) -> int:
        if self.result is None:
            return 0
        if dry_run:
            return sum(self.sizes.get(d.entry.name, 0) for d in self.result.plan.doomed)
        return self.reclaimed.bytes


def directory_text(report: DirectoryReport, dry_run: bool) -> list[str]:
    """The lines a person reads for one directory: a header, one line per entry, foreign names."""
    if report.result is None:
        return []
    snap, plan = report.result.snapshot, report.result.plan
    layout = f", layout {report.layout}" if report.layout not in (None, "step") else ""
    lines = [f"{protocol.printable(report.path)}: {_progress_text(report)}{layout}"]
    width = max((len(protocol.printable(e.name)) for e in snap.entries), default=8)
    for decision in plan.decisions:
        name = protocol.printable(decision.entry.name)
        size = report.sizes.get(decision.entry.name)
        action = decision.action if not (dry_run and decision.delete) else "would-delete"
        sized = human_bytes(size) if size is not None else ""
        lines.append(f"  {name:<{width}}  {action:<12}  {decision.reason.value:<20}  {sized:>10}")
    lines.extend(f"  {protocol.printable(f.name):<{width}}  {'foreign':<12}  {f.reason}"
                 for f in snap.foreign)
    lines.extend(f"  {protocol.printable(s.entry.name):<{width}}  {'skipped':<12}  {s.why}"
                 for s in report.result.skipped)
    return lines


def deletion_lines(report: DirectoryReport, dry_run: bool) -> list[str]:
    """`sweep --quiet`: one line per step deleted (with --dry-run: that would be), naming its
    directory, and nothing for what is kept; problems go to stderr as always."""
    if report.result is None:
        return []
    path = protocol.printable(report.path)
    if dry_run:
        gone = [(d.entry, d.reason.value) for d in report.result.plan.doomed]
    else:
        reasons = {d.entry.name: d.reason.value for d in report.result.plan.doomed}
        gone = [(t.entry, reasons[t.entry.name]) for t in report.result.trashed]
    action = "would-delete" if dry_run else "deleted"
    lines = []
    for entry, reason in gone:
        size = report.sizes.get(entry.name)
        sized = human_bytes(size) if size is not None else ""
        lines.append(f"{path}/{protocol.printable(entry.name)}  {action}  {reason}  {sized}"
                     .rstrip())
    return lines


def _progress_text(report: DirectoryReport) -> str:
    assert report.result is not None
    plan, snap = report.result.plan, report.result.snapshot
    parts = []
    if plan.progress.problem is not None:
        parts.append(f"no valid progress marker ({plan.progress.problem})")
    elif plan.progress.loaded_step is not None:
        markers = ", ".join(f"{protocol.printable(c.filename)}={c.step}" for c in snap.consumers)
        parts.append(f"loaded step {plan.progress.loaded_step} ({markers or 'sentinels'})")
    else:
        parts.append("not gated")
    newest = plan.newest_complete
    parts.append(f"newest complete {newest}" if newest is not None else "no complete step")
    return ", ".join(parts)


def directory_json(report: DirectoryReport, dry_run: bool) -> dict[str, object]:
    """The same facts as directory_text, as plain data."""
    out: dict[str, object] = {"path": protocol.printable(report.path), "refused": report.refused,
                              "error": report.error, "layout": report.layout,
                              "pressure": report.pressure}
    if report.result is None:
        return out
    snap, plan = report.result.snapshot, report.result.plan
    out.update({
        "loaded_step": plan.progress.loaded_step,
        "progress_problem": plan.progress.problem,
        "newest_complete": plan.newest_complete,
        "consumers": [{"file": protocol.printable(c.filename),
                       "consumer": protocol.printable(c.name), "step": c.step,
                       "problem": c.problem} for c in snap.consumers],
        "pointers": [{"file": protocol.printable(p.filename), "step": p.step,
                      "problem": p.problem} for p in snap.pointers],
        "decisions": [{"name": protocol.printable(d.entry.name), "step": d.entry.number,
                       "action": d.action, "reason": d.reason.value,
                       "complete": d.entry.complete,
                       "bytes": report.sizes.get(d.entry.name)} for d in plan.decisions],
        "foreign": [{"name": protocol.printable(f.name), "reason": f.reason}
                    for f in snap.foreign],
        "skipped": [{"name": protocol.printable(s.entry.name), "why": s.why}
                    for s in report.result.skipped],
        "deleted": [protocol.printable(d.entry.name) for d in plan.doomed] if dry_run
        else [protocol.printable(t.entry.name) for t in report.result.trashed],
        "freed_bytes": report.freed_bytes(dry_run),
        "held": [h._asdict() for h in report.held],
        "reclaimed_files": report.reclaimed.files + report.leftover.files,
        "trash_pending": report.leftover.pending + report.reclaimed.pending,
        "reclaim_problems": report.reclaimed.problems + report.leftover.problems,
        "reclaim_failed": _reclaim_failed(report),
    })
    return out


def _reclaim_failed(report: DirectoryReport) -> list[dict[str, object]]:
    """Each trash entry whose reclaim failed: what it was, why, and whether it was left by an
    earlier run (`leftover`) or moved into the trash by this one (the step is gone either way)."""
    return [{"trash_name": name, "step": trash_step(name), "why": why, "leftover": leftover}
            for leftover, stats in ((True, report.leftover), (False, report.reclaimed))
            for name, why in stats.failed.items()]
