"""`janitor status` shows the plan the running janitor executes (issue 12, point 1, in part):
the policy its lock file records, not status's own defaults; flags given to status replace it,
with a warning where they differ."""

from __future__ import annotations

import json
from pathlib import Path

from janitor_helpers import run_janitor, wait_until
from safety_helpers import Daemon, build, publish_marker, step_numbers


def _status(tree: Path, *flags: str) -> dict[str, object]:
    ran = run_janitor("status", "--json", tree, *flags)
    assert ran.code == 0, ran
    document = json.loads(ran.stdout)
    assert document["schema"] == 2
    (directory,) = document["directories"]
    assert isinstance(directory, dict)
    return directory


def test_status_plans_with_the_running_janitors_policy_and_warns_when_flags_differ(
        tmp_path: Path) -> None:
    tree = build(tmp_path / "tree", range(12))
    publish_marker(tree, 11)
    daemon = Daemon(["--interval-to-keep", "5", "--complete-marker", "STABLE",
                     "--rescan-interval", "60", "--audit-log", "off", tree])
    try:
        daemon.wait_event("ready")
        wait_until(lambda: step_numbers(tree) == [0, 5, 10, 11], 10.0, "the daemon's pass")
        held = _status(tree)
        assert held["policy_source"] == "holder" and held["policy_warning"] is None
        assert "--interval-to-keep 5" in str(held["policy"])
        # With status's own defaults (no interval), step_0, 5 and 10 would show as deleted.
        assert set(held["decisions"]) == {"keep:interval-multiple", "keep:newest-complete"}
        assert held["decisions"]["keep:interval-multiple"]["count"] == 3  # type: ignore[index]
        text = run_janitor("status", tree)
        assert "(the running janitor's)" in text.stdout and "--interval-to-keep 5" in text.stdout

        other = _status(tree, "--interval-to-keep", "3")
        assert other["policy_source"] == "flags"
        assert ("differ from the running janitor's policy (gated by LOADED_STEP, "
                "--interval-to-keep 5") in str(other["policy_warning"])
        # step_5 and step_10 are no multiples of 3: the flags' plan would delete them.
        assert other["decisions"]["delete:superseded"]["count"] == 2  # type: ignore[index]
    finally:
        assert daemon.stop() == 0
    alone = _status(tree)
    assert alone["policy_source"] == "defaults" and alone["policy_warning"] is None
