"""No silent stuck state: a fault that stops deletion in a directory is logged each time it
begins (also after a recovery), a `resumed` event says when it ended, and the start line says
what the daemon runs with (version, roots, policy, audit log)."""

from __future__ import annotations

from pathlib import Path

from helpers.daemon import Spawn, publish_marker
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until

from janitor import __version__


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
