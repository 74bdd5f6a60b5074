"""The reaper on real directories: rename into trash, fd-based reclaim, races, mounts, symlink
escapes, and recovery after a real `janitor sweep` is SIGKILLed at random moments."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.run import JANITOR, run_janitor
from helpers.tree import (
    build_tree,
    make_step,
    step_numbers,
    trash_names,
    tree_state,
    wait_for_fs_clock,
    write_marker,
)
from helpers.wait import wait_until

from janitor import protocol
from janitor.fs import reaper, reserved
from janitor.fs.mounts import mount_points
from janitor.fs.scan import open_directory, scan
from janitor.model import ScanOptions
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy

POLICY = Policy(interval_to_keep=None, keep_last=1)


def managed(path: Path, policy: Policy = POLICY) -> ManagedDirectory:
    return ManagedDirectory(str(path), dry_run=False, policy=policy, options=ScanOptions())


def trash(path: Path) -> Path:
    return path / protocol.TRASH_DIR


def expected_reclaim(root: Path) -> tuple[int, int]:
    """(files, bytes) that removing `root` frees, by the same st_blocks rule, counted by os.walk."""
    files, size = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        size += os.lstat(dirpath).st_blocks * 512
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += 0 if st.st_nlink > 1 else st.st_blocks * 512
    return files, size


def test_doomed_steps_go_to_trash_under_names_that_are_never_steps(tmp_path: Path) -> None:
    build_tree(tmp_path, 5, loaded=5, files=3, size=5000)
    with managed(tmp_path) as directory:
        result = directory.reconcile()
    assert sorted(t.entry.number or -1 for t in result.trashed) == [1, 2, 3, 4]
    assert step_numbers(tmp_path) == [5]
    names = trash_names(tmp_path)
    assert len(names) == 4
    assert not any(protocol.looks_like_step(n) for n in names)
    assert sorted(n for n in os.listdir(tmp_path) if protocol.looks_like_step(n)) == ["step_5"]
    # Whole: each trashed step still holds every file it had.
    for name in names:
        assert len(os.listdir(trash(tmp_path) / name)) == 4
    assert stat.S_IMODE(trash(tmp_path).stat().st_mode) == 0o700


def test_reclaim_counts_files_and_bytes(tmp_path: Path) -> None:
    build_tree(tmp_path, 4, loaded=None, files=5, size=10_000)
    (tmp_path / "step_1" / "sub").mkdir()
    (tmp_path / "step_1" / "sub" / "deep.bin").write_bytes(b"z" * 70_000)
    write_marker(tmp_path, 4)
    with managed(tmp_path) as directory:
        directory.reconcile()
        files, size = 0, 0
        for name in trash_names(tmp_path):
            f, b = expected_reclaim(trash(tmp_path) / name)
            files, size = files + f, size + b
        stats = directory.reclaim()
    assert (stats.files, stats.bytes) == (files, size)
    assert stats.files == 3 * 6 + 1
    assert stats.directories == 3 + 1
    assert stats.pending == [] and stats.problems == []
    assert trash_names(tmp_path) == []


def test_reclaim_of_what_is_already_gone_is_done(tmp_path: Path) -> None:
    trash(tmp_path).mkdir()
    (trash(tmp_path) / "3.1.1.0").mkdir()
    fd = os.open(trash(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        stats = reaper.reclaim(fd, ["3.1.1.0", "never-existed", "2.1.1.0"])
    finally:
        os.close(fd)
    assert stats.pending == [] and stats.problems == []
    assert stats.directories == 1


def test_symlinks_inside_a_doomed_step_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "nested").mkdir(parents=True)
    (outside / "nested" / "precious.bin").write_bytes(b"p" * 4096)
    (outside / "file.bin").write_bytes(b"f" * 4096)
    before = tree_state(outside)
    tree = tmp_path / "tree"
    tree.mkdir()
    doomed = make_step(tree, 1)
    (doomed / "dir-link").symlink_to(outside, target_is_directory=True)
    (doomed / "nested-link").symlink_to(outside / "nested", target_is_directory=True)
    (doomed / "file-link").symlink_to(outside / "file.bin")
    (doomed / "sub").mkdir()
    (doomed / "sub" / "up").symlink_to("../../..", target_is_directory=True)
    os.link(outside / "file.bin", doomed / "hardlink.bin")
    build_tree(tree, 0, loaded=None)
    make_step(tree, 2)
    write_marker(tree, 2)
    with managed(tree) as directory:
        result = directory.reconcile()
        stats = directory.reclaim()
    assert [t.entry.name for t in result.trashed] == ["step_1"]
    assert stats.problems == [] and stats.pending == []
    assert trash_names(tree) == []
    assert tree_state(outside) == before  # nothing outside touched
    assert (outside / "file.bin").stat().st_nlink == 1


@pytest.mark.parametrize("swap", ["symlink", "other-directory", "rewritten"])
def test_step_swapped_between_scan_and_rename_is_skipped(tmp_path: Path, swap: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"p")
    tree = tmp_path / "tree"
    build_tree(tree, 3, loaded=3)
    fd = open_directory(str(tree))
    try:
        snap = scan(fd, str(tree), ScanOptions())
        doomed = next(e for e in snap.entries if e.name == "step_1")
        if swap == "symlink":
            (tree / "step_1").rename(tmp_path / "moved-away")
            (tree / "step_1").symlink_to(outside, target_is_directory=True)
        elif swap == "other-directory":
            (tree / "step_1").rename(tmp_path / "moved-away")
            make_step(tree, 1)
        else:
            wait_for_fs_clock(tree, doomed.changed_ns)
            (tree / "step_1" / "new-shard.bin").write_bytes(b"new")
        state = tree_state(tree)
        trash_fd = reaper.open_trash(fd, reserved.mount_id(fd), create=True)
        assert trash_fd is not None
        try:
            outcome = reaper.move_to_trash(fd, str(tree), trash_fd, doomed, mount_points())
        finally:
            os.close(trash_fd)
    finally:
        os.close(fd)
    assert isinstance(outcome, reaper.Skipped)
    assert outcome.why == ("changed since the scan" if swap == "rewritten"
                           else "replaced since the scan")
    state.pop(protocol.TRASH_DIR, None)
    after = tree_state(tree)
    after.pop(protocol.TRASH_DIR)
    after.pop(".", None)
    state.pop(".", None)
    assert after == state
    assert (outside / "precious.bin").read_bytes() == b"p"


def test_step_gone_before_rename_is_already_done(tmp_path: Path) -> None:
    build_tree(tmp_path, 2, loaded=2)
    fd = open_directory(str(tmp_path))
    try:
        snap = scan(fd, str(tmp_path), ScanOptions())
        shutil.rmtree(tmp_path / "step_1")
        trash_fd = reaper.open_trash(fd, reserved.mount_id(fd), create=True)
        assert trash_fd is not None
        outcome = reaper.move_to_trash(fd, str(tmp_path), trash_fd, snap.entries[0], ())
        os.close(trash_fd)
    finally:
        os.close(fd)
    assert outcome == reaper.Skipped(snap.entries[0], "already gone")


def test_step_holding_a_mount_point_is_skipped_and_the_mount_untouched(
        tmp_path: Path, tmpfs_mount: Callable[[Path], Path]) -> None:
    build_tree(tmp_path, 3, loaded=3, incomplete=())
    inner = tmpfs_mount(tmp_path / "step_1" / "mnt")
    (inner / "on-the-mount.bin").write_bytes(b"m" * 1000)
    # The mount changed step_1's view but not its mtime: re-mark after it so invariant 4 allows.
    write_marker(tmp_path, 3)
    mounted = tree_state(inner)
    with managed(tmp_path) as directory:
        result = directory.reconcile()
        stats = directory.reclaim()
    assert [t.entry.name for t in result.trashed] == ["step_2"]
    (skip,) = result.skipped
    assert skip.entry.name == "step_1"
    assert skip.why.startswith("is or holds a mount point (")
    assert skip.why.endswith("); unmount it first")
    assert os.path.ismount(inner)
    assert tree_state(inner) == mounted
    assert stats.problems == []


def test_reclaim_never_crosses_a_mount_in_the_trash(
        tmp_path: Path, tmpfs_mount: Callable[[Path], Path]) -> None:
    (trash(tmp_path) / "7.1.1.0" / "a").mkdir(parents=True)
    (trash(tmp_path) / "7.1.1.0" / "a" / "f.bin").write_bytes(b"x")
    inner = tmpfs_mount(trash(tmp_path) / "7.1.1.0" / "a" / "mnt")
    (inner / "keep.bin").write_bytes(b"k")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        trash_fd = reaper.open_trash(fd, reserved.mount_id(fd), create=False)
        assert trash_fd is not None
        stats = reaper.reclaim(trash_fd)
        os.close(trash_fd)
    finally:
        os.close(fd)
    # An entry with a mount point inside is left whole until it is unmounted: the mount table
    # is checked first, because a same-filesystem bind mount has no other tell.
    assert stats.files == 0
    assert len(stats.problems) == 1 and "holds a mount point" in stats.problems[0]
    assert stats.pending == ["7.1.1.0"]
    assert (inner / "keep.bin").read_bytes() == b"k"
    assert (trash(tmp_path) / "7.1.1.0" / "a" / "f.bin").exists()


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_trash_that_is_not_a_real_directory_is_refused(tmp_path: Path, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    if kind == "symlink":
        trash(tree).symlink_to(elsewhere, target_is_directory=True)
    else:
        trash(tree).write_bytes(b"")
    fd = open_directory(str(tree))
    try:
        with pytest.raises(reserved.UnsafeObjectError):
            reaper.open_trash(fd, reserved.mount_id(fd), create=True)
    finally:
        os.close(fd)


def test_leftover_trash_is_reclaimed_on_the_next_sweep(tmp_path: Path) -> None:
    build_tree(tmp_path, 2, loaded=2)
    (trash(tmp_path) / "5.123.45.0" / "sub").mkdir(parents=True)
    (trash(tmp_path) / "5.123.45.0" / "sub" / "half.bin").write_bytes(b"h" * 100)
    ran = run_janitor("sweep", tmp_path)
    assert ran.code == 3, ran
    assert trash_names(tmp_path) == []
    assert step_numbers(tmp_path) == [2]


# ---- SIGKILL at random moments ----------------------------------------------------------------

# The child: the real `janitor sweep`, with every filesystem operation that changes the tree
# counted; at the K-th it SIGKILLs itself, before or after doing it. K=0 counts and never dies.
_KILLING_CHILD = """
import os, signal, sys
kill_at, after = int(sys.argv[1]), sys.argv[2] == "after"
count = 0
def counted(real):
    def wrapper(*args, **kwargs):
        global count
        count += 1
        if count == kill_at and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if count == kill_at and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper
for name in ("rename", "unlink", "rmdir", "mkdir", "fsync"):
    setattr(os, name, counted(getattr(os, name)))
import atexit
atexit.register(lambda: sys.stderr.write(f"ops={count}\\n"))
from janitor.cli import main
main(["sweep", *sys.argv[3:]])
"""

KILL_STEPS, KILL_FILES = 30, 300
KILL_ARGS = ("--interval-to-keep", "10", "--keep-last", "2")
KILL_LOADED = 28
# 10 and 20 are multiples, 28 is the loaded step, 29 and 30 are the two newest complete.
KILL_KEPT = [10, 20, 28, 29, 30]


def _build_kill_tree(path: Path) -> dict[int, dict[str, str]]:
    build_tree(path, KILL_STEPS, loaded=KILL_LOADED, files=KILL_FILES, size=48)
    manifest: dict[int, dict[str, str]] = {}
    for number in range(1, KILL_STEPS + 1):
        step = path / protocol.step_name(number)
        manifest[number] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                            for f in step.iterdir()}
    return manifest


def _child(kill_at: int, after: bool, path: Path) -> subprocess.Popen[bytes]:
    repo = str(Path(__file__).resolve().parent.parent)
    return subprocess.Popen([sys.executable, "-c", _KILLING_CHILD, str(kill_at),
                             "after" if after else "before", str(path), *KILL_ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": repo})


def _check_whole(path: Path, manifest: dict[int, dict[str, str]]) -> None:
    """Every step_N present is whole; nothing the janitor made looks like a step."""
    for number in step_numbers(path):
        step = path / protocol.step_name(number)
        seen = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in step.iterdir()}
        assert seen == manifest[number], f"step_{number} is not whole after the kill"
    for name in os.listdir(path):
        if protocol.looks_like_step(name):
            assert isinstance(protocol.parse_step_name(name), int), name
    for name in trash_names(path):
        assert not protocol.looks_like_step(name), name
    assert set(KILL_KEPT) <= set(step_numbers(path))


def _recover_and_check(path: Path, manifest: dict[int, dict[str, str]]) -> None:
    ran = run_janitor("sweep", path, *KILL_ARGS)
    assert ran.code in (0, 3), ran
    assert ran.stderr == "", ran
    assert trash_names(path) == [], "the rerun left trash behind"
    assert step_numbers(path) == KILL_KEPT
    _check_whole(path, manifest)


@pytest.mark.slow
def test_sweep_killed_at_random_operations_recovers(scratch_fs: Path) -> None:
    tmp_path = scratch_fs
    # Calibrate: how many counted operations does a whole sweep of this tree take?
    calibration = tmp_path / "calibration"
    manifest = _build_kill_tree(calibration)
    child = _child(0, False, calibration)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 3, err
    total_ops = int(err.decode().strip().rsplit("ops=", 1)[1])
    assert step_numbers(calibration) == KILL_KEPT
    doomed = KILL_STEPS - len(KILL_KEPT)
    assert total_ops > doomed * KILL_FILES

    rng = random.Random(20261125)
    # A few kills among the first operations (trash creation, lock, renames), the rest anywhere
    # in the reclaim; before and after the operation alike.
    points = sorted({rng.randint(1, doomed + 6) for _ in range(4)}
                    | {rng.randint(doomed + 6, total_ops) for _ in range(10)})
    killed = 0
    for index, kill_at in enumerate(points):
        tree = tmp_path / f"round-{index}"
        manifest = _build_kill_tree(tree)
        child = _child(kill_at, bool(index % 2), tree)
        _, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, (kill_at, child.returncode, err)
        killed += 1
        _check_whole(tree, manifest)
        _recover_and_check(tree, manifest)
        shutil.rmtree(tree)
    assert killed == len(points) >= 10
    print(f"kill points: {killed} of {total_ops} operations: {points}")


@pytest.mark.slow
def test_sweep_killed_by_the_parent_mid_reclaim_recovers(scratch_fs: Path) -> None:
    """SIGKILL from outside, at a moment chosen by what the trash holds (no timing guesses)."""
    tmp_path = scratch_fs
    rng = random.Random(7)
    hits = 0
    for index in range(3):
        tree = tmp_path / f"round-{index}"
        manifest = _build_kill_tree(tree)
        threshold = rng.randint(1, 20)
        child = subprocess.Popen([JANITOR, "sweep", str(tree), *KILL_ARGS],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def trash_filled(threshold: int = threshold, tree: Path = tree,
                         child: subprocess.Popen[bytes] = child) -> bool:
            try:
                return len(os.listdir(trash(tree))) >= threshold or child.poll() is not None
            except FileNotFoundError:
                return child.poll() is not None

        wait_until(trash_filled, 60, "the sweep to fill the trash")
        child.send_signal(signal.SIGKILL)
        code = child.wait(timeout=60)
        hits += code == -signal.SIGKILL
        _check_whole(tree, manifest)
        _recover_and_check(tree, manifest)
    print(f"parent kills that landed mid-sweep: {hits} of 3")
