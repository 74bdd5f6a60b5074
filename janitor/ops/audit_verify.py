"""`janitor audit verify`: replay an audit log against the invariants (docs/design.md).

Each deletion record is checked on its own (invariants 1-6: below the loaded step, not an interval
multiple, not the newest complete step nor a newer partial, not changed after the licensing marker,
licensed by valid markers, a canonical step name) and all records together (invariant 8: two
janitors never deleted in one directory over overlapping periods).

The log is evidence, not trusted input: a line that is not UTF-8, not JSON, nested too deeply, or a
record whose fields have the wrong type is a violation with its file and line, never a crash. Each
record's fields are checked against `record_problems` before any invariant is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from janitor import protocol
from janitor.ops.audit import FORMAT_VERSION, json_kind, read_log
from janitor.protocol import Invalid

MAX_STEP = 10**protocol.MAX_STEP_DIGITS - 1
MAX_INT64 = 2**63 - 1  # times in ns, pids: what the kernel can report
MAX_UINT64 = 2**64 - 1  # st_dev, st_ino


@dataclass(slots=True)
class Verdict:
    records: int = 0
    deletions: int = 0  # delete decisions checked (each one licensed, whether or not it happened)
    skipped: int = 0  # of those, moves that did not happen (the step stayed whole)
    violations: list[str] = field(default_factory=list)


# --- the record schema: each field's check returns what is wrong with a value, or None ---------

Check = Callable[[Any], str | None]


def _integer(low: int = 0, high: int | None = None, *, null: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and null:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{json_kind(value)}, expected {'an integer or null' if null else 'an integer'}"
        if value < low or (high is not None and value > high):
            return f"{_short(value)} is out of range"
        return None
    return check


def _of(kind: type, words: str, *, null: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if value is None and null:
            return None
        if isinstance(value, kind):
            return None
        return f"{json_kind(value)}, expected {words}{' or null' if null else ''}"
    return check


def _number(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    return f"{json_kind(value)}, expected a number"


def _one_of(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in allowed:
            return None
        shown = protocol.printable(value)[:40] if isinstance(value, str) else json_kind(value)
        return f"{shown}, expected one of {', '.join(allowed)}"
    return check


_STEP = _integer(0, MAX_STEP, null=True)
_NS = _integer(0, MAX_INT64)
_NS_OR_NULL = _integer(0, MAX_INT64, null=True)
_TEXT = _of(str, "a string")
_TEXT_OR_NULL = _of(str, "a string", null=True)

# field: (check, required)
_DELETE_FIELDS: dict[str, tuple[Check, bool]] = {
    "v": (_integer(FORMAT_VERSION, FORMAT_VERSION), True),
    "time_ns": (_NS, True),
    "host": (_TEXT, True),
    "pid": (_integer(0, MAX_INT64), True),
    "directory": (_TEXT, True),
    "name": (_TEXT, True),
    "step": (_STEP, True),
    "reason": (_TEXT, True),
    "complete": (_of(bool, "a boolean"), False),
    "step_changed_ns": (_NS, True),
    "dev": (_integer(0, MAX_UINT64), False),
    "ino": (_integer(0, MAX_UINT64), False),
    "loaded_step": (_STEP, True),
    "marker_ns": (_NS_OR_NULL, True),
    "newest_complete": (_STEP, True),
    "scanned_ns": (_NS, False),
}
_POLICY_FIELDS: dict[str, tuple[Check, bool]] = {
    "gated": (_of(bool, "a boolean"), False),
    "interval_to_keep": (_integer(1, MAX_STEP, null=True), False),
    "keep_last": (_integer(0, MAX_STEP), False),
    "partial_grace_s": (_number, False),
    "progress": (_one_of("loaded-step", "receiver-ready"), False),
}
_CONSUMER_FIELDS: dict[str, tuple[Check, bool]] = {
    "file": (_TEXT, True),
    "step": (_STEP, True),
    "mtime_ns": (_NS_OR_NULL, False),
    "problem": (_TEXT_OR_NULL, False),
}
_SKIPPED_FIELDS: dict[str, tuple[Check, bool]] = {
    "directory": (_TEXT, True), "name": (_TEXT, True), "step": (_STEP, True),
    "why": (_TEXT, False),
}


def _fields(record: dict[str, Any], schema: dict[str, tuple[Check, bool]],
            prefix: str = "") -> list[str]:
    problems = []
    for name, (check, required) in schema.items():
        if name not in record:
            if required:
                problems.append(f"{prefix}{name}: missing")
            continue
        wrong = check(record[name])
        if wrong is not None:
            problems.append(f"{prefix}{name}: {wrong}")
    return problems


def record_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with the fields of one delete record (types, ranges), empty when it is
    well-formed; only then are its invariants checked."""
    problems = _fields(record, _DELETE_FIELDS)
    policy = record.get("policy")
    if not isinstance(policy, dict):
        problems.append(f"policy: {json_kind(policy) if 'policy' in record else 'missing'}, "
                        "expected an object")
    else:
        problems.extend(_fields(policy, _POLICY_FIELDS, "policy."))
    consumers = record.get("consumers")
    if not isinstance(consumers, list):
        problems.append(f"consumers: {json_kind(consumers) if 'consumers' in record else 'missing'}"
                        ", expected an array")
    else:
        for index, consumer in enumerate(consumers):
            if not isinstance(consumer, dict):
                problems.append(f"consumers[{index}]: {json_kind(consumer)}, expected an object")
            else:
                problems.extend(_fields(consumer, _CONSUMER_FIELDS, f"consumers[{index}]."))
    return problems


