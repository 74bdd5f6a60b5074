"""A staging directory whose writer is busy deep inside it is never swept as abandoned."""

from __future__ import annotations

import time
from pathlib import Path

from helpers.run import run_janitor
from helpers.tree import build_tree, newest_change_ns
from helpers.wait import wait_until

from janitor import protocol

GRACE_S = 1.0


def _wait_past_grace(since_ns: int) -> None:
    """Let the grace period pass for everything changed up to `since_ns` (a clock condition)."""
    wait_until(lambda: time.time_ns() > since_ns + int(GRACE_S * 1.5e9), 10,
               "the grace period to pass")


def test_deep_write_in_an_old_staging_dir_keeps_it(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "b", 3, loaded=3)
    staging = tree / f"{protocol.STAGING_PREFIX}4.abc"
    deep = staging / "shards" / "rank0"
    deep.mkdir(parents=True)
    (deep / "part.bin").write_bytes(b"started")
    _wait_past_grace(newest_change_ns(staging))
    # The writer appends deep inside: neither the staging dir nor its direct child changes.
    with (deep / "part.bin").open("ab") as handle:
        handle.write(b" and still writing")
    args = ("sweep", tree, "--partial-grace", str(GRACE_S), "--audit-log", "off")
    ran = run_janitor(*args)
    assert staging.exists(), ran.stdout
    assert "in-progress" in ran.stdout
    _wait_past_grace(newest_change_ns(staging))
    ran = run_janitor(*args)
    assert not staging.exists(), ran.stdout
    assert "abandoned-staging" in ran.stdout
