"""What the daemon says is what it does: a fault that stops deletion in a directory is logged each
time it begins (also after a recovery), a `resumed` event says when it ended, the start line says
what the daemon runs with (version, roots, policy, audit log), and the per-directory metrics show
each stream, its lag and a stall that sends no event."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.daemon import Spawn, publish_marker
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until
from prometheus_client.parser import text_string_to_metric_families

from janitor import __version__
from janitor.daemon import fleet as fleet_module
from janitor.daemon.config import DaemonConfig
from janitor.daemon.dirty import DirtySet
from janitor.daemon.fleet import Fleet
from janitor.daemon.metrics import Metrics
from janitor.model import ScanOptions
from janitor.policy import Policy


def _write_marker(directory: Path, content: bytes) -> None:
    temporary = directory / ".LOADED_STEP.tmp"
    temporary.write_bytes(content)
    temporary.rename(directory / "LOADED_STEP")


def test_a_bad_marker_is_logged_each_time_it_goes_bad_and_recovery_is_logged(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 10))
    publish_marker(managed, 1)
    daemon = spawn(str(root), "--audit-log", "off")
    ready = daemon.wait_event("ready")
    assert ready["version"] == __version__ and ready["roots"] == [str(root)]
    assert ready["policy_text"].startswith("gated by LOADED_STEP") and ready["audit"] is None

    _write_marker(managed, b"abc")
    first = daemon.wait_event("deleting_nothing")
    assert "LOADED_STEP" in first["why"] and first["directory"] == str(managed)
    publish_marker(managed, 3)
    resumed = daemon.wait_event("resumed")
    assert resumed["after"] == first["why"]
    wait_until(lambda: set(step_numbers(managed)) == set(range(3, 10)), 30, "steps 1, 2 to go")

    _write_marker(managed, b"abc")  # the same fault again: logged again
    wait_until(lambda: len(daemon.named("deleting_nothing")) == 2, 10,
               "the second fault to be logged")
    _write_marker(managed, b"")  # another reason while it lasts: logged too
    wait_until(lambda: len(daemon.named("deleting_nothing")) == 3, 10,
               "the changed fault to be logged")
    publish_marker(managed, 5)
    wait_until(lambda: len(daemon.named("resumed")) == 2, 10, "the second recovery")
    wait_until(lambda: set(step_numbers(managed)) == set(range(5, 10)), 30, "steps 3, 4 to go")
    assert daemon.stop()[0] == 0


def _gauge(body: str, name: str, stream: str) -> float:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("stream") == stream:
                return float(sample.value)
    raise AssertionError(f"no {name}{{stream={stream!r}}} in the scrape")


def test_per_directory_metrics_show_each_stream_and_a_stall_without_any_event(
        spawn: Spawn, tmp_path: Path) -> None:
    """Trainer and consumers both stopped: no event, no pass; the marker age still grows."""
    root = tmp_path / "ckpt"
    for run, loaded in (("a", 3), ("b", 5)):
        make_steps(root / run / "broadcasts", range(1, 8))
        publish_marker(root / run / "broadcasts", loaded)
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--audit-log", "off")
    daemon.wait_event("ready")
    body = daemon.http("/metrics")[1]
    assert _gauge(body, "ckpt_janitor_directory_loaded_step", "a/broadcasts") == 3
    assert _gauge(body, "ckpt_janitor_directory_lag_steps", "b/broadcasts") == 2
    assert _gauge(body, "ckpt_janitor_directory_newest_complete_step", "b/broadcasts") == 7
    first = _gauge(body, "ckpt_janitor_directory_marker_age_seconds", "a/broadcasts")
    wait_until(lambda: _gauge(daemon.http("/metrics")[1],
                              "ckpt_janitor_directory_marker_age_seconds",
                              "a/broadcasts") >= first + 1.0, 10,
               "the marker age to grow while nothing happens")
    assert daemon.stop()[0] == 0


def test_stream_labels_are_unique_relative_paths_and_capped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_module, "MAX_STREAMS", 3)
    config = DaemonConfig(roots=("/ckpt", "/other"), policy=Policy(), options=ScanOptions())
    fleet = Fleet(config, Metrics(), DirtySet())
    try:
        names = []
        for i, path in enumerate(["/ckpt/a/broadcasts", "/other/a/broadcasts", "/ckpt",
                                  "/ckpt/z"]):
            stream = fleet._stream_for(path)
            names.append(stream)
            fleet.dirs[path] = SimpleNamespace(stream=stream)  # type: ignore[assignment]
            assert i < 3 or stream is None
        assert names == ["a/broadcasts", "a/broadcasts#2", "ckpt", None]
    finally:
        fleet.dirs.clear()
        fleet.close()


def test_debug_logs_why_each_pass_kept_what_it_looked_at(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 10))
    publish_marker(managed, 1)
    daemon = spawn(str(root), "--log-level", "debug", "--interval-to-keep", "4")
    daemon.wait_event("ready")
    publish_marker(managed, 7)
    wait_until(lambda: set(step_numbers(managed)) == {4, 7, 8, 9}, 30, "steps 1,2,3,5,6 to go")
    # The steps go (renamed) before the pass's record is logged: wait for the line too.
    wait_until(lambda: any("superseded" in e["reasons"] for e in daemon.named("pass_decided")),
               10, "the deleting pass's pass_decided line")
    summary = next(e for e in daemon.named("pass_decided") if "superseded" in e["reasons"])
    assert summary["loaded_step"] == 7 and summary["newest_complete"] == 9
    assert summary["steps"] == 4, "the steps the directory holds after the pass"
    assert summary["reasons"] == {"superseded": 5}  # the five below 7 that are not multiples
    assert summary["looked_at"] == 5, "the kept multiples and steps above were not decided"
    assert daemon.stop()[0] == 0


def _du(directory: Path) -> int:
    """Bytes on disk of every step directory below `directory` (what removing them frees)."""
    total = 0
    for step in directory.glob("step_*"):
        for base, dirs, files in os.walk(step):
            total += sum(os.lstat(os.path.join(base, n)).st_blocks * 512 for n in dirs + files)
        total += os.lstat(step).st_blocks * 512
    return total


def test_directory_bytes_follow_the_steps_and_trash_bytes_drain(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 8), files=3)
    for step in managed.glob("step_*"):
        (step / "weights.bin").write_bytes(os.urandom(256 * 1024))
    publish_marker(managed, 1)
    daemon = spawn(str(root), "--metrics-addr", "127.0.0.1:0", "--audit-log", "off")
    daemon.wait_event("ready")

    def gauge(name: str) -> float:
        return _gauge(daemon.http("/metrics")[1], name, "run/broadcasts")

    wait_until(lambda: gauge("ckpt_janitor_directory_bytes") == _du(managed), 10,
               "the directory's bytes to be measured")
    before = _du(managed)
    assert before > 7 * 256 * 1024
    # Step 8 is sized while it is being written (empty), then completes with no event in its
    # parent: the pass that reads it as the newest step must size it again.
    make_steps(managed, [8], complete=False)
    wait_until(lambda: gauge("ckpt_janitor_directory_bytes") == _du(managed), 10,
               "the step being written to be measured")
    (managed / "step_8" / "weights.bin").write_bytes(os.urandom(64 * 1024))
    (managed / "step_8" / "STABLE").touch()
    publish_marker(managed, 6)
    wait_until(lambda: step_numbers(managed) == [6, 7, 8], 10, "steps 1-5 to go")
    wait_until(lambda: gauge("ckpt_janitor_directory_bytes") == _du(managed), 10,
               "the bytes to follow the deletions and the new step")
    assert gauge("ckpt_janitor_directory_bytes") < before
    wait_until(lambda: gauge("ckpt_janitor_directory_trash_bytes") == 0, 10,
               "the trash to drain")
    assert daemon.stop()[0] == 0


def test_run_once_exits_as_sweep_does_when_a_directory_is_left_untouched(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    good, bad = root / "good", root / "bad"
    for managed in (good, bad):
        make_steps(managed, range(1, 5))
        publish_marker(managed, 3)
    once = spawn(str(root), "--once", "--audit-log", "off", "--log-format", "json")
    assert once.wait(30) == 0
    _write_marker(bad, b"not a step\n")
    make_steps(good, [5])
    publish_marker(good, 5)
    once = spawn(str(root), "--once", "--audit-log", "off", "--log-format", "json")
    assert once.wait(30) == 4  # refused: `bad` was left untouched; `good` was still cleaned
    assert step_numbers(good) == [5] and step_numbers(bad) == [3, 4]
    assert once.named("deleting_nothing", directory=str(bad))
