"""scan on real directory trees: what is a step, what is foreign, which markers are problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers.run import NOBODY, can_drop_privileges
from helpers.tree import make_step, write_marker

from janitor import protocol
from janitor.fs.scan import deepen, open_directory, scan
from janitor.model import ScanOptions, Snapshot


def do_scan(path: Path, options: ScanOptions | None = None, timeout_s: float = 10.0) -> Snapshot:
    """Scan in a thread and fail (not hang) if it does not finish by the deadline."""
    result: list[Snapshot] = []
    errors: list[BaseException] = []

    def work() -> None:
        fd = open_directory(str(path))
        try:
            result.append(scan(fd, str(path), options or ScanOptions()))
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"scan of {path} did not finish within {timeout_s} s"
    if errors:
        raise errors[0]
    return result[0]


def foreign_reasons(snap: Snapshot) -> dict[str, str]:
    return {f.name: f.reason for f in snap.foreign}


def test_steps_completeness_and_pins(tmp_path: Path) -> None:
    make_step(tmp_path, 1)
    make_step(tmp_path, 2, complete=False)
    pinned = make_step(tmp_path, 3)
    (pinned / protocol.PIN_FILE).write_bytes(b"")
    dir_marker = make_step(tmp_path, 4, complete=False)
    (dir_marker / protocol.DEFAULT_COMPLETE_MARKER).mkdir()  # a directory is no completion marker
    link_marker = make_step(tmp_path, 5, complete=False)
    (link_marker / protocol.DEFAULT_COMPLETE_MARKER).symlink_to(pinned / "shard-00000.bin")
    make_step(tmp_path, 6, complete=True, marker=".finished")
    snap = do_scan(tmp_path)
    # The shallow scan reads no pin; deepen (run for the steps a plan would delete) reads them.
    assert [(e.number, e.complete) for e in snap.steps] == [
        (1, True), (2, False), (3, True), (4, False), (5, False), (6, False)]
    fd = open_directory(str(tmp_path))
    try:
        deep = deepen(fd, snap, frozenset(e.name for e in snap.steps), ScanOptions())
    finally:
        os.close(fd)
    assert [(e.number, e.pinned) for e in deep.steps] == [
        (1, False), (2, False), (3, True), (4, False), (5, False), (6, False)]
    snap = do_scan(tmp_path, ScanOptions(complete_markers=("STABLE", ".finished")))
    assert [e.number for e in snap.steps if e.complete] == [1, 3, 6]
    assert all(e.dev == snap.dev for e in snap.steps)


def test_incomplete_step_changed_time_follows_its_newest_file(tmp_path: Path) -> None:
    step = make_step(tmp_path, 1, complete=False)
    shard = step / "shard-00000.bin"
    os.utime(step, ns=(1, 1))
    future = 4_000_000_000 * 10**9
    os.utime(shard, ns=(future, future))
    (entry,) = do_scan(tmp_path).steps
    assert entry.changed_ns == future


def test_foreign_entries(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"x")
    tree = tmp_path / "tree"
    tree.mkdir()
    make_step(tree, 1)
    for name in ("step_01", "step_1.tmp", "step_", "step_-1", "STEP_3"):
        (tree / name).mkdir()
    (tree / "step_4").write_bytes(b"a regular file")
    (tree / "step_5").symlink_to(outside, target_is_directory=True)
    (tree / "step_6").symlink_to(tree / "step_1", target_is_directory=True)
    os.mkfifo(tree / "step_7")
    snap = do_scan(tree)
    assert [e.name for e in snap.entries] == ["step_1"]
    reasons = foreign_reasons(snap)
    assert set(reasons) == {"step_01", "step_1.tmp", "step_", "step_-1", "STEP_3", "step_4",
                            "step_5", "step_6", "step_7"}
    assert reasons["STEP_3"] == "not a step name (the prefix is 'step_', lower case)"
    assert reasons["step_4"] == "not a directory"
    assert reasons["step_5"] == reasons["step_6"] == "a symlink (never followed)"
    assert "leading zero" in reasons["step_01"]


def test_odd_bytes_names(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path)
    for name in (b"step_1\n", b"step_\xff", b"step_2\xff", b"step_\n3", "step_١٢".encode()):
        os.mkdir(os.path.join(raw, name))
    make_step(tmp_path, 3)
    os.mkdir(os.path.join(raw, b"LOADED_STEP.\xff"))
    snap = do_scan(tmp_path)
    assert [e.number for e in snap.steps] == [3]
    assert {os.fsencode(f.name) for f in snap.foreign} == {
        b"step_1\n", b"step_\xff", b"step_2\xff", b"step_\n3", "step_١٢".encode()}
    for foreign in snap.foreign:
        assert "\n" not in protocol.printable(foreign.name)
    # A consumer name of invalid UTF-8 is still a consumer: here a directory, so a problem.
    (consumer,) = snap.consumers
    assert consumer.problem == "is a directory, not a regular file"


def test_staging_dirs_are_entries_without_number(tmp_path: Path) -> None:
    (tmp_path / (protocol.STAGING_PREFIX + "abc")).mkdir()
    (tmp_path / (protocol.STAGING_PREFIX + "file")).write_bytes(b"")
    (tmp_path / (protocol.STAGING_PREFIX + "link")).symlink_to(tmp_path)
    snap = do_scan(tmp_path)
    assert [(e.name, e.number, e.staging) for e in snap.entries] == [
        (protocol.STAGING_PREFIX + "abc", None, True)]
    assert snap.steps == ()


def test_trash_is_noticed_not_scanned(tmp_path: Path) -> None:
    (tmp_path / protocol.TRASH_DIR).mkdir()
    (tmp_path / protocol.TRASH_DIR / "step_9").mkdir()
    snap = do_scan(tmp_path)
    assert snap.trash_present
    assert snap.entries == ()


@pytest.mark.parametrize(("content", "step", "problem"), [
    (b"7\n", 7, None),
    (b"0", 0, None),
    (b"", None, "empty (half-written or truncated?)"),
    (b"abc", None, "content 'abc': not canonical ASCII decimal"),
    (b"-3", None, "content '-3': not canonical ASCII decimal"),
    (b"12abc", None, "content '12abc': not canonical ASCII decimal"),
    (b" 12", None, "content ' 12': not canonical ASCII decimal"),
    ("١٢".encode(), None, "not ASCII"),
    (b"1" * 25, None, "25 bytes, more than a 19-digit step number"),
])
def test_marker_contents(tmp_path: Path, content: bytes, step: int | None,
                         problem: str | None) -> None:
    make_step(tmp_path, 1)
    write_marker(tmp_path, content)
    (consumer,) = do_scan(tmp_path).consumers
    assert (consumer.name, consumer.step, consumer.problem) == ("", step, problem)


def test_marker_kinds_are_problems_and_never_block(tmp_path: Path) -> None:
    make_step(tmp_path, 1)
    (tmp_path / "LOADED_STEP").mkdir()
    (tmp_path / "LOADED_STEP.link").symlink_to(tmp_path / "elsewhere")
    os.mkfifo(tmp_path / "LOADED_STEP.fifo")
    (tmp_path / "LOADED_STEP.dangling").symlink_to("/nonexistent/LOADED_STEP")
    good = tmp_path / "real"
    good.write_bytes(b"1\n")
    (tmp_path / "LOADED_STEP.goodlink").symlink_to(good)
    write_marker(tmp_path, 1, "LOADED_STEP.eval")
    write_marker(tmp_path, b"", "LOADED_STEP.tmp")  # a writer's temporary: not a consumer
    write_marker(tmp_path, b"", "LOADED_STEP.eval.tmp")
    write_marker(tmp_path, b"", "LOADED_STEP..hidden")
    snap = do_scan(tmp_path, timeout_s=10.0)  # a FIFO opened without O_NONBLOCK would hang here
    problems = {c.filename: (c.step, c.problem) for c in snap.consumers}
    assert problems == {
        "LOADED_STEP": (None, "is a directory, not a regular file"),
        "LOADED_STEP.dangling": (None, "is a symlink (never followed)"),
        "LOADED_STEP.eval": (1, None),
        "LOADED_STEP.fifo": (None, "is a FIFO, not a regular file"),
        "LOADED_STEP.goodlink": (None, "is a symlink (never followed)"),
        "LOADED_STEP.link": (None, "is a symlink (never followed)"),
    }


def test_marker_named_with_no_consumer_is_a_problem(tmp_path: Path) -> None:
    make_step(tmp_path, 1)
    write_marker(tmp_path, 1, "LOADED_STEP.")
    (consumer,) = do_scan(tmp_path).consumers
    assert consumer.problem == "'LOADED_STEP.' names no consumer"


def test_mode_000_marker_as_root_is_readable(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root reads a mode-000 file")
    make_step(tmp_path, 1)
    write_marker(tmp_path, 1).chmod(0o000)
    (consumer,) = do_scan(tmp_path).consumers
    assert (consumer.step, consumer.problem) == (1, None)


_CHILD_SCAN = """
import json, os, sys
from janitor.model import ScanOptions
from janitor.fs.scan import open_directory, scan
fd = open_directory(sys.argv[1])
snap = scan(fd, sys.argv[1], ScanOptions())
print(json.dumps({"consumers": [[c.filename, c.step, c.problem] for c in snap.consumers],
                  "steps": [e.name for e in snap.steps],
                  "foreign": [[f.name, f.reason] for f in snap.foreign]}))
