"""One active janitor, N standby (`run --standby`): several pods of one job on a shared tree.

A standby janitor waits where another holds the lock instead of exiting 4, says so in its logs,
`/healthz`, `/metrics` and `janitor status`, and takes over within the rescan interval after the
holder dies (SIGKILL: no clean-up of its own). Each step is deleted by exactly one of them, and
never one the policy keeps. A dry-run daemon, which holds no lock either, shows in status too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from helpers.daemon import Spawn, janitor_argv, publish_marker
from helpers.safety import build, check_whole, read_audit
from helpers.tree import step_numbers
from helpers.wait import wait_until


def _status(root: Path) -> dict[str, object]:
    done = subprocess.run([*janitor_argv(), "status", "--json", str(root)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    reports = json.loads(done.stdout)["directories"]
    assert len(reports) == 1
    return reports[0]


def _roles(root: Path) -> dict[int, str]:
    janitors = _status(root)["janitors"]
    assert isinstance(janitors, list)
    return {int(j["pid"]): str(j["role"]) for j in janitors}


def test_a_standby_takes_over_when_the_active_janitor_is_killed(spawn: Spawn,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = build(root / "run" / "broadcasts", range(1, 10))
    publish_marker(managed, 3)
    common = ("--rescan-interval", "1", "--interval-to-keep", "1000", "--log-format", "json")
    active = spawn(str(root), *common, "--audit-log", str(tmp_path / "audit-a.jsonl"))
    active.wait_event("ready")
    wait_until(lambda: step_numbers(managed) == list(range(3, 10)), 10, "steps 1, 2 to go")
    standby = spawn(str(root), *common, "--standby", "--metrics-addr", "127.0.0.1:0",
                    "--audit-log", str(tmp_path / "audit-b.jsonl"))
    said = standby.wait_event("standby")
    assert said["directory"] == str(managed) and said["holder"]["pid"] == active.pid
    standby.wait_event("ready")
    code, health = standby.http("/healthz")
    assert code == 200 and "standby for 1 directory" in health
    assert standby.metric("ckpt_janitor_standby_directories") == 1
    assert standby.metric("ckpt_janitor_managed_directories") == 0
    wait_until(lambda: _roles(root) == {active.pid: "active", standby.pid: "standby"}, 10,
               "status to show both janitors")

    publish_marker(managed, 6)  # the active one deletes, the standby one nothing
    wait_until(lambda: step_numbers(managed) == list(range(6, 10)), 10, "steps 3-5 to go")
    os.kill(active.pid, signal.SIGKILL)
    active.proc.wait(10)
    publish_marker(managed, 8)
    took = standby.wait_event("took_over", timeout_s=10)
    assert took["directory"] == str(managed)
    wait_until(lambda: step_numbers(managed) == [8, 9], 10, "the new holder to delete 6, 7")
    wait_until(lambda: standby.metric("ckpt_janitor_standby_directories") == 0, 10,
               "the standby gauge to drop")
    assert _status(root)["daemon"]["pid"] == standby.pid  # type: ignore[index]

    deleted = [r["step"] for who in "ab" for r in read_audit(tmp_path / f"audit-{who}.jsonl")
               if r.get("event") == "delete"]
    assert sorted(deleted) == [1, 2, 3, 4, 5, 6, 7]  # each once, by one of them
    by_b = {r["step"] for r in read_audit(tmp_path / "audit-b.jsonl") if r.get("event") == "delete"}
    assert by_b == {6, 7}
    assert check_whole(managed) == []
    assert standby.stop()[0] == 0


def test_without_standby_a_second_janitor_still_exits_4_naming_the_holder(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = build(root / "run", range(1, 5))
    publish_marker(managed, 2)
    active = spawn(str(root), "--log-format", "json", "--audit-log", "off")
    active.wait_event("ready")
    second = spawn(str(root), "--log-format", "json", "--audit-log", "off")
    assert second.wait(20) == 4
    assert any(f"pid {active.pid}" in line for line in second.lines if line.startswith("janitor:"))


def test_a_standby_once_run_exits_4_and_deletes_nothing(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = build(root / "run", range(1, 6))
    publish_marker(managed, 2)
    active = spawn(str(root), "--log-format", "json", "--audit-log", "off")
    active.wait_event("ready")
    wait_until(lambda: step_numbers(managed) == [2, 3, 4, 5], 10, "step 1 to go")
    once = spawn(str(root), "--standby", "--once", "--log-format", "json", "--audit-log", "off")
    assert once.wait(20) == 4  # a directory was left untouched (another janitor holds it)
    assert once.named("standby")


def test_status_shows_a_dry_run_daemon_that_holds_no_lock(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = build(root / "run", range(1, 6))
    publish_marker(managed, 3)
    dry = spawn(str(root), "--dry-run", "--watch", "poll", "--log-format", "json")
    dry.wait_event("ready")
    wait_until(lambda: _roles(root) == {dry.pid: "dry-run"}, 10, "status to show the dry run")
    report = _status(root)
    assert report["daemon"] == {"running": False}
    assert report["janitors"][0]["watch"] == "poll"  # type: ignore[index]
    text = subprocess.run([*janitor_argv(), "status", str(root)], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert f"pid {dry.pid} on" in text and "dry run, holds no lock" in text
    assert step_numbers(managed) == [1, 2, 3, 4, 5]
    assert dry.stop()[0] == 0
    wait_until(lambda: _roles(root) == {}, 10, "a stopped daemon to vanish from status")
