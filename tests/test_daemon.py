"""`janitor run` as a real process on real trees: markers, lifecycle, notify, HTTP, status, logs.

Every wait is on a condition with a deadline (a log event, a notification, the listing); nothing
sleeps to synchronise. Watching edge cases live in test_daemon_watch.py, reclaim in
test_daemon_reclaim.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.daemon import (
    Janitor,
    NotifySocket,
    Spawn,
    janitor_argv,
    parse_metric,
    publish_marker,
    write_marker_in_place,
)
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, managed directory) with steps 1..9 complete and LOADED_STEP = 1 (nothing doomed)."""
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 10))
    publish_marker(managed, 1)
    return root, managed


def ready(daemon: Janitor) -> dict[str, object]:
    return daemon.wait_event("ready", timeout_s=10)


# ---- markers -----------------------------------------------------------------------------------

def test_atomic_publish_deletes_exactly_the_doomed_steps(spawn: Spawn,
                                                         tree: tuple[Path, Path]) -> None:
    root, managed = tree
    daemon = spawn(str(root), "--interval-to-keep", "4")
    ready(daemon)
    assert set(step_numbers(managed)) == set(range(1, 10)), "LOADED_STEP=1 licenses nothing"

    publish_marker(managed, 7)
    # Kept: 4 and 8 (multiples of 4), 9 (newest complete), 7 (at the loaded step) and 8 above it.
    wait_until(lambda: set(step_numbers(managed)) == {4, 7, 8, 9}, 10, "steps 1,2,3,5,6 to go")
    for step in (1, 2, 3, 5, 6):
        event = daemon.wait_event("deleted", step=step, timeout_s=60)
        assert event["reason"] == "superseded"
        assert event["directory"] == str(managed)
        assert event["bytes"] > 0
    code, _ = daemon.stop()
    assert code == 0
    assert set(step_numbers(managed)) == {4, 7, 8, 9}
    assert len(daemon.named("deleted")) == 5, "one deleted event per deletion"
    assert daemon.not_json == []


def test_marker_written_in_place_works_too(spawn: Spawn, tree: tuple[Path, Path]) -> None:
    root, managed = tree
    daemon = spawn(str(root))
    ready(daemon)
    write_marker_in_place(managed, 5)
    wait_until(lambda: set(step_numbers(managed)) == {5, 6, 7, 8, 9}, 10, "steps 1-4 to go")
    write_marker_in_place(managed, 8)
    wait_until(lambda: set(step_numbers(managed)) == {8, 9}, 10, "steps 5-7 to go")


def test_a_second_consumer_holds_deletion_back_to_the_minimum(spawn: Spawn,
                                                              tree: tuple[Path, Path]) -> None:
    root, managed = tree
    publish_marker(managed, 3, consumer="eval")
    daemon = spawn(str(root))
    ready(daemon)
    publish_marker(managed, 8)
    wait_until(lambda: daemon.named("deleted", step=2), 10, "step 2 deleted (below eval's 3)")
    assert set(step_numbers(managed)) == set(range(3, 10)), "eval at 3 keeps 3 and up"
    publish_marker(managed, 6, consumer="eval")
    wait_until(lambda: set(step_numbers(managed)) == {6, 7, 8, 9}, 10, "min(8, 6) = 6 to apply")
    assert not daemon.named("deleted", step=6)


# ---- lifecycle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_within_two_seconds_with_exit_0(spawn: Spawn, tree: tuple[Path, Path],
                                                     signum: int) -> None:
    root, _ = tree
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0")
    ready(daemon)
    code, took = daemon.stop(signum)
    assert code == 0
    assert took < 2.0, f"stopping took {took:.2f} s"
    assert daemon.named("stopping", signal=signal.Signals(signum).name)


