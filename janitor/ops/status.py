"""`janitor status`: what an operator needs to know about each managed directory, read-only."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from janitor import exitcodes, protocol
from janitor.budget import NO_BUDGET, Budget, Holding, held_by
from janitor.fs import lock, presence
from janitor.fs.paths import check_root, discover
from janitor.fs.sizes import tree_size
from janitor.layouts import searched
from janitor.model import ScanOptions
from janitor.ops.managed import ManagedDirectory
from janitor.ops.pinned import look_pinned
from janitor.ops.recorded import choose
from janitor.ops.report import TRASH_HOLDER, gate_text, held_text, holder, human_bytes, trash_usage
from janitor.policy import Policy, snapshot_context


def collect(roots: tuple[str, ...], policy: Policy, options: ScanOptions, max_depth: int,
            problem: Callable[[str], None], *, explicit: bool = False,
            budget: Budget = NO_BUDGET) -> tuple[int, list[dict[str, object]]]:
    """One plain-data report per managed directory under `roots`; the daemon's lock is not taken.

    Where a janitor holds a directory's lock, the plan shown is made with the policy its lock
    file records, unless `explicit` (policy flags were given): then with the flags, and a
    warning says where they differ from the holder's.
    """
    code = exitcodes.NOTHING_TO_DO
    reports: list[dict[str, object]] = []
    peers = presence.peers()  # daemons holding no lock (dry-run, standby) say what they watch
    for root in roots:
        bad = check_root(root)
        if bad is not None and bad[0] != exitcodes.REFUSED:
            problem(bad[1])
            code = bad[0]
            continue
        for path in discover(root, max_depth, layouts=searched(options.layout)).managed:
            try:
                reports.append(_with_pressure(_directory(path, policy, options, explicit,
                                                         peers), budget))
            except OSError as exc:
                problem(f"{protocol.printable(path)}: {exc.strerror or exc}")
                code = exitcodes.ERROR
    return code, reports


def _directory(path: str, policy: Policy, options: ScanOptions, explicit: bool,
               peers: list[dict[str, object]]) -> dict[str, object]:
    with ManagedDirectory(path, dry_run=True, policy=policy, options=options) as directory:
        held, holder_record = lock.inspect(directory.fd)
        choice = choose(policy, options, holder_record if held else None, explicit, held=held)
        if choice.source == "holder":  # else: as opened (with auto: the detected layout)
            directory.policy, directory.options = choice.policy, choice.options
        snapshot, plan = look_pinned(directory)
        now = time.time_ns()
        by_decision: dict[str, dict[str, int]] = {}
        context, _ = snapshot_context(snapshot, directory.policy)
        holding: list[tuple[str, int]] = []
        for decision in plan.decisions:
            key = f"{decision.action}:{decision.reason.value}"
            bucket = by_decision.setdefault(key, {"count": 0, "bytes": 0})
            size = tree_size(directory.fd, decision.entry.name)
            bucket["count"] += 1
            bucket["bytes"] += size
            holding.append((holder(decision, directory.policy, context), size))
        trash = trash_usage(directory)
        if trash[1]:
            holding.append((TRASH_HOLDER, trash[1]))
        split = held_by(holding)
        behind = gate_text(split, plan.progress.loaded_step, plan.newest_complete,
                           snapshot.consumers, directory.policy)
        vfs = os.statvfs(directory.fd)
        janitors = presence.roles_for(peers, directory.dev, directory.ino)
    newest = plan.newest_complete
    loaded = plan.progress.loaded_step
    return {
        "path": protocol.printable(path),
        "consumers": [{"file": protocol.printable(c.filename), "step": c.step, "problem": c.problem,
                       "age_s": round((now - c.mtime_ns) / 1e9, 1) if c.mtime_ns else None}
                      for c in snapshot.consumers],
        "loaded_step": loaded,
        "progress_problem": plan.progress.problem,
        "newest_complete": newest,
        "lag_steps": None if loaded is None or newest is None else max(0, newest - loaded),
        "decisions": by_decision,
        "foreign": len(snapshot.foreign),
        "trash_entries": trash[0],
        "trash_bytes": trash[1],
        "free_bytes": vfs.f_bavail * vfs.f_frsize,
        "size_bytes": vfs.f_blocks * vfs.f_frsize,
        "daemon": {"running": held, **(holder_record or {})} if holder_record or held
        else {"running": False},
        # Every janitor of this network namespace that announces this directory: the lock's
        # holder ("active", with its watch mode), a dry run or a standby (neither holds it).
        "janitors": janitors,
        "policy": str(choice.policy),
        "complete_markers": list(directory.options.complete_markers),
        "layout": directory.options.layout.name,
        "layout_problem": directory.refusal,
        "policy_source": choice.source,
        "policy_warning": choice.warning,
        # What holds the bytes, by keep reason (ops.report.holder), largest first, and who is
        # behind when the consumer gate holds the most.
        "held": [h._asdict() for h in split],
        "behind": behind,
    }


def _with_pressure(report: dict[str, object], budget: Budget) -> dict[str, object]:
    """--max-bytes / --min-free against what the report measured (status deletes nothing)."""
    decisions = report["decisions"]
    assert isinstance(decisions, dict)
    used = sum(int(b["bytes"]) for b in decisions.values()) + int(str(report["trash_bytes"]))
    report["bytes"] = used
    report["pressure"] = {"over_max_bytes": budget.over(used) if budget.max_bytes else None,
                          "short_of_min_free": budget.short(int(str(report["free_bytes"])),
                                                            int(str(report["size_bytes"])))
                          if budget.min_free_bytes or budget.min_free_fraction else None,
                          **budget.describe()}
    return report


def render(reports: list[dict[str, object]]) -> list[str]:
    """Readable lines for people; the JSON form carries the same facts."""
    lines: list[str] = []
    for report in reports:
        lines.append(protocol.printable(str(report["path"])))
        daemon = report["daemon"]
        assert isinstance(daemon, dict)
        if daemon.get("running"):
            lines.append(f"  daemon:    running, {lock.describe_holder(daemon)}")
        else:
            lines.append("  daemon:    none holds the lock")
        janitors = report.get("janitors")
        for j in janitors if isinstance(janitors, list) else []:
            # A peer's words are shown, never trusted: each is made printable.
            said = {k: protocol.printable(str(v)) for k, v in j.items()}
            watch = f", watching by {said['watch']}" if j.get("watch") else ""
            what = {"active": "holds the lock", "dry-run": "dry run, holds no lock, deletes "
                    "nothing", "standby": "standby, waits for the lock"}.get(said["role"],
                                                                             said["role"])
            lines.append(f"  janitor:   pid {said['pid']} on {said['host']}: {what}{watch}")
        source = {"holder": "the running janitor's", "flags": "from the flags given",
                  "defaults": "the defaults"}[str(report["policy_source"])]
        markers = report["complete_markers"]
        assert isinstance(markers, list)
        lines.append(f"  policy:    {report['policy']}; complete when "
                     f"{' or '.join(map(protocol.printable, markers))} ({source})")
        if report.get("layout") not in (None, "step"):
            lines.append(f"  layout:    {report['layout']}")
        if report.get("layout_problem"):
            lines.append(f"  layout:    deleting nothing: {report['layout_problem']}")
        if report["policy_warning"]:
            lines.append(f"  warning:   {report['policy_warning']}")
        consumers = report["consumers"]
        assert isinstance(consumers, list)
        for c in consumers:
            value = c["step"] if c["problem"] is None else f"INVALID ({c['problem']})"
            lines.append(f"  consumer:  {protocol.printable(c['file'])} = {value}, "
                         f"written {c['age_s']} s ago")
        if report["progress_problem"]:
            lines.append(f"  progress:  deleting nothing: {report['progress_problem']}")
        lines.append(f"  steps:     newest complete {report['newest_complete']}, "
                     f"loaded {report['loaded_step']}, lag {report['lag_steps']} steps")
        decisions = report["decisions"]
        assert isinstance(decisions, dict)
        for key, bucket in sorted(decisions.items()):
            lines.append(f"  {key:<32} {bucket['count']:>6} steps  {human_bytes(bucket['bytes'])}")
        lines.append(f"  trash:     {report['trash_entries']} entries, "
                     f"{human_bytes(int(str(report['trash_bytes'])))} pending")
        lines.append(f"  free:      {human_bytes(int(str(report['free_bytes'])))}")
        lines.extend(_pressure_lines(report))
    return lines


def _pressure_lines(report: dict[str, object]) -> list[str]:
    pressure = report.get("pressure")
    if not isinstance(pressure, dict):
        return []
    lines = []
    if pressure.get("over_max_bytes"):
        lines.append(f"  pressure:  holds {human_bytes(int(str(report['bytes'])))}, "
                     f"{human_bytes(int(pressure['over_max_bytes']))} over --max-bytes "
                     f"{human_bytes(int(pressure['max_bytes']))}")
    if pressure.get("short_of_min_free"):
        lines.append(f"  pressure:  {human_bytes(int(pressure['short_of_min_free']))} short of "
                     "--min-free on its filesystem")
    if not lines:
        return lines
    held = report.get("held")
    split = [Holding(**h) for h in held] if isinstance(held, list) else []
    lines.append(f"  held by:   {held_text(split)}")
    if report.get("behind"):
        lines.append(f"  gate:      {report['behind']}")
    lines.append("  (--pressure relieve deletes what soft rules alone keep, oldest first; "
                 "never a step a hard rule keeps)" if pressure.get("pressure") == "relieve"
                 else "  (--pressure alert: nothing more is deleted than the rules allow)")
    return lines
