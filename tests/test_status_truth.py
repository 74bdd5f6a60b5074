"""`janitor status` shows the plan the running janitor executes (issue 12, point 1, in part):
the policy its lock file records, not status's own defaults; flags given to status replace it,
with a warning where they differ."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
from pathlib import Path

import pytest
from helpers.daemon import Daemon
from helpers.run import run_janitor
from helpers.safety import build, publish_marker
from helpers.tree import step_numbers
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janitor.cli import main


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
        # One line for the policy everywhere: the lock file, the `ready` log line and status.
        recorded = json.loads((tree / ".janitor.lock").read_text())["policy"]["text"]
        assert recorded == held["policy"] == daemon.wait_event("ready")["policy_text"]
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


_RECORDS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4), max_leaves=12)
_POLICY_KEYS = ("gated", "interval_to_keep", "keep_last", "partial_grace_s", "progress",
                "complete_markers")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(policy=st.one_of(_RECORDS, st.fixed_dictionaries(
    dict.fromkeys(_POLICY_KEYS, _RECORDS))), raw=st.booleans())
def test_any_recorded_policy_is_read_back_or_refused_in_one_line(
        tmp_path: Path, policy: object, raw: bool) -> None:
    """Whoever can write `.janitor.lock` controls what status reads back: any content gives a
    plan (a valid policy) or a warning, never a traceback, and nothing on disk changes."""
    tree = tmp_path / "tree"
    if not tree.exists():
        build(tree, range(6))
        publish_marker(tree, 5)
    record = json.dumps({"pid": os.getpid(), "host": "h", "policy": policy}, allow_nan=True)
    lock_path = tree / ".janitor.lock"
    lock_path.write_text(record if not raw else record[: len(record) // 2])
    fd = os.open(lock_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a holder: status reads the record and plans with it
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as done:
            main(["status", "--json", str(tree)])
    finally:
        os.close(fd)
    assert done.value.code == 0, err.getvalue()
    (directory,) = json.loads(out.getvalue())["directories"]
    assert directory["policy_source"] in ("holder", "defaults")
    if directory["policy_source"] == "defaults":
        assert "cannot be read" in directory["policy_warning"]
    assert step_numbers(tree) == list(range(6))
