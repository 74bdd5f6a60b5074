"""`janitor audit verify`: replay an audit log against the invariants of DESIGN.md.

Each deletion record is checked on its own (invariants 1-6: below the loaded step, not an interval
multiple, not the newest complete step nor a newer partial, not changed after the licensing marker,
licensed by valid markers, a canonical step name) and all records together (invariant 8: two
janitors never deleted in one directory over overlapping periods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from janitor import protocol
from janitor.protocol import Invalid


@dataclass(slots=True)
class Verdict:
    records: int = 0
    deletions: int = 0  # delete decisions checked (each one licensed, whether or not it happened)
    skipped: int = 0  # of those, moves that did not happen (the step stayed whole)
    violations: list[str] = field(default_factory=list)


def check_deletion(record: dict[str, Any]) -> list[str]:
    """The invariants one deletion record breaks (empty when it is sound)."""
    problems: list[str] = []
    policy = record.get("policy") or {}
    step, name = record.get("step"), str(record.get("name", ""))
    if step is None:  # a staging directory: only its name is checkable
        if not protocol.is_staging_name(name):
            problems.append(f"inv6: {name!r} is neither a step nor a staging directory")
        return problems
    if isinstance(protocol.parse_step_name(name), Invalid) or protocol.step_name(step) != name:
        problems.append(f"inv6: {name!r} is not the canonical name of step {step}")
    interval = policy.get("interval_to_keep")
    if interval and step % interval == 0:
        problems.append(f"inv2: step {step} is a multiple of interval_to_keep {interval}")
    newest = record.get("newest_complete")
    if newest is not None and (step == newest or (step > newest)):
        problems.append(f"inv3: step {step} is the newest complete step or newer ({newest})")
    if newest is None:
        problems.append(f"inv3: step {step} deleted while no step was complete")
    if policy.get("gated", True):
        problems.extend(_gated_problems(record, step))
    return problems


def _gated_problems(record: dict[str, Any], step: int) -> list[str]:
    problems: list[str] = []
    loaded, marker_ns = record.get("loaded_step"), record.get("marker_ns")
    consumers = record.get("consumers") or []
    if loaded is None or marker_ns is None:
        return [f"inv5: step {step} deleted without a valid loaded step"]
    if (record.get("policy") or {}).get("progress", "loaded-step") == "loaded-step":
        if not consumers or any(c.get("problem") or c.get("step") is None for c in consumers):
            problems.append(f"inv5: step {step} deleted while a marker was missing or invalid")
        elif loaded != min(c["step"] for c in consumers):
            problems.append(f"inv1: loaded step {loaded} is not the minimum over consumers")
    if step >= loaded:
        problems.append(f"inv1: step {step} >= loaded step {loaded}")
    if record.get("step_changed_ns", 0) >= marker_ns:
        problems.append(f"inv4: step {step} changed at or after the marker that licensed it")
    return problems


def verify(path: Path) -> Verdict:
    """Read the whole log (rotated files included) and collect every violation."""
    from janitor.audit import read_records

    verdict = Verdict()
    holders: dict[str, dict[tuple[str, int], list[int]]] = {}
    for file, line, record in read_records(path):
        verdict.records += 1
        if record is None:
            verdict.violations.append(f"{file}:{line}: not a JSON record (torn or edited line)")
            continue
        if record.get("event") == "skipped":
            verdict.skipped += 1
            continue
        if record.get("event") != "delete":
            continue
        verdict.deletions += 1
        where = f"{file}:{line}: {record.get('directory')}/{record.get('name')}"
        verdict.violations.extend(f"{where}: {p}" for p in check_deletion(record))
        span = holders.setdefault(str(record.get("directory")), {}).setdefault(
            (str(record.get("host")), int(record.get("pid", 0))), [])
        span.append(int(record.get("time_ns", 0)))
    verdict.violations.extend(_overlaps(holders))
    return verdict


def _overlaps(holders: dict[str, dict[tuple[str, int], list[int]]]) -> list[str]:
    """Invariant 8: per directory, the deleting processes' active periods never overlap."""
    problems = []
    for directory, by_holder in holders.items():
        spans = sorted((min(t), max(t), holder) for holder, t in by_holder.items())
        latest_end, latest = -1, ("", 0)
        for start, end, holder in spans:
            if start <= latest_end:
                problems.append(f"inv8: {directory}: {latest[0]} pid {latest[1]} and {holder[0]} "
                                f"pid {holder[1]} both deleted in overlapping periods")
            if end > latest_end:
                latest_end, latest = end, holder
    return problems