def _short(value: object) -> str:
    """A bounded rendering of a scalar for a message (a 4000-digit number is not shown whole)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = protocol.printable(str(value)) if isinstance(value, (str, int, float)) else ""
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


# --- the invariants ----------------------------------------------------------------------------

def check_deletion(record: dict[str, Any]) -> list[str]:
    """The invariants one well-formed deletion record breaks (empty when it is sound)."""
    problems: list[str] = []
    policy = record.get("policy") or {}
    step, name = record.get("step"), str(record.get("name", ""))
    shown = protocol.printable(name)
    if step is None:  # a staging directory: only its name is checkable
        if not protocol.is_staging_name(name):
            problems.append(f"inv6: '{shown}' is neither a step nor a staging directory")
        return problems
    if isinstance(protocol.parse_step_name(name), Invalid) or protocol.step_name(step) != name:
        problems.append(f"inv6: '{shown}' is not the canonical name of step {step}")
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
    """Read the whole log (rotated files included) and collect every violation; never raises
    for anything found in the files."""
    verdict = Verdict()
    holders: dict[str, dict[tuple[str, int], list[int]]] = {}
    for item in read_log(path):
        if item.line == 0:  # a whole file could not be read
            verdict.violations.append(f"{item.file}: {item.problem}")
            continue
        verdict.records += 1
        at = f"{item.file}:{item.line}"
        record = item.record
        if record is None:
            verdict.violations.append(f"{at}: {item.problem}")
            continue
        event = record.get("event")
        if not isinstance(event, str):
            kind = json_kind(event) if "event" in record else "missing"
            verdict.violations.append(f"{at}: malformed record: event: {kind}, expected a string")
            continue
        if event == "skipped":
            verdict.skipped += 1
            wrong = _fields(record, _SKIPPED_FIELDS)
            if wrong:
                verdict.violations.append(f"{at}: malformed skipped record: {'; '.join(wrong)}")
            continue
        if event != "delete":
            continue
        verdict.deletions += 1
        wrong = record_problems(record)
        if wrong:
            verdict.violations.append(f"{at}: malformed delete record: {'; '.join(wrong)}")
            continue
        where = f"{at}: {protocol.printable(record['directory'])}/" \
                f"{protocol.printable(record['name'])}"
        try:
            verdict.violations.extend(f"{where}: {p}" for p in check_deletion(record))
        except Exception as exc:  # noqa: BLE001 (a backstop: a record the schema let through)
            verdict.violations.append(f"{where}: could not be checked ({type(exc).__name__})")
            continue
        span = holders.setdefault(record["directory"], {}).setdefault(
            (record["host"], record["pid"]), [])
        span.append(record["time_ns"])
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
                problems.append(f"inv8: {protocol.printable(directory)}: "
                                f"{protocol.printable(latest[0])} pid {latest[1]} and "
                                f"{protocol.printable(holder[0])} pid {holder[1]} both deleted "
                                "in overlapping periods")
            if end > latest_end:
                latest_end, latest = end, holder
    return problems
