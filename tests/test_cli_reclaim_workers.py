"""`--reclaim-workers`: the parallel reclaim through the real CLI, and its bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.run import run_janitor
from helpers.tree import build_tree, step_numbers, write_marker


def test_sweep_with_reclaim_workers_deletes_and_empties_the_trash(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "b", 8, loaded=None, files=40)
    for number in range(1, 9):  # subdirectories, so the workers have something to share
        shard_dir = tree / f"step_{number}" / "shards"
        shard_dir.mkdir()
        for index in range(20):
            (shard_dir / f"s{index}").write_bytes(b"x" * 4096)
    write_marker(tree, 7)  # after the shards: the marker licenses what was written before it
    ran = run_janitor("sweep", tree, "--reclaim-workers", "4", "--audit-log", "off")
    assert ran.code == 3, ran.stderr
    assert step_numbers(tree) == [7, 8]
    assert list((tree / ".janitor-trash").iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1", "many", "65"])
def test_bad_reclaim_workers_is_one_usage_line(tmp_path: Path, value: str) -> None:
    tree = build_tree(tmp_path / "b", 3, loaded=3)
    ran = run_janitor("sweep", tree, "--reclaim-workers", value)
    assert ran.code == 2
    assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: error:")
    assert step_numbers(tree) == [1, 2, 3]