def test_second_instance_is_refused_with_one_line_naming_the_holder(
        spawn: Spawn, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    first = spawn(str(root))
    ready(first)
    second = subprocess.run([*janitor_argv(), "run", str(root)], capture_output=True, timeout=30,
                            check=False)
    assert second.returncode == 4
    lines = second.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert f"pid {first.pid}" in lines[0]
    assert first.proc.poll() is None, "the first instance keeps running"


def test_once_reconciles_and_exits(tree: tuple[Path, Path]) -> None:
    root, managed = tree
    publish_marker(managed, 6)
    done = subprocess.run([*janitor_argv(), "run", "--once", str(root)], capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert set(step_numbers(managed)) == {6, 7, 8, 9}
    events = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert sorted(e["step"] for e in events if e["event"] == "deleted") == [1, 2, 3, 4, 5]
    assert os.listdir(managed / ".janitor-trash") == [], "--once reclaims before exiting"


def test_dry_run_logs_would_delete_and_changes_nothing(spawn: Spawn,
                                                       tree: tuple[Path, Path]) -> None:
    root, managed = tree
    publish_marker(managed, 4)
    before = sorted(os.listdir(managed))
    daemon = spawn(str(root), "--dry-run")
    ready(daemon)
    for step in (1, 2, 3):
        daemon.wait_event("would_delete", step=step, reason="superseded")
    publish_marker(managed, 6)
    daemon.wait_event("would_delete", step=5)
    # Info, not a warning (a dry run doing its job), and once per step over many passes.
    assert {e["level"] for e in daemon.named("would_delete")} == {"info"}
    assert len(daemon.named("would_delete", step=1)) == 1
    after = sorted(os.listdir(managed))
    assert after == before
    assert ".janitor.lock" not in after and ".janitor-trash" not in after
    assert not daemon.named("deleted")
    code, _ = daemon.stop()
    assert code == 0


def test_exit_with_pid_does_a_final_pass_and_exits_0(spawn: Spawn,
                                                     tree: tuple[Path, Path]) -> None:
    root, managed = tree
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        daemon = spawn(str(root), "--exit-with-pid", str(trainer.pid))
        ready(daemon)
        publish_marker(managed, 5)
        wait_until(lambda: set(step_numbers(managed)) == set(range(5, 10)), 10, "steps 1-4 to go")
        publish_marker(managed, 7)  # races the kill: the final pass must apply it anyway
        trainer.kill()
        # Not reaped yet on purpose: the trainer is a zombie until its parent waits for it, and a
        # zombie has exited all the same.
        assert daemon.wait(20) == 0
    finally:
        trainer.kill()
        trainer.wait()
    assert set(step_numbers(managed)) == {7, 8, 9}
    finished = daemon.wait_event("finished")
    assert finished["reclaim_done"] is True
    assert os.listdir(managed / ".janitor-trash") == []


def test_exit_with_pid_of_no_process_is_a_usage_error(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    done = subprocess.run([*janitor_argv(), "run", str(root), "--exit-with-pid", str(probe.pid)],
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "no such process" in done.stderr.decode()


# ---- systemd notify ----------------------------------------------------------------------------

def test_sd_notify_ready_after_first_pass_watchdog_status_stopping(
        spawn: Spawn, tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, managed = tree
    publish_marker(managed, 5)  # doomed before the start: gone by READY
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = spawn(str(root), env={"NOTIFY_SOCKET": str(notify.path),
                                       "WATCHDOG_USEC": "400000"})
        at_ready: set[int] = set()

        def look(text: str) -> None:
            if "READY=1" in text:
                at_ready.update(step_numbers(managed))  # look at once, before anything else

        notify.wait_for(lambda m: "READY=1" in m, 15, "READY=1", on_message=look)
        assert at_ready == set(range(5, 10)), "READY only after the first reconcile pass"
        # Pings at half of WATCHDOG_USEC (0.2 s): wait for three of them.
        wait_until(lambda: (notify.receive(1.0) or True)
                   and sum("WATCHDOG=1" in m for _, m in notify.messages) >= 3,
                   10, "three WATCHDOG=1 pings")
        pings = [t for t, m in notify.messages if "WATCHDOG=1" in m]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.1 < gap < 1.5 for gap in gaps), gaps
        statuses = [m for _, m in notify.messages if m.startswith("STATUS=") or "\nSTATUS=" in m]
        assert statuses and "directories" in statuses[0]
        daemon.proc.send_signal(signal.SIGTERM)
        notify.wait_for(lambda m: "STOPPING=1" in m, 5, "STOPPING=1")
        assert daemon.wait() == 0
    finally:
        notify.close()


# ---- HTTP --------------------------------------------------------------------------------------

def test_metrics_name_the_deletion_and_its_reason(spawn: Spawn, tree: tuple[Path, Path]) -> None:
    root, managed = tree
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0")
    ready(daemon)
    status, body = daemon.http("/healthz")
    assert (status, body) == (200, "ok\n")
    publish_marker(managed, 3)
    daemon.wait_event("deleted", step=2, timeout_s=60)
    status, body = daemon.http("/metrics")
    assert status == 200
    assert parse_metric(body, "ckpt_janitor_deletions_total", {"reason": "superseded"}) == 2
    assert parse_metric(body, "ckpt_janitor_reclaimed_bytes_total") > 0
    assert parse_metric(body, "ckpt_janitor_managed_directories") == 1
    assert parse_metric(body, "ckpt_janitor_loaded_step_lag_steps_max") == 6
    assert parse_metric(body, "ckpt_janitor_watches") >= 3  # root, run, broadcasts
    assert parse_metric(body, "ckpt_janitor_directories_watched", {"mode": "inotify"}) == 1
    assert parse_metric(body, "ckpt_janitor_inotify_overflows_total") == 0
    for name in ("ckpt_janitor_reconcile_duration_seconds_count",
                 "ckpt_janitor_last_reconcile_timestamp_seconds",
                 "ckpt_janitor_trash_pending_bytes", "ckpt_janitor_filesystem_free_bytes"):
        assert parse_metric(body, name) is not None, name
    assert "_created" not in body
    assert daemon.http("/nope")[0] == 404


def test_healthz_turns_503_when_the_loop_hangs(spawn: Spawn, tree: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    root, _ = tree
    switch = tmp_path / "hang"
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--rescan-interval", "0.2",
                   env={"JANITOR_TEST_HANG_FILE": str(switch)})
    ready(daemon)
    # Healthy across more than three intervals: the timer passes keep it alive.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert daemon.http("/healthz")[0] == 200
    switch.touch()
    daemon.wait_event("hanging_on_purpose")
    _, body = wait_until(lambda: (r := daemon.http("/healthz"))[0] == 503 and r, 5,
                              "/healthz to report 503")
    assert "more than 0.6 s" in body


def test_healthz_stays_200_while_no_managed_directory_exists_yet(spawn: Spawn,
                                                                 tmp_path: Path) -> None:
    """A sidecar starts before the trainer wrote its first step: that is idle, not hung."""
    root = tmp_path / "empty"
    root.mkdir()
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--rescan-interval", "0.2")
    ready(daemon)
    assert daemon.wait_event("nothing_managed")["root"] == str(root)
    deadline = time.monotonic() + 1.2  # six intervals, twice the 503 threshold
    while time.monotonic() < deadline:
        status, body = daemon.http("/healthz")
        assert status == 200, body
    assert body == f"ok; no managed directory under {root}\n"  # alive, and says it keeps nothing


def test_steps_one_level_beyond_max_depth_are_reported_not_adopted(spawn: Spawn,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    deep = root / "team" / "run" / "broadcasts"  # depth 3
    make_steps(deep, range(1, 4))
    publish_marker(deep, 3)
    daemon = spawn(str(root), "--max-depth", "2", "--metrics-addr", "127.0.0.1:0")
    ready(daemon)
    warned = daemon.wait_event("steps_beyond_max_depth")
    assert warned["directory"] == str(deep) and warned["max_depth"] == 2
    status, body = daemon.http("/healthz")
    assert status == 200 and f"beyond --max-depth 2 in {deep}" in body
    assert not daemon.named("directory_adopted")
    assert set(step_numbers(deep)) == {1, 2, 3}, "never adopted, so nothing deleted"


# ---- status and logs ---------------------------------------------------------------------------

def test_status_shows_consumers_lag_decisions_trash_and_the_daemon(spawn: Spawn,
                                                                   tree: tuple[Path, Path]) -> None:
    root, managed = tree
    publish_marker(managed, 4, consumer="eval")
    publish_marker(managed, 6)

    def status(*extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*janitor_argv(), "status", str(root), *extra], capture_output=True,
                              timeout=30, check=False)

    before = json.loads(status("--json").stdout)["directories"][0]
    assert before["daemon"] == {"running": False}
    assert before["loaded_step"] == 4 and before["lag_steps"] == 5
    assert {c["file"]: c["step"] for c in before["consumers"]} == {"LOADED_STEP": 6,
                                                                   "LOADED_STEP.eval": 4}
    assert before["decisions"]["delete:superseded"]["count"] == 3
    assert before["decisions"]["keep:newest-complete"]["count"] == 1

    daemon = spawn(str(root))
    ready(daemon)
    wait_until(lambda: set(step_numbers(managed)) == set(range(4, 10)), 10, "steps 1-3 to go")
    after = json.loads(status("--json").stdout)["directories"][0]
    assert after["daemon"]["running"] is True
    assert after["daemon"]["pid"] == daemon.pid
    assert "delete:superseded" not in after["decisions"]
    assert after["trash_entries"] in (0, 1, 2, 3)  # reclaim may still be under way
    assert after["path"] == str(managed)
    text = status()
    assert text.returncode == 0
    out = text.stdout.decode()
    assert f"running, pid {daemon.pid}" in out
    assert "LOADED_STEP.eval = 4" in out
    assert "lag 5 steps" in out
    assert "trash:" in out


def test_every_stderr_line_is_json_and_deleted_events_carry_the_facts(
        spawn: Spawn, tree: tuple[Path, Path]) -> None:
    root, managed = tree
    (managed / "step_07").mkdir()  # foreign: reported once
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--log-level", "debug")
    ready(daemon)
    publish_marker(managed, 4)
    for step in (1, 2, 3):
        event = daemon.wait_event("deleted", step=step, timeout_s=60)
        assert {"timestamp", "level", "logger", "directory", "reason", "bytes"} <= set(event)
    daemon.http("/metrics")
    daemon.stop()
    assert daemon.not_json == []
    assert len(daemon.lines) >= 6
    assert len(daemon.named("foreign_entry")) == 1
