"""Reclaiming off the loop: a huge reclaim never delays the next reaction, and a killed daemon's
trash is reclaimed by the next start, each deletion reported exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers.daemon import Spawn, publish_marker
from helpers.tree import make_steps, step_numbers, trash_names
from helpers.wait import wait_until

BIG_FILES = 30_000


def _big_tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, [1], files=BIG_FILES)
    make_steps(managed, range(2, 10))
    publish_marker(managed, 1)
    return root, managed


@pytest.mark.slow
def test_a_slow_reclaim_does_not_delay_the_next_reaction(spawn: Spawn, tmp_path: Path) -> None:
    root, managed = _big_tree(tmp_path)
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--rescan-interval", "0.5")
    daemon.wait_event("ready")
    publish_marker(managed, 2)  # dooms step 1: 30,000 files to unlink
    wait_until(lambda: 1 not in step_numbers(managed), 10, "step 1 to leave the listing")
    # Let a timer rescan pass first: it queues a reclaim of "whatever is in the trash" behind
    # the big one, which must not also claim (and report) the step trashed next.
    passes = daemon.metric("ckpt_janitor_reconcile_duration_seconds_count") or 0
    wait_until(lambda: (daemon.metric("ckpt_janitor_reconcile_duration_seconds_count") or 0)
               > passes, 10, "a rescan pass during the big reclaim", interval_s=0.05)
    assert not daemon.named("deleted", step=1)
    publish_marker(managed, 3)  # dooms step 2 while step 1 is still being reclaimed
    wait_until(lambda: 2 not in step_numbers(managed), 10, "step 2 to leave the listing")
    assert not daemon.named("deleted", step=1), "step 2 left while step 1's reclaim still ran"
    assert any(name.startswith("1.") for name in trash_names(managed))
    big = daemon.wait_event("deleted", step=1, timeout_s=120)
    assert big["files"] >= BIG_FILES and big["reason"] == "superseded"
    daemon.wait_event("deleted", step=2, timeout_s=60)
    wait_until(lambda: trash_names(managed) == [], 10, "the trash to empty")
    # Rescans ran during the big reclaim: each deletion is still reported exactly once.
    assert sorted(e["step"] for e in daemon.named("deleted")) == [1, 2]
    assert daemon.metric("ckpt_janitor_deletions_total", reason="superseded") == 2
    assert daemon.metric("ckpt_janitor_trash_pending_bytes") == 0


@pytest.mark.slow
def test_sigkill_during_a_big_reclaim_leaves_trash_the_next_start_reclaims(
        spawn: Spawn, tmp_path: Path) -> None:
    root, managed = _big_tree(tmp_path)
    first = spawn(str(root))
    first.wait_event("ready")
    publish_marker(managed, 2)
    wait_until(lambda: 1 not in step_numbers(managed), 10, "step 1 to leave the listing")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    assert not first.named("deleted", step=1), "killed before the reclaim finished"
    leftover = trash_names(managed)
    assert len(leftover) == 1 and leftover[0].startswith("1.")
    assert set(step_numbers(managed)) == set(range(2, 10)), "the step is whole in trash or gone"

    publish_marker(managed, 5)  # more to delete on the next start, besides the leftover
    second = spawn(str(root))
    second.wait_event("ready")
    left = second.wait_event("deleted", step=1, timeout_s=120)
    assert left["reason"] == "leftover"
    for step in (2, 3, 4):
        assert second.wait_event("deleted", step=step, timeout_s=60)["reason"] == "superseded"
    wait_until(lambda: trash_names(managed) == [], 10, "the trash to empty")
    assert set(step_numbers(managed)) == set(range(5, 10))
    # The leftover job and the new pass's job overlap: still one event per deletion.
    second.stop()
    assert sorted(e["step"] for e in second.named("deleted")) == [1, 2, 3, 4]
