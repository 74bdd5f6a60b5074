"""The audit trail (issue 6, part 1): one fsynced, write-ahead JSON line per deletion, size
rotation, `janitor audit verify`, and fail-closed behaviour when the log cannot be written.

Records carry no byte counts by design: a record is written *before* the rename, when the bytes are
not yet freed (and a hard-linked shard frees nothing). What a deletion freed is in the daemon's
`deleted` log event and in `janitor sweep`'s output.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.run import can_drop_privileges, run_janitor, shared_dir
from helpers.safety import build, publish_marker, read_audit
from helpers.tree import step_numbers, tree_state

from janitor.ops.audit import AuditLog, read_records
from janitor.ops.audit_verify import verify

RECORD_FIELDS = {"v", "event", "time_ns", "host", "pid", "directory", "name", "step", "reason",
                 "complete", "step_changed_ns", "dev", "ino", "loaded_step", "marker_ns",
                 "newest_complete", "consumers", "policy", "scanned_ns"}


@pytest.fixture
def swept(tmp_path: Path) -> tuple[Path, Path]:
    """A real sweep: steps 1..8, two consumers (5 and 7), interval 3: deletes 1, 2, 4."""
    tree = build(tmp_path / "tree", range(1, 9))
    publish_marker(tree, 7)
    publish_marker(tree, 5, "eval")
    audit = tmp_path / "audit" / "audit.jsonl"
    ran = run_janitor("sweep", "--audit-log", audit, "--interval-to-keep", "3", tree)
    assert ran.code == 3, ran.stderr
    assert step_numbers(tree) == [3, 5, 6, 7, 8]
    return tree, audit


def test_one_record_per_deletion_with_what_licensed_it(swept: tuple[Path, Path]) -> None:
    tree, audit = swept
    records = read_audit(audit)
    assert [(r["step"], r["name"], r["reason"]) for r in records] == [
        (1, "step_1", "superseded"), (2, "step_2", "superseded"), (4, "step_4", "superseded")]
    markers = {name: (tree / name).stat().st_mtime_ns for name in ("LOADED_STEP",
                                                                     "LOADED_STEP.eval")}
    for record in records:
        assert set(record) == RECORD_FIELDS  # no "bytes": see the module docstring
        assert record["event"] == "delete" and record["v"] == 1
        assert record["directory"] == str(tree)
        assert record["loaded_step"] == 5 and record["newest_complete"] == 8
        assert record["marker_ns"] == min(markers.values())
        assert sorted((c["file"], c["step"], c["mtime_ns"]) for c in record["consumers"]) == [
            ("LOADED_STEP", 7, markers["LOADED_STEP"]),
            ("LOADED_STEP.eval", 5, markers["LOADED_STEP.eval"])]
        assert record["step_changed_ns"] < record["marker_ns"] <= record["scanned_ns"]
        assert record["scanned_ns"] <= record["time_ns"]
        assert record["policy"]["interval_to_keep"] == 3
    assert len({r["pid"] for r in records}) == 1


def test_bytes_are_in_the_daemons_deleted_event_not_in_the_record(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 5), files=4, size=1000)
    publish_marker(tree, 3)
    audit = tmp_path / "audit.jsonl"
    ran = run_janitor("run", "--once", "--log-format", "json", "--audit-log", audit, tree)
    assert ran.code == 0, ran.stderr
    events = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    deleted = {e["step"]: e for e in events if e.get("event") == "deleted"}
    assert set(deleted) == {1, 2}
    assert all(e["bytes"] >= 4 * 1000 and e["files"] == 6 for e in deleted.values())
    assert [r["step"] for r in read_audit(audit)] == [1, 2]
    assert all("bytes" not in r for r in read_audit(audit))


def test_verify_passes_on_a_real_run(swept: tuple[Path, Path]) -> None:
    _, audit = swept
    ran = run_janitor("audit", "verify", audit)
    assert ran.code == 0
    assert ran.stdout.strip() == "3 records, 3 deletions checked, 0 violations"


def _edited(audit: Path, edit: Any) -> Path:
    records = read_audit(audit)
    edit(records)
    audit.write_text("".join(json.dumps(r) + "\n" for r in records))
    return audit


def _set_interval(records: list[dict[str, Any]]) -> None:
    records[1]["policy"]["interval_to_keep"] = 2  # step_2 becomes a multiple of the interval


def _at_loaded(records: list[dict[str, Any]]) -> None:
    records[2]["step"], records[2]["name"] = 5, "step_5"  # step 5 is the loaded step


def _changed_after(records: list[dict[str, Any]]) -> None:
    records[0]["step_changed_ns"] = records[0]["marker_ns"] + 1


def _overlapping_pid(records: list[dict[str, Any]]) -> None:
    intruder = dict(records[1], pid=records[1]["pid"] + 1, time_ns=records[1]["time_ns"] + 1)
    records.insert(2, intruder)


@pytest.mark.parametrize(("edit", "expected"), [
    (_set_interval, "inv2: step 2 is a multiple of interval_to_keep 2"),
    (_at_loaded, "inv1: step 5 >= loaded step 5"),
    (_changed_after, "inv4: step 1 changed at or after the marker that licensed it"),
    (_overlapping_pid, "both deleted in overlapping periods"),
], ids=["interval-multiple", "step-at-loaded", "changed-after-marker", "two-pids"])
def test_verify_reports_each_injected_violation(swept: tuple[Path, Path], edit: Any,
                                                expected: str) -> None:
    _, audit = swept
    ran = run_janitor("audit", "verify", _edited(audit, edit))
    assert ran.code == 1
    violations = [line for line in ran.stdout.splitlines() if line.startswith("violation: ")]
    assert len(violations) == 1 and expected in violations[0], ran.stdout


def test_verify_reports_a_torn_last_line(swept: tuple[Path, Path]) -> None:
    _, audit = swept
    whole = audit.read_bytes()
    audit.write_bytes(whole + whole.splitlines(keepends=True)[0][:57])  # a crash mid-write
    ran = run_janitor("audit", "verify", audit)
    assert ran.code == 1
    assert "violation: audit.jsonl:4: not a JSON record (torn or edited line)" in ran.stdout


def test_rotation_by_size_keeps_every_record_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=2000, backups=3)
    try:
        for number in range(1, 41):
            log.append({"event": "note", "n": number, "pad": "x" * 100})
    finally:
        log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all((tmp_path / name).stat().st_size <= 2000 for name in files)
    kept = [r["n"] for _, _, r in read_records(path) if r is not None]
    assert kept == list(range(kept[0], 41))  # oldest rotated away, the rest in order
    assert len(kept) < 40


def test_rotated_logs_are_verified_together(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 12))
    publish_marker(tree, 10)
    path = tmp_path / "audit.jsonl"
    # One record is ~700 bytes: a 1500-byte limit rotates every two records.
    from janitor.model import ScanOptions
    from janitor.ops.managed import ManagedDirectory
    from janitor.policy import Policy

    log = AuditLog(path, max_bytes=1500, backups=10)
    with ManagedDirectory(str(tree), dry_run=False, policy=Policy(), options=ScanOptions(),
                          audit=log) as directory:
        assert len(directory.reconcile().trashed) == 9
        directory.reclaim()
    log.close()
    assert len(list(tmp_path.glob("audit.jsonl.*"))) >= 3
    verdict = verify(path)
    assert (verdict.deletions, verdict.violations) == (9, [])
    ran = run_janitor("audit", "verify", path)
    assert ran.code == 0 and "9 deletions checked, 0 violations" in ran.stdout


def test_dry_run_writes_no_record(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 6))
    publish_marker(tree, 4)
    audit = tmp_path / "audit.jsonl"
    before = tree_state(tree)
    assert run_janitor("sweep", "--dry-run", "--audit-log", audit, tree).code == 3
    assert run_janitor("run", "--once", "--dry-run", "--audit-log", audit, tree).code == 0
    assert not audit.exists()
    assert tree_state(tree) == before


def test_an_unwritable_audit_log_blocks_every_deletion(
        tmp_path: Path, tmpfs_mount: Callable[[Path], Path]) -> None:
    """Fail-closed: the record cannot be written (ENOSPC), so no step goes; each is reported."""
    tree = build(tmp_path / "tree", range(1, 6))
    publish_marker(tree, 4)
    full = tmpfs_mount(tmp_path / "state", "size=64k")
    audit = full / "audit.jsonl"
    audit.touch()
    with contextlib.suppress(OSError), (full / "filler").open("wb", buffering=0) as filler:
        while True:  # a real full filesystem: the log opens fine, every write fails ENOSPC
            filler.write(b"\0" * 4096)
    before = tree_state(tree)

    ran = run_janitor("sweep", "--json", "--audit-log", audit, tree)

    assert ran.code == 5
    assert step_numbers(tree) == [1, 2, 3, 4, 5]
    assert {k: v for k, v in tree_state(tree).items() if not k.startswith(".janitor")
            and k != "."} == {k: v for k, v in before.items() if k != "."}
    skipped = json.loads(ran.stdout)["directories"][0]["skipped"]
    assert [s["name"] for s in skipped] == ["step_1", "step_2", "step_3"]
    assert all("audit log unwritable (No space left on device)" in s["why"] for s in skipped)
    assert len(ran.stderr.splitlines()) == 3 and "step_1 kept: audit log unwritable" in ran.stderr


@pytest.mark.skipif(not can_drop_privileges(), reason="needs root and setpriv (uid 65534)")
def test_an_audit_path_the_janitor_cannot_create_is_a_usage_error_and_nothing_goes() -> None:
    with shared_dir("janitor-audit-") as base:
        tree = build(base / "tree", range(1, 6))
        publish_marker(tree, 4)
        subprocess.run(["chown", "-R", "65534:65534", str(tree)], check=True)
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        ran = run_janitor("sweep", "--audit-log", locked / "audit.jsonl", tree, as_nobody=True)
        assert ran.code == 2
        assert "--audit-log" in ran.stderr and "Permission denied" in ran.stderr
        assert step_numbers(tree) == [1, 2, 3, 4, 5]
        assert not os.path.exists(tree / ".janitor-trash")
