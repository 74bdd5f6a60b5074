"""What the daemon sees: inotify overflow, roots replaced, directories appearing, poll mode.

Real `janitor run` processes on real trees. The rescan timer is set long (60 s) wherever a test
must prove that a change was *seen* (an event or a poll), not merely caught by the timer.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from helpers.daemon import (
    Spawn,
    inotify_instances,
    inotify_watches,
    publish_marker,
    write_marker_in_place,
)
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until

SLOW_TIMER = ("--rescan-interval", "60")
MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def _can_write_sysctl() -> bool:
    return os.geteuid() == 0 and os.access(MAX_QUEUED, os.W_OK)


@pytest.mark.slow
@pytest.mark.skipif(not _can_write_sysctl(), reason="needs root to lower max_queued_events")
def test_inotify_queue_overflow_still_converges(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 4))
    publish_marker(managed, 1)
    saved = MAX_QUEUED.read_text()
    try:
        # The limit is read when an inotify instance is created: lower it around the start.
        MAX_QUEUED.write_text("16\n")
        daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--interval-to-keep", "100",
                       *SLOW_TIMER)
        daemon.wait_event("ready")
    finally:
        MAX_QUEUED.write_text(saved)
    # A burst of thousands of events while the daemon is stopped, so its 16-event queue surely
    # overflows instead of racing the reader thread: 500 steps created, 2,000 creates and deletes
    # of a scratch file (not ours to look at), then the marker.
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        make_steps(managed, range(4, 504))
        for _ in range(1000):
            (managed / "scratch").touch()
            (managed / "scratch").unlink()
        publish_marker(managed, 490)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    expected = {100, 200, 300, 400, 500} | set(range(490, 504))
    wait_until(lambda: set(step_numbers(managed)) == expected, 60, "the tree to converge")
    daemon.wait_event("inotify_overflow")
    overflows = daemon.metric("ckpt_janitor_inotify_overflows_total")
    assert overflows is not None and overflows > 0
    # Still watching after the overflow: the next publish is seen, not left to the 60 s timer.
    publish_marker(managed, 502)
    wait_until(lambda: set(step_numbers(managed)) == {100, 200, 300, 400, 500, 502, 503}, 10,
               "the publish after the overflow to be seen")
    assert daemon.not_json == []


def test_root_deleted_and_recreated(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 6))
    publish_marker(managed, 1)
    daemon = spawn(str(root), "--poll-interval", "0.2", *SLOW_TIMER)
    daemon.wait_event("ready")
    shutil.rmtree(root)
    daemon.wait_event("directory_released")
    make_steps(managed, range(10, 16))
    publish_marker(managed, 1)
    daemon.wait_event("directory_adopted", directory=str(managed), timeout_s=10)
    publish_marker(managed, 13)
    wait_until(lambda: set(step_numbers(managed)) == {13, 14, 15}, 10, "steps 10-12 to go")
    # The new tree is watched, not only polled for its root: a later publish is seen at once.
    publish_marker(managed, 15)
    wait_until(lambda: set(step_numbers(managed)) == {15}, 10, "steps 13-14 to go")
    assert daemon.proc.poll() is None
    assert not daemon.named("fatal")
    assert not daemon.named("watcher_died"), "a deleted directory is no dead watcher"


def test_root_replaced_by_another_directory_via_rename(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 6))
    publish_marker(managed, 1)
    replacement = tmp_path / "incoming"
    new_managed = replacement / "run" / "broadcasts"
    make_steps(new_managed, range(20, 26))
    publish_marker(new_managed, 20)
    daemon = spawn(str(root), *SLOW_TIMER)
    daemon.wait_event("ready")
    root.rename(tmp_path / "old")
    replacement.rename(root)
    # Noticed by comparing the root's device and inode (on the loop's next tick, within 5 s).
    daemon.wait_event("root_changed", timeout_s=10)
    wait_until(lambda: len(daemon.named("directory_adopted", directory=str(managed))) == 2, 10,
               "the replacement's managed directory to be adopted")
    # Changes in the new tree must reach the daemon through inotify on the *new* directories
    # (the 60 s timer is far beyond the deadline).
    publish_marker(managed, 23)
    wait_until(lambda: set(step_numbers(managed)) == {23, 24, 25}, 10,
               "a publish in the replacement tree to be seen")
    assert set(step_numbers(tmp_path / "old" / "run" / "broadcasts")) == {1, 2, 3, 4, 5}, \
        "the moved-away tree is no longer ours"
    assert inotify_watches(daemon.pid) == 3  # root, run, broadcasts: no stale ones


def test_managed_directory_created_after_start(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_steps(root / "run1" / "broadcasts", range(1, 3))
    publish_marker(root / "run1" / "broadcasts", 1)
    daemon = spawn(str(root), *SLOW_TIMER)
    daemon.wait_event("ready")
    managed = root / "run2" / "broadcasts"
    managed.mkdir(parents=True)
    make_steps(managed, range(1, 8))
    publish_marker(managed, 6)
    daemon.wait_event("directory_adopted", directory=str(managed), timeout_s=10)
    wait_until(lambda: set(step_numbers(managed)) == {6, 7}, 10, "steps 1-5 of run2 to go")
    write_marker_in_place(managed, 7)
    wait_until(lambda: set(step_numbers(managed)) == {7}, 10, "step 6 of run2 to go")
    # A run deleted by hand: released, and no alarm about a dead watcher.
    shutil.rmtree(root / "run1")
    daemon.wait_event("directory_released", directory=str(root / "run1" / "broadcasts"))
    make_steps(managed, [8, 9])
    publish_marker(managed, 9)
    wait_until(lambda: set(step_numbers(managed)) == {9}, 10, "run2 still watched")
    assert not daemon.named("watcher_died")
    assert inotify_watches(daemon.pid) == 3  # root, run2, run2/broadcasts


def test_poll_mode_works_without_inotify(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 10))
    publish_marker(managed, 1)
    daemon = spawn(str(root), "--watch", "poll", "--poll-interval", "0.2",
                   "--metrics-addr", "127.0.0.1:0", *SLOW_TIMER)
    daemon.wait_event("ready")
    daemon.wait_event("directory_adopted", watch="poll")
    assert inotify_instances(daemon.pid) == 0, "poll mode opens no inotify instance"
    assert inotify_watches(daemon.pid) == 0
    assert daemon.metric("ckpt_janitor_watches") == 0
    assert daemon.metric("ckpt_janitor_directories_watched", mode="poll") == 1
    publish_marker(managed, 4)
    wait_until(lambda: set(step_numbers(managed)) == set(range(4, 10)), 10, "a rename to be polled")
    write_marker_in_place(managed, 6)  # only the marker's own mtime changes
    wait_until(lambda: set(step_numbers(managed)) == set(range(6, 10)), 10,
               "an in-place marker write to be polled")
    publish_marker(managed, 3, consumer="eval")  # a consumer that appears later pins the rest
    make_steps(managed, [10])
    publish_marker(managed, 9)
    publish_marker(managed, 9, consumer="eval")
    wait_until(lambda: set(step_numbers(managed)) == {9, 10}, 10, "min over both consumers")
    assert inotify_instances(daemon.pid) == 0
