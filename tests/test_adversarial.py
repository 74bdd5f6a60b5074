"""Hostile trees (issue 6, part 3): each test builds one, runs the real janitor and states exactly
what must survive, what must go, and what must be reported.

Mounts (tmpfs, bind, read-only) need root; those tests skip with the reason when mounting is
impossible. Privilege-drop tests run the janitor as uid 65534 through setpriv.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.daemon import Daemon
from helpers.run import can_drop_privileges, run_janitor, shared_dir
from helpers.safety import (
    Rules,
    bind_mount,
    build,
    check_whole,
    must_keep,
    publish_marker,
    read_audit,
    rule_args,
    tmpfs,
    write_step,
)
from helpers.tree import step_numbers, trash_names, tree_state
from helpers.wait import wait_until

from janitor import protocol
from janitor.fs import mounts
from janitor.model import ScanOptions
from janitor.ops.audit import AuditLog
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy, Reason


def sweep_json(*args: str | Path) -> tuple[int, dict[str, object], str]:
    ran = run_janitor("sweep", "--json", "--audit-log", "off", *args)
    return ran.code, json.loads(ran.stdout), ran.stderr


def directory_of(report: dict[str, object]) -> dict[str, object]:
    directories = report["directories"]
    assert isinstance(directories, list) and len(directories) == 1
    found = directories[0]
    assert isinstance(found, dict)
    return found


def reasons(directory: dict[str, object]) -> dict[str, str]:
    decisions = directory["decisions"]
    assert isinstance(decisions, list)
    return {d["name"]: d["reason"] for d in decisions}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the managed tree with data the janitor must never reach."""
    target = tmp_path / "outside"
    (target / "deep").mkdir(parents=True)
    (target / "precious.bin").write_bytes(b"do not delete")
    (target / "deep" / "also.bin").write_bytes(b"nor this")
    return target


# ---- symlinks ----------------------------------------------------------------------------------

def test_step_symlinked_to_a_directory_outside_is_foreign_and_the_outside_survives(
        tmp_path: Path, outside: Path) -> None:
    tree = build(tmp_path / "tree", [1, 3, 4, 5])
    (tree / "step_2").symlink_to(outside, target_is_directory=True)
    publish_marker(tree, 4)
    before = tree_state(outside)

    code, report, _ = sweep_json(tree)

    assert code == 3
    assert tree_state(outside) == before
    assert (tree / "step_2").is_symlink()
    assert step_numbers(tree) == [4, 5]
    foreign = directory_of(report)["foreign"]
    assert {"name": "step_2", "reason": "a symlink (never followed)"} in foreign  # type: ignore[operator]


def test_symlinks_inside_a_doomed_step_are_unlinked_and_their_targets_survive(
        tmp_path: Path, outside: Path) -> None:
    tree = build(tmp_path / "tree", [1, 2, 3])
    doomed = tree / "step_1"
    (doomed / "to_dir").symlink_to(outside, target_is_directory=True)
    (doomed / "to_file").symlink_to(outside / "precious.bin")
    (doomed / "sub").mkdir()
    (doomed / "sub" / "to_deep").symlink_to(outside / "deep", target_is_directory=True)
    (doomed / "dangling").symlink_to(tmp_path / "nowhere")
    publish_marker(tree, 2)
    before = tree_state(outside)

    code, _, _ = sweep_json(tree)

    assert code == 3
    assert step_numbers(tree) == [2, 3]
    assert tree_state(outside) == before
    assert trash_names(tree) == []


# ---- mount points ------------------------------------------------------------------------------

