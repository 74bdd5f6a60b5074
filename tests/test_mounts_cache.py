"""The mount table is parsed again only when the kernel says it changed, and then at once: a
mount made between two reactions is in the table the second one reads (the reaper keeps a step
holding a mount point whole)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from janitor.fs import mounts


def _mount_tmpfs(path: Path) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")


def test_a_mount_and_an_unmount_are_seen_by_the_next_read(tmp_path: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    before = mounts.mount_table()
    assert mounts.mount_table() is before, "no change: the parsed table is reused"
    _mount_tmpfs(point)
    try:
        assert str(point) in mounts.mount_points()
        assert mounts.filesystem_type(str(point)) == "tmpfs"
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert str(point) not in mounts.mount_points()


def test_a_forked_child_and_its_parent_each_see_every_change(tmp_path: Path) -> None:
    """After a fork the two would share one open /proc/self/mounts, and so one change flag:
    whichever polled first would take the change from the other."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounts.mount_table()
    pid = os.fork()
    if pid == 0:  # the child mounts and reads the table (taking the change, were it shared)
        code = 1
        try:
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)],
                              capture_output=True, check=False).returncode == 0:
                code = 0 if str(point) in mounts.mount_points() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 1:
        pytest.skip("cannot mount tmpfs here")
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert str(point) in mounts.mount_points(), "the parent missed the child's mount"
    finally:
        subprocess.run(["umount", str(point)], check=True)
