"""A bind mount of the same filesystem inside a trashed step: reclaim must not walk into it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from janitor.fs import reaper


def test_reclaim_leaves_a_same_filesystem_bind_mount_in_the_trash(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"keep me")
    trash = tmp_path / "managed" / ".janitor-trash"
    entry = trash / "7.1.1.0"
    (entry / "shards").mkdir(parents=True)
    (entry / "shards" / "a.bin").write_bytes(b"x")
    mount_point = entry / "shards" / "mnt"
    mount_point.mkdir()
    if subprocess.run(["mount", "--bind", str(outside), str(mount_point)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root and mount rights)")
    try:
        fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
        try:
            stats = reaper.reclaim(fd)
        finally:
            os.close(fd)
        assert (outside / "weights.bin").read_bytes() == b"keep me"
        assert (mount_point / "weights.bin").exists(), "the walk went through the bind mount"
        assert any("holds a mount point" in problem for problem in stats.problems)
        assert entry.exists()
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stats = reaper.reclaim(fd)  # unmounted: the next reclaim finishes the job
    finally:
        os.close(fd)
    assert not entry.exists() and not stats.problems
    assert (outside / "weights.bin").read_bytes() == b"keep me"