"""


def test_mode_000_marker_and_step_as_non_root(shared_tmp: Path) -> None:
    """Unreadable for a non-root janitor: the marker is a problem, the step is foreign."""
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv to run the scan as uid 65534")
    make_step(shared_tmp, 1)
    make_step(shared_tmp, 2).chmod(0o000)
    write_marker(shared_tmp, 1).chmod(0o000)
    write_marker(shared_tmp, 1, "LOADED_STEP.eval")
    repo = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([*NOBODY, sys.executable, "-c", _CHILD_SCAN, str(shared_tmp)],
                          capture_output=True, timeout=60, check=True,
                          env={**os.environ, "PYTHONPATH": repo})
    seen = json.loads(done.stdout)
    assert seen["consumers"] == [["LOADED_STEP", None, "unreadable (permission denied)"],
                                 ["LOADED_STEP.eval", 1, None]]
    assert seen["steps"] == ["step_1"]
    assert seen["foreign"] == [["step_2", "unreadable (permission denied)"]]


def test_step_that_is_a_mount_point_is_foreign(tmp_path: Path, tmpfs_mount) -> None:  # type: ignore[no-untyped-def]
    make_step(tmp_path, 1)
    tmpfs_mount(tmp_path / "step_2")
    snap = do_scan(tmp_path)
    assert [e.name for e in snap.steps] == ["step_1"]
    assert foreign_reasons(snap) == {"step_2": "a mount point (another filesystem)"}
