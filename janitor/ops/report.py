"""Turn what a sweep saw and did into text for people and JSON for programs (the same facts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from janitor import protocol
from janitor.fs.reaper import ReclaimStats, trash_step
from janitor.ops.managed import PassResult


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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