def test_tmpfs_inside_the_tree_as_a_plain_directory_and_as_a_step_is_never_crossed(
        tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", [1, 3, 4, 5])
    with tmpfs(tree / "cache") as cache, tmpfs(tree / "step_2") as step_mount:
        (cache / "data.bin").write_bytes(b"cache")
        (step_mount / "shard.bin").write_bytes(b"on another filesystem")
        (step_mount / protocol.DEFAULT_COMPLETE_MARKER).write_bytes(b"")
        publish_marker(tree, 4)
        cache_before, step_before = tree_state(cache), tree_state(step_mount)

        code, report, _ = sweep_json(tree)

        assert code == 3
        assert step_numbers(tree) == [2, 4, 5]
        assert tree_state(cache) == cache_before
        assert tree_state(step_mount) == step_before
        foreign = directory_of(report)["foreign"]
        assert {"name": "step_2", "reason": "a mount point (another filesystem)"} in foreign  # type: ignore[operator]


def test_tmpfs_inside_a_doomed_step_keeps_that_step_whole_and_is_reported(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", [1, 2, 3, 4])
    with tmpfs(tree / "step_1" / "mnt") as inner:
        (inner / "data.bin").write_bytes(b"mounted inside a step")
        publish_marker(tree, 3)
        inner_before = tree_state(inner)

        code, report, stderr = sweep_json(tree)

        assert code == 5  # the step could not be deleted: a user must unmount first
        assert step_numbers(tree) == [1, 3, 4]  # step_2 went, step_1 did not
        assert tree_state(inner) == inner_before
        skipped = directory_of(report)["skipped"]
        assert [s["name"] for s in skipped] == ["step_1"]  # type: ignore[union-attr]
        assert "mount point" in stderr and "step_1" in stderr
        assert check_whole(tree) == []


def test_bind_mount_of_the_same_filesystem_inside_a_doomed_step_is_not_crossed(
        tmp_path: Path, outside: Path) -> None:
    """Same st_dev as the tree: only the mount table tells it apart from a plain directory."""
    tree = build(tmp_path / "tree", [1, 2, 3, 4])
    before = tree_state(outside)
    with bind_mount(outside, tree / "step_1" / "bound"):
        publish_marker(tree, 3)
        code, _, stderr = sweep_json(tree)
        assert code == 5
        assert step_numbers(tree) == [1, 3, 4]
        assert "mount point" in stderr
    assert tree_state(outside) == before


# ---- permissions -------------------------------------------------------------------------------

pytestmark_nobody = pytest.mark.skipif(not can_drop_privileges(),
                                       reason="needs root and setpriv to run as uid 65534")


@pytestmark_nobody
def test_a_step_the_janitor_cannot_write_is_reported_retried_and_blocks_nothing_else() -> None:
    with shared_dir("janitor-perm-") as base:
        tree = build(base / "tree", range(1, 8))
        audit = base / "audit" / "audit.jsonl"
        audit.parent.mkdir()
        subprocess.run(["chown", "-R", "65534:65534", str(tree), str(audit.parent)], check=True)
        os.chown(tree / "step_2", 0, 0)  # root-owned, mode 0755, files inside: not movable
        for child in (tree / "step_2").iterdir():
            os.chown(child, 0, 0)
        (tree / "step_2").chmod(0o755)
        publish_marker(tree, 6)
        os.chown(tree / "LOADED_STEP", 65534, 65534)

        first = run_janitor("sweep", "--audit-log", audit, tree, as_nobody=True)

        assert first.code == 5, first.stderr
        assert step_numbers(tree) == [2, 6, 7]  # 1, 3, 4, 5 went despite step_2
        assert check_whole(tree) == []
        assert "step_2" in first.stderr and "Permission denied" in first.stderr
        assert len(first.stderr.splitlines()) == 1

        again = run_janitor("sweep", "--audit-log", audit, tree, as_nobody=True)
        assert again.code == 5 and "step_2" in again.stderr  # retried, reported again
        assert step_numbers(tree) == [2, 6, 7]

        subprocess.run(["chown", "-R", "65534:65534", str(tree / "step_2")], check=True)
        # chown moved step_2's ctime past the marker (changed-after-marker): the consumer's next
        # mark licenses it again.
        publish_marker(tree, 6)
        os.chown(tree / "LOADED_STEP", 65534, 65534)
        last = run_janitor("sweep", "--audit-log", audit, tree, as_nobody=True)
        assert last.code == 3, last.stderr
        assert step_numbers(tree) == [6, 7]
        assert trash_names(tree) == []
        assert run_janitor("audit", "verify", audit).code == 0


@pytestmark_nobody
def test_unremovable_contents_stay_in_the_trash_reported_and_are_retried() -> None:
    """The step itself is the janitor's (so it moves), a subdirectory inside is root's."""
    with shared_dir("janitor-perm-") as base:
        tree = build(base / "tree", range(1, 6), subdirs=1)
        subprocess.run(["chown", "-R", "65534:65534", str(tree)], check=True)
        for path in [tree / "step_2" / "d0", *(tree / "step_2" / "d0").iterdir()]:
            os.chown(path, 0, 0)
        publish_marker(tree, 4)
        os.chown(tree / "LOADED_STEP", 65534, 65534)

        first = run_janitor("sweep", "--audit-log", "off", tree, as_nobody=True)

        assert first.code == 5
        assert step_numbers(tree) == [4, 5]  # step_2 left the tree whole, into the trash
        assert len(trash_names(tree)) == 1 and trash_names(tree)[0].startswith("2.")
        assert "could not reclaim" in first.stderr
        retried = run_janitor("sweep", "--audit-log", "off", tree, as_nobody=True)
        assert retried.code == 5 and "could not reclaim" in retried.stderr

        subprocess.run(["chown", "-R", "65534:65534", str(tree)], check=True)
        assert run_janitor("sweep", "--audit-log", "off", tree, as_nobody=True).code == 0
        assert trash_names(tree) == []


# ---- races between scan and rename ------------------------------------------------------------

@pytest.fixture
def managed(tmp_path: Path) -> Iterator[ManagedDirectory]:
    tree = build(tmp_path / "tree", [1, 2, 3, 4])
    publish_marker(tree, 3)
    directory = ManagedDirectory(str(tree), dry_run=False, policy=Policy(),
                                 options=ScanOptions())
    try:
        yield directory
    finally:
        directory.close()


def _swap_for_symlink(tree: Path, name: str, target: Path) -> None:
    (tree / name).rename(target)
    (tree / name).symlink_to(target, target_is_directory=True)


def test_directory_swapped_for_a_symlink_after_the_plan_is_left_alone(
        managed: ManagedDirectory, tmp_path: Path) -> None:
    """Drive the executor by hand: plan, swap step_1 for a symlink, then execute that plan."""
    from janitor.fs import reaper

    tree = Path(managed.path)
    _, plan = managed.look()
    doomed = {d.entry.name: d for d in plan.doomed}
    assert set(doomed) == {"step_1", "step_2"}
    moved = tmp_path / "moved_away"
    _swap_for_symlink(tree, "step_1", moved)
    before = tree_state(moved)

    trash_fd = managed.trash_fd(create=True)
    assert trash_fd is not None
    outcome = reaper.move_to_trash(managed.fd, managed.path, trash_fd, doomed["step_1"].entry,
                                   mounts.mount_points())

    assert isinstance(outcome, reaper.Skipped) and outcome.why == "replaced since the scan"
    assert (tree / "step_1").is_symlink()
    assert tree_state(moved) == before
    assert trash_names(tree) == []


def test_swap_inside_a_real_reconcile_between_scan_and_rename(
        managed: ManagedDirectory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race through ManagedDirectory.reconcile: the swap happens after its scan (when it
    reads the mount table, the last step before renaming)."""
    tree = Path(managed.path)
    moved = tmp_path / "moved_away"
    real = mounts.mount_points

    def swap_then_read() -> tuple[str, ...]:
        _swap_for_symlink(tree, "step_2", moved)
        return real()

    monkeypatch.setattr(mounts, "mount_points", swap_then_read)
    before_swap = tree_state(tree / "step_2")
    result = managed.reconcile()

    assert [t.entry.name for t in result.trashed] == ["step_1"]
    assert [(s.entry.name, s.why) for s in result.skipped] == [
        ("step_2", "replaced since the scan")]
    assert (tree / "step_2").is_symlink()
    assert tree_state(moved) == before_swap
    stats = managed.reclaim()
    assert stats.problems == [] and trash_names(tree) == []
    assert tree_state(moved) == before_swap


def test_root_replaced_while_the_daemon_runs(tmp_path: Path) -> None:
    """The daemon lets go of the replaced tree (never deletes there again), adopts the new one."""
    root = tmp_path / "run"
    old_tree = build(root / "broadcasts", [1, 2, 3, 4])
    publish_marker(old_tree, 3)
    audit = tmp_path / "audit.jsonl"
    daemon = Daemon([root, "--audit-log", audit, "--rescan-interval", "0.3", "--watch", "inotify"])
    try:
        daemon.wait_event("ready")
        wait_until(lambda: step_numbers(old_tree) == [3, 4], 20, "the first deletions")

        root.rename(tmp_path / "run.old")
        replaced_at = time.time_ns()
        moved_tree = tmp_path / "run.old" / "broadcasts"
        new_tree = build(root / "broadcasts", [10, 11, 12, 13, 14])
        publish_marker(new_tree, 13)
        wait_until(lambda: step_numbers(new_tree) == [13, 14], 20, "deletions in the new tree")

        publish_marker(moved_tree, 4)  # would license step_3 if the daemon still held it
        write_step(new_tree, 15)
        publish_marker(new_tree, 15)
        wait_until(lambda: step_numbers(new_tree) == [15], 20, "a later pass on the new tree")
        daemon.wait_event("directory_released")
        assert step_numbers(moved_tree) == [3, 4]
        records = read_audit(audit)
        late = [r for r in records if r["time_ns"] > replaced_at]
        assert {r["directory"] for r in late} == {str(new_tree)}
        assert {r["step"] for r in late} == {10, 11, 12, 13, 14}
    finally:
        daemon.close()


# ---- markers -----------------------------------------------------------------------------------

def test_marker_far_beyond_the_newest_step_deletes_nothing_and_says_why(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 6))
    publish_marker(tree, 10**18)
    before = tree_state(tree)
    del before["."]

    code, report, stderr = sweep_json(tree)

    assert code == 4
    after = tree_state(tree)
    assert after.pop(protocol.LOCK_FILE)[0] == 0o100000  # the lock, and nothing else, is new
    del after["."]
    assert after == before
    assert "beyond the newest step 5" in stderr
    assert set(reasons(directory_of(report)).values()) == {Reason.NO_VALID_MARKER.value}


def test_marker_moving_backwards_never_deletes_at_or_above_the_new_value(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 11))
    publish_marker(tree, 8)
    assert sweep_json(tree)[0] == 3
    assert step_numbers(tree) == [8, 9, 10]

    publish_marker(tree, 5)  # the consumer restarted from an older step
    code, report, _ = sweep_json(tree)
    assert code == 0
    assert step_numbers(tree) == [8, 9, 10]
    assert set(reasons(directory_of(report)).values()) <= {"at-or-above-loaded", "newest-complete"}

    for number in (11, 12):
        write_step(tree, number)
    publish_marker(tree, 9)
    assert sweep_json(tree)[0] == 3
    assert step_numbers(tree) == [9, 10, 11, 12]


def test_stale_marker_while_the_trainer_rewrites_lower_steps(tmp_path: Path) -> None:
    """Invariant 4: a trainer resumed from step 5 under LOADED_STEP=15 left by the earlier run.
    Steps it republishes (save_step: whole replacement) or rewrites in place (a shard opened,
    truncated and written again, STABLE untouched) are kept as changed-after-marker."""
    import trainer_hooks

    tree = build(tmp_path / "tree", range(1, 21))
    publish_marker(tree, 15)
    marker_ns = (tree / "LOADED_STEP").stat().st_mtime_ns
    wait_until(lambda: time.time_ns() > marker_ns + 10_000_000, 5, "the clock to move on")

    with trainer_hooks.staged_step(tree, 6) as staging:
        (staging / "model.bin").write_bytes(b"resumed run")
    with trainer_hooks.staged_step(tree, 7) as staging:
        (staging / "model.bin").write_bytes(b"resumed run")
    shard = next((tree / "step_9").glob("shard_*"))
    with shard.open("r+b") as handle:  # in place: neither the directory nor STABLE changes
        handle.truncate(0)
        handle.write(b"resumed run, in place")

    code, report, _ = sweep_json(tree)

    assert code == 3
    decided = reasons(directory_of(report))
    for name in ("step_6", "step_7", "step_9"):
        assert decided[name] == Reason.CHANGED_AFTER_MARKER.value, name
    assert step_numbers(tree) == [6, 7, 9, *range(15, 21)]
    assert (tree / "step_6" / "model.bin").read_bytes() == b"resumed run"


# ---- filesystems that refuse writes ------------------------------------------------------------

def test_tree_on_a_read_only_filesystem_is_a_clear_error_and_nothing_changes(
        tmp_path: Path) -> None:
    where = tmp_path / "ro"
    with tmpfs(where) as mounted:
        tree = build(mounted / "tree", range(1, 6))
        publish_marker(tree, 4)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mounted)], capture_output=True,
                                 check=False)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
        before = tree_state(tree)

        ran = run_janitor("sweep", "--audit-log", tmp_path / "audit.jsonl", tree)

        assert ran.code == 5
        assert ran.stderr.strip().splitlines() == [
            f"janitor: {tree}: read-only filesystem; nothing can be deleted here "
            "(use --dry-run to inspect)"]
        assert tree_state(tree) == before
        assert read_audit(tmp_path / "audit.jsonl") == []
        dry = run_janitor("sweep", "--dry-run", tree)
        assert dry.code == 3 and "would-delete" in dry.stdout


def test_read_only_bind_mount_of_a_tree(tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 6))
    publish_marker(tree, 4)
    before = tree_state(tree)
    with bind_mount(tree, tmp_path / "view", read_only=True) as view:
        ran = run_janitor("sweep", "--audit-log", "off", view)
        assert ran.code == 5 and "read-only filesystem" in ran.stderr
    assert tree_state(tree) == before


def _fill(mounted: Path) -> int:
    """Fill a tmpfs to the brim: data until ENOSPC, then empty files until no inode is left."""
    with (mounted / "fill.data").open("wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                continue
    count = 0
    while True:
        try:
            (mounted / f"fill.{count}").touch()
        except OSError:
            return count
        count += 1


def test_full_disk_before_the_trash_exists_is_a_clear_error_and_no_step_is_lost(
        tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "size=512k,nr_inodes=96") as mounted:
        tree = build(mounted / "tree", range(1, 6))
        publish_marker(tree, 4)
        _fill(mounted)
        before = tree_state(tree)

        ran = run_janitor("sweep", "--audit-log", "off", tree)

        assert ran.code == 5
        assert "no space left" in ran.stderr and len(ran.stderr.splitlines()) == 1
        assert tree_state(tree) == before


def test_full_disk_with_the_trash_already_there_renames_and_frees_space(tmp_path: Path) -> None:
    """A rename into an existing trash directory needs no space: the janitor frees the disk."""
    with tmpfs(tmp_path / "full", "size=512k,nr_inodes=96") as mounted:
        tree = build(mounted / "tree", range(1, 8))
        publish_marker(tree, 2)
        assert sweep_json(tree)[0] == 3  # step_1 goes; .janitor-trash and the lock now exist
        (tree / "LOADED_STEP").write_bytes(b"6\n")  # in place: same size, needs no new block
        _fill(mounted)
        with pytest.raises(OSError, match="No space left"):
            (mounted / "one-more").mkdir()

        code, _, stderr = sweep_json(tree)

        assert code == 3, stderr
        assert step_numbers(tree) == [6, 7]
        assert check_whole(tree) == []
        assert trash_names(tree) == []
        (mounted / "one-more").mkdir()  # space came back


# ---- scale and names ---------------------------------------------------------------------------

@pytest.mark.slow
def test_one_hundred_thousand_steps(tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    count, loaded, rules = 100_000, 90_000, Rules(interval_to_keep=1000)
    with tmpfs(tmp_path / "big", "size=1g,nr_inodes=400k") as mounted:
        tree = mounted / "tree"
        tree.mkdir()
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for number in range(1, count + 1):
                name = protocol.step_name(number)
                os.mkdir(name, dir_fd=fd)
                os.close(os.open(f"{name}/STABLE", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
        publish_marker(tree, loaded)
        keep = must_keep(range(1, count + 1), loaded, rules)

        started = time.monotonic()
        dry = run_janitor("sweep", "--dry-run", "--json", *rule_args(rules), tree, timeout_s=300)
        dry_s = time.monotonic() - started
        assert dry.code == 3
        would = directory_of(json.loads(dry.stdout))["deleted"]
        assert len(would) == count - len(keep)  # type: ignore[arg-type]
        assert len(step_numbers(tree)) == count

        started = time.monotonic()
        real = run_janitor("sweep", "--audit-log", mounted / "audit.jsonl", *rule_args(rules),
                           tree, timeout_s=300)
        real_s = time.monotonic() - started
        assert real.code == 3, real.stderr
        assert set(step_numbers(tree)) == keep
        assert trash_names(tree) == []
        assert len(read_audit(mounted / "audit.jsonl")) == count - len(keep)
        record_property("dry_run_s", round(dry_s, 1))
        record_property("real_sweep_s", round(real_s, 1))
        print(f"100k steps: dry run {dry_s:.1f} s, real sweep {real_s:.1f} s "
              f"({count - len(keep)} deleted)")


def test_names_with_newlines_and_invalid_utf8_are_foreign_printable_and_untouched(
        tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(1, 6))
    raw = os.fsencode(tree)
    hostile = [b"step_1\n", b"step_\n2", b"step_\xff3", b"step_4\xfe", b"\nstep_1", b"step_2\r"]
    for name in hostile:
        os.mkdir(os.path.join(raw, name))
        with open(os.path.join(raw, name, b"STABLE"), "wb"):
            pass
    with open(os.path.join(raw, b"step_5\n.bin"), "wb") as handle:
        handle.write(b"a file")
    publish_marker(tree, 4)
    before = {k: v for k, v in tree_state(tree).items()
              if not k.startswith(("step_1/", "step_2/", "step_3/")) and k not in
              ("step_1", "step_2", "step_3", ".")}

    ran = run_janitor("sweep", "--json", "--audit-log", "off", tree)
    text = run_janitor("sweep", "--dry-run", tree)

    assert ran.code == 3
    assert step_numbers(tree) == [4, 5]
    after = tree_state(tree)
    for key, value in before.items():
        assert after.get(key) == value, key
    foreign = directory_of(json.loads(ran.stdout))["foreign"]
    names = {f["name"] for f in foreign}  # type: ignore[union-attr]
    assert names == {"step_1\\n", "step_\\n2", "step_\\xff3", "step_4\\xfe", "step_2\\r",
                     "step_5\\n.bin"}
    for line in text.stdout.splitlines():
        assert line.isprintable(), repr(line)
    assert all(protocol.printable(os.fsdecode(n)) in text.stdout for n in hostile
               if n.startswith(b"step_"))


def test_audit_log_records_hostile_names_readably(tmp_path: Path) -> None:
    """Only canonical step names are ever deleted, so only they reach the audit log."""
    tree = build(tmp_path / "tree", range(1, 4))
    os.mkdir(os.path.join(os.fsencode(tree), b"step_\xff1"))
    publish_marker(tree, 3)
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    assert run_janitor("sweep", "--audit-log", tmp_path / "audit.jsonl", tree).code == 3
    assert [r["name"] for r in read_audit(tmp_path / "audit.jsonl")] == ["step_1", "step_2"]


def test_consumer_marker_names_with_newlines_and_invalid_utf8_are_reported_printable(
        tmp_path: Path) -> None:
    """A consumer's marker name is the user's: it counts (a valid marker) or halts the directory
    (a bad one), and every line that names it stays one printable line."""
    tree = build(tmp_path / "tree", range(1, 6))
    raw = os.fsencode(tree)
    publish_marker(tree, 4)
    with open(os.path.join(raw, b"LOADED_STEP.ev\nil"), "wb") as handle:
        handle.write(b"3\n")
    text = run_janitor("sweep", "--dry-run", tree)
    assert text.code == 3
    assert all(line.isprintable() for line in text.stdout.splitlines()), text.stdout
    assert "LOADED_STEP.ev\\nil=3" in text.stdout  # it counts: the effective loaded step is 3
    assert "step_2  would-delete" in text.stdout and "step_3  keep" in text.stdout

    with open(os.path.join(raw, b"LOADED_STEP.up\xffload\n"), "wb") as handle:
        handle.write(b"not a number")
    halted = run_janitor("sweep", "--dry-run", tree)
    assert halted.code == 4
    assert len(halted.stderr.splitlines()) == 1, halted.stderr
    assert protocol.printable(os.fsdecode(b"LOADED_STEP.up\xffload\n")) in halted.stderr
    assert all(line.isprintable() for line in halted.stdout.splitlines()), halted.stdout
