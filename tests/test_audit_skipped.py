"""An audited deletion that could not be carried out is followed by a `skipped` record."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers.run import run_janitor
from helpers.tree import build_tree, step_numbers, write_marker


def test_a_step_that_cannot_be_moved_gets_a_skipped_record(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "b", 4, loaded=None)
    mount_point = tree / "step_2" / "mnt"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    write_marker(tree, 4)  # after the mount: the marker licenses the step as it now is
    audit = tmp_path / "audit.jsonl"
    try:
        ran = run_janitor("sweep", tree, "--audit-log", audit)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert ran.code == 5, ran.stderr
    assert step_numbers(tree) == [2, 4]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [
        ("delete", 1), ("delete", 2), ("skipped", 2), ("delete", 3)]
    assert "mount point" in records[2]["why"]
    verified = run_janitor("audit", "verify", audit)
    assert verified.code == 0, verified.stdout
    assert "1 of the deletions were not carried out" in verified.stdout
