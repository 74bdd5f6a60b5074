"""`janitor audit verify` on hostile logs (issue 10, point 6): every line that is not a
well-formed record, and every rotated file that is not a regular file, is one violation line with
its file and line number; the command exits 1 with its counts and never tracebacks or hangs.

Run with `--hypothesis-show-statistics` to see the example counts.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.run import Ran, can_drop_privileges, run_janitor, shared_dir
from helpers.safety import build, publish_marker
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from janitor.model import ScanOptions
from janitor.ops.audit import AuditLog
from janitor.ops.audit_verify import verify
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy

SUMMARY = r"^\d+ records, \d+ deletions checked, \d+ violations"


def _real_records(where: Path) -> list[dict[str, Any]]:
    """The delete records of a real pass (steps 1..6, two consumers at 5 and 4): steps 1-3."""
    tree = build(where / "tree", range(1, 7))
    publish_marker(tree, 5)
    publish_marker(tree, 4, "eval")
    log = AuditLog(where / "real.jsonl")
    with ManagedDirectory(str(tree), dry_run=False, policy=Policy(interval_to_keep=100),
                          options=ScanOptions(), audit=log) as directory:
        assert len(directory.reconcile().trashed) == 3
    log.close()
    return [json.loads(line) for line in (where / "real.jsonl").read_text().splitlines()]


with tempfile.TemporaryDirectory(prefix="janitor-audit-hostile-") as _where:
    REAL = _real_records(Path(_where))  # built once, at import: every test edits copies


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _sound_log(directory: Path) -> Path:
    path = directory / "audit.jsonl"
    path.write_bytes(b"".join(_line(r) for r in REAL))
    return path


def _check_output(ran: Ran) -> list[str]:
    """No traceback, every line printable, a summary last; returns the violation lines."""
    assert "Traceback" not in ran.stderr and "Traceback" not in ran.stdout, ran.stderr
    lines = ran.stdout.splitlines()
    assert all(line.isprintable() for line in lines + ran.err_lines), ran.stdout
    assert lines and re.match(SUMMARY, lines[-1]), ran.stdout
    return [line for line in lines if line.startswith("violation: ")]


def test_a_real_log_is_sound(tmp_path: Path) -> None:
    ran = run_janitor("audit", "verify", _sound_log(tmp_path))
    assert (ran.code, _check_output(ran)) == (0, [])
    assert ran.stdout.strip() == "3 records, 3 deletions checked, 0 violations"


@pytest.mark.parametrize(("line", "expected"), [
    (b'{"event": "delete"\xff\xfe}\n', "audit.jsonl:2: not UTF-8 (byte 0xff at offset 18)"),
    (b"[" * 100_000 + b"\n", "audit.jsonl:2: not a JSON record (nested too deeply)"),
    (b"{" * 50_000 + b"\n", "audit.jsonl:2: not a JSON record (torn or edited line)"),
    (b'{"event": "delete", "step": NaN}\n',
     "audit.jsonl:2: not a JSON record (non-standard constant NaN)"),
    (b"9" * 5000 + b"\n", "audit.jsonl:2: not a JSON record (ValueError: Exceeds the limit"),
    (b"[1, 2]\n", "audit.jsonl:2: not a JSON object (an array)"),
    (b'"\\ud800"\n', "audit.jsonl:2: not a JSON object (a string)"),
    (b"\n", "audit.jsonl:2: not a JSON record (torn or edited line)"),
    (b'{"step": 1}\n', "audit.jsonl:2: malformed record: event: missing, expected a string"),
    (b'{"event": ["delete"]}\n',
     "audit.jsonl:2: malformed record: event: an array, expected a string"),
    (b"x" * (1024 * 1024 + 10) + b"\n",
     "audit.jsonl:2: a line longer than 1048576 bytes, not a record"),
], ids=["not-utf8", "deep-array", "deep-object", "nan", "huge-number", "array", "surrogate",
        "blank", "no-event", "event-array", "long-line"])
def test_a_line_that_is_not_a_record_is_one_violation(tmp_path: Path, line: bytes,
                                                      expected: str) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_line(REAL[0]) + line + _line(REAL[1]))
    ran = run_janitor("audit", "verify", path)
    violations = _check_output(ran)
    assert ran.code == 1
    assert len(violations) == 1 and violations[0].startswith(f"violation: {expected}"), violations
    assert ran.stdout.splitlines()[-1].startswith("3 records, ")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets one field, `consumers.0.step` style for nested ones."""
    def edit(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = record
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (_set("step", "1"), "step: a string, expected an integer or null"),
    (_set("step", 10**19), "step: 10000000000000000000 is out of range"),
    (_set("step", -1), "step: -1 is out of range"),
    (_set("step", True), "step: a boolean, expected an integer or null"),
    (_set("step", 1.0), "step: a number, expected an integer or null"),
    (_set("name", 1), "name: an integer, expected a string"),
    (_set("policy", [1]), "policy: an array, expected an object"),
    (_set("policy.interval_to_keep", 0), "policy.interval_to_keep: 0 is out of range"),
    (_set("policy.gated", "no"), "policy.gated: a string, expected a boolean"),
    (_set("policy.progress", "bad\ud800"), "policy.progress: bad\\ud800, expected one of"),
    (_set("consumers", 5), "consumers: an integer, expected an array"),
    (_set("consumers.0", "LOADED_STEP"), "consumers[0]: a string, expected an object"),
    (_set("consumers.1.step", "4"), "consumers[1].step: a string, expected an integer or null"),
    (_set("loaded_step", {}), "loaded_step: an object, expected an integer or null"),
    (_set("marker_ns", "1"), "marker_ns: a string, expected an integer or null"),
    (_set("step_changed_ns", None), "step_changed_ns: null, expected an integer"),
    (_set("newest_complete", [6]), "newest_complete: an array, expected an integer or null"),
    (_set("time_ns", "now"), "time_ns: a string, expected an integer"),
    (_set("time_ns", 10**4000), "time_ns: an integer of about 4001 digits is out of range"),
    (_set("pid", "1"), "pid: a string, expected an integer"),
    (_set("pid", 2**63), "pid: 9223372036854775808 is out of range"),
    (_set("host", None), "host: null, expected a string"),
    (_set("v", 2), "v: 2 is out of range"),
    (lambda r: r.pop("step_changed_ns"), "step_changed_ns: missing"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_mistyped_delete_record_is_one_violation(tmp_path: Path,
                                                   edit: Callable[[dict[str, Any]], None],
                                                   expected: str) -> None:
    record = copy.deepcopy(REAL[1])
    edit(record)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_line(REAL[0]) + _line(record) + _line(REAL[2]))
    verdict = verify(path)
    assert len(verdict.violations) == 1, verdict.violations
    assert verdict.violations[0].startswith("audit.jsonl:2: malformed delete record: ")
    assert expected in verdict.violations[0], verdict.violations
    assert (verdict.records, verdict.deletions) == (3, 3)


def test_mistyped_fields_through_the_cli(tmp_path: Path) -> None:
    record = dict(REAL[1], step="3", policy=[1], consumers=5, time_ns="x")
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_line(REAL[0]) + _line(record))
    ran = run_janitor("audit", "verify", path)
    assert ran.code == 1
    assert _check_output(ran) == [
        "violation: audit.jsonl:2: malformed delete record: time_ns: a string, expected an "
        "integer; step: a string, expected an integer or null; policy: an array, expected an "
        "object; consumers: an integer, expected an array"]
    assert ran.stdout.splitlines()[-1] == "2 records, 2 deletions checked, 1 violations"


