"""reaper.reclaim(..., workers=N): the parallel reclaim frees exactly what the serial one does,
under the same rules (no symlink followed, no mount point crossed, busy entries left pending)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from janitor.fs import reaper


def build_step(root: Path, subdirs: int = 6, files: int = 20, size: int = 4096) -> Path:
    """A step-like tree: top-level files, subdirectories of files, one nested level."""
    root.mkdir(parents=True)
    (root / "STABLE").write_bytes(b"")
    (root / "top.bin").write_bytes(b"t" * size)
    for d in range(subdirs):
        sub = root / f"shard{d}"
        sub.mkdir()
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x" * size)
        (sub / "nested").mkdir()
        (sub / "nested" / "deep.bin").write_bytes(b"d" * size)
    return root


def open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


@contextlib.contextmanager
def trash_of(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    trash = tmp_path / "trash"
    trash.mkdir(exist_ok=True)
    fd = open_dir(trash)
    try:
        yield trash, fd
    finally:
        os.close(fd)


@pytest.mark.parametrize("workers", [2, 4, 16])
def test_parallel_frees_what_serial_frees(tmp_path: Path, workers: int) -> None:
    with trash_of(tmp_path) as (trash, fd):
        build_step(trash / "serial")
        build_step(trash / "parallel")
        serial = reaper.reclaim(fd, ["serial"])
        parallel = reaper.reclaim(fd, ["parallel"], workers=workers)
        assert os.listdir(trash) == []
    assert (parallel.files, parallel.directories, parallel.bytes) == (
        serial.files, serial.directories, serial.bytes)
    assert parallel.files == 2 + 6 * 21
    assert parallel.directories == 1 + 6 * 2
    assert parallel.pending == [] and parallel.problems == []


def test_parallel_reclaims_whole_trash_and_plain_files(tmp_path: Path) -> None:
    with trash_of(tmp_path) as (trash, fd):
        build_step(trash / "a")
        build_step(trash / "b", subdirs=0)
        (trash / "loose").write_bytes(b"z" * 100)
        stats = reaper.reclaim(fd, workers=3)
        assert os.listdir(trash) == []
    assert stats.pending == [] and stats.problems == []


def test_parallel_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    with trash_of(tmp_path) as (trash, fd):
        step = build_step(trash / "step", subdirs=3)
        (step / "link-dir").symlink_to(outside)
        (step / "shard0" / "link-dir").symlink_to(outside)
        (step / "shard1" / "link-file").symlink_to(outside / "precious")
        (trash / "top-link").symlink_to(outside)
        stats = reaper.reclaim(fd, workers=4)
        assert os.listdir(trash) == []
    assert (outside / "precious").read_bytes() == b"keep me"
    assert stats.problems == []


def test_parallel_counts_hard_links_as_not_freed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared").write_bytes(b"s" * 65536)
    with trash_of(tmp_path) as (trash, fd):
        build_step(trash / "serial", subdirs=2)
        build_step(trash / "parallel", subdirs=2)
        os.link(outside / "shared", trash / "serial" / "shard0" / "hard")
        os.link(outside / "shared", trash / "parallel" / "shard0" / "hard")
        serial = reaper.reclaim(fd, ["serial"])
        parallel = reaper.reclaim(fd, ["parallel"], workers=2)
    assert parallel.bytes == serial.bytes
    assert (outside / "shared").stat().st_nlink == 1


def test_parallel_leaves_missing_entries_alone(tmp_path: Path) -> None:
    with trash_of(tmp_path) as (_, fd):
        stats = reaper.reclaim(fd, ["never-there"], workers=2)
    assert (stats.files, stats.pending, stats.problems) == (0, [], [])


def test_workers_below_one_is_refused(tmp_path: Path) -> None:
    with trash_of(tmp_path) as (_, fd), pytest.raises(ValueError, match="workers"):
        reaper.reclaim(fd, workers=0)


@contextlib.contextmanager
def tmpfs_at(where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                              capture_output=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount(8) on this machine")
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_parallel_never_crosses_a_mount_point(tmp_path: Path) -> None:
    with trash_of(tmp_path) as (trash, fd):
        step = build_step(trash / "step", subdirs=3)
        with tmpfs_at(step / "shard1" / "nested" / "mnt") as mounted:
            (mounted / "other-fs").write_bytes(b"not ours")
            stats = reaper.reclaim(fd, workers=4)
            assert (mounted / "other-fs").read_bytes() == b"not ours"
            assert stats.pending == ["step"]
            assert any("mount point" in problem for problem in stats.problems)
        # Once unmounted, the next reclaim finishes the entry.
        again = reaper.reclaim(fd, workers=4)
        assert again.pending == [] and os.listdir(trash) == []


def test_reclaimer_thread_uses_the_workers(tmp_path: Path) -> None:
    from janitor.daemon.reclaimer import Item, Reclaimer

    deleted: list[tuple[str, int]] = []
    reclaimer = Reclaimer(lambda directory, item, stats: deleted.append((item.trash_name,
                                                                         stats.files)),
                          None, workers=3)
    with trash_of(tmp_path) as (trash, fd):
        build_step(trash / "7.1.1.0", subdirs=4, files=5)
        job = reclaimer.submit(str(tmp_path), fd, [Item("7.1.1.0", 7, "superseded")])
        assert job.done.wait(30)
        assert os.listdir(trash) == []
    assert deleted == [("7.1.1.0", 2 + 4 * 6)]
    with pytest.raises(ValueError, match="workers"):
        Reclaimer(lambda *_: None, None, workers=0)