def test_an_empty_path_is_a_usage_error() -> None:
    ran = run_janitor("audit", "verify", "")
    assert ran.code == 2 and ran.stdout == ""
    assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: error: ")


def test_a_missing_or_non_regular_log_is_a_usage_error(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "missing", tmp_path, tmp_path / "fifo"):
        ran = run_janitor("audit", "verify", path, timeout_s=20)
        assert ran.code == 2 and ran.stdout == "", ran.stdout
        assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: error: ")


def _sibling(kind: str, path: Path) -> None:
    if kind == "directory":
        path.mkdir()
        (path / "x").write_bytes(_line(REAL[0]))
    elif kind == "FIFO":
        os.mkfifo(path)
    else:  # a symlink to a log with a violation: never followed, so never reported as one
        bad = dict(REAL[0], step=5, name="step_5")
        (path.parent / "elsewhere.jsonl").write_bytes(_line(bad))
        path.symlink_to("elsewhere.jsonl")


@pytest.mark.parametrize("kind", ["directory", "FIFO", "symlink"])
def test_a_rotated_sibling_that_is_no_regular_file_is_one_violation(tmp_path: Path,
                                                                     kind: str) -> None:
    path = _sound_log(tmp_path)
    _sibling(kind, tmp_path / "audit.jsonl.2")
    (tmp_path / "audit.jsonl.1").write_bytes(_line(REAL[0]))
    ran = run_janitor("audit", "verify", path, timeout_s=20)  # a FIFO read would hang
    assert ran.code == 1
    assert _check_output(ran) == [
        f"violation: audit.jsonl.2: not a regular file (a {kind}); not read"]
    assert ran.stdout.splitlines()[-1] == "4 records, 4 deletions checked, 1 violations"


@pytest.mark.skipif(not can_drop_privileges(), reason="needs root and setpriv (uid 65534)")
def test_an_unreadable_log_or_sibling_is_one_violation() -> None:
    with shared_dir("janitor-audit-mode-") as base:
        path = _sound_log(base)
        sibling = base / "audit.jsonl.1"
        sibling.write_bytes(_line(REAL[0]))
        sibling.chmod(0o000)
        path.chmod(0o644)
        ran = run_janitor("audit", "verify", path, as_nobody=True)
        assert ran.code == 1
        assert _check_output(ran) == [
            "violation: audit.jsonl.1: cannot read: Permission denied"]
        path.chmod(0o000)  # the log itself: a usage error, found before reading anything
        ran = run_janitor("audit", "verify", path, as_nobody=True)
        assert (ran.code, ran.stdout) == (2, "")
        assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: error: ")
        assert "audit.jsonl" in ran.stderr and "readable" in ran.stderr


# --- hostile logs, generated -------------------------------------------------------------------

_SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
_TEXT = st.text(st.characters() | _SURROGATES, max_size=12)
_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30)
            | st.floats(allow_nan=True, allow_infinity=True) | _TEXT)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=12)

# The JSON kinds each field may hold (a test-side copy of the schema of the records
# janitor/ops/audit.py writes; docs/design.md has the invariants they license).
_INT, _NULL, _STR, _BOOL = "int", "null", "str", "bool"
_ALLOWED = {"v": {_INT}, "time_ns": {_INT}, "host": {_STR}, "pid": {_INT},
            "directory": {_STR}, "name": {_STR}, "step": {_INT, _NULL}, "reason": {_STR},
            "complete": {_BOOL}, "step_changed_ns": {_INT}, "dev": {_INT}, "ino": {_INT},
            "loaded_step": {_INT, _NULL}, "marker_ns": {_INT, _NULL},
            "newest_complete": {_INT, _NULL}, "scanned_ns": {_INT}, "policy": {"dict"},
            "consumers": {"list"}}


def _kind(value: Any) -> str:
    if value is None:
        return _NULL
    return {bool: _BOOL, int: _INT, float: "float", str: _STR, list: "list",
            dict: "dict"}[type(value)]


@st.composite
def _mistyped(draw: st.DrawFn) -> bytes:
    """A real record with one top-level field replaced by a value of a kind it may not hold."""
    record = copy.deepcopy(draw(st.sampled_from(REAL)))
    name = draw(st.sampled_from(sorted(_ALLOWED)))
    value = draw(_VALUES.filter(lambda v: _kind(v) not in _ALLOWED[name]))
    record[name] = value
    event(f"mistyped {_kind(value)}")
    return json.dumps(record).encode() + b"\n"


BAD, SOUND, ANY = "bad", "sound", "any"  # what a generated line must verify as


@st.composite
def _hostile_line(draw: st.DrawFn) -> tuple[bytes, str]:
    """(one line, BAD when it must be a violation, SOUND when it must not, ANY otherwise)."""
    kind = draw(st.sampled_from(["bytes", "json", "nested", "mistyped", "huge", "constant",
                                 "surrogate", "sound"]))
    event(kind)
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b"") + b"\n", BAD
    if kind == "json":
        value = draw(_VALUES)
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
        ignored = isinstance(value, dict) and "event" in value  # may be a record of no concern
        return text.encode("utf-8", "surrogatepass") + b"\n", ANY if ignored else BAD
    if kind == "nested":
        depth = draw(st.sampled_from([10, 900, 1100, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode() + b"\n", BAD
    if kind == "mistyped":
        return draw(_mistyped()), BAD
    record = copy.deepcopy(draw(st.sampled_from(REAL)))
    expect = SOUND
    if kind == "huge":  # beyond a step number, and beyond int's 4300-digit parsing limit
        name = draw(st.sampled_from(["step", "time_ns", "pid", "marker_ns"]))
        digits = draw(st.sampled_from([20, 100, 4300, 4301, 100_000]))
        record[name] = "@HUGE@"
        line = json.dumps(record).replace('"@HUGE@"', "9" * digits).encode() + b"\n"
        return line, BAD
    if kind == "constant":
        record[draw(st.sampled_from(sorted(_ALLOWED)))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
        expect = BAD
    elif kind == "surrogate":
        record[draw(st.sampled_from(["host", "name", "directory", "reason"]))] = draw(_TEXT)
        expect = ANY
    return json.dumps(record).encode() + b"\n", expect


def _expect_printable(lines: list[str]) -> None:
    for line in lines:
        assert line.isprintable() and "\n" not in line, repr(line)
        line.encode("utf-8")  # no lone surrogate left


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_hostile_line(), min_size=1, max_size=6),
       torn=st.binary(max_size=30).filter(lambda b: b"\n" not in b))
def test_verify_survives_generated_hostile_logs(lines: list[tuple[bytes, str]],
                                                torn: bytes) -> None:
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "audit.jsonl"
        path.write_bytes(b"".join(line for line, _ in lines) + torn)
        verdict = verify(path)
    _expect_printable(verdict.violations)
    assert verdict.records == len(lines) + (1 if torn else 0)
    for number, (_, expect) in enumerate(lines, 1):
        here = [v for v in verdict.violations if v.startswith(f"audit.jsonl:{number}: ")]
        if expect == BAD:  # every hostile line is reported, on its own line number
            assert here, (number, verdict.violations)
        elif expect == SOUND:
            assert here == [], here


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_hostile_line(), min_size=1, max_size=4))
def test_the_cli_survives_generated_hostile_logs(lines: list[tuple[bytes, str]]) -> None:
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "audit.jsonl"
        path.write_bytes(b"".join(line for line, _ in lines))
        ran = run_janitor("audit", "verify", path, env={"PYTHONIOENCODING": "utf-8"})
    assert ran.code in (0, 1), ran.stderr
    violations = _check_output(ran)
    assert ran.code == (1 if violations else 0)
    if any(expect == BAD for _, expect in lines):
        assert ran.code == 1
