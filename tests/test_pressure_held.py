"""What holds a directory's bytes (issue 14, point 3): over --max-bytes, the daemon's `pressure`
event, sweep's `pressure:` line and `janitor status` say which keep reasons hold how many bytes,
largest first, and name the consumer when the gate holds the most. The numbers are checked
against `du` of the real steps, reason by reason."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.tree import step_numbers
from helpers.wait import wait_until

KIB = 1024
# --interval-to-keep 4, --keep-last 8, LOADED_STEP=6, step_2 pinned, steps 1..12: step n holds
# n * 64 KiB, so every reason's sum is told apart. Steps 6..11 are kept by --keep-last too, but
# the gate would keep them anyway: the split counts them under the gate (dropping --keep-last
# would not free them). Step 5 is kept by --keep-last alone (relief could take it).
HELD = {"at-or-above-loaded": [6, 7, 9, 10, 11], "interval-multiple": [4, 8, 12],
        "pinned": [2], "keep-last": [5]}
GONE = [1, 3]  # superseded
POLICY = ["--interval-to-keep", "4", "--keep-last", "8"]


def _tree(tree: Path) -> None:
    for number in range(1, 13):
        step = tree / f"step_{number}"
        step.mkdir(parents=True)
        (step / "w.bin").write_bytes(os.urandom(number * 64 * KIB))
        if number == 2:
            (step / ".janitor-pin").write_text("")
        (step / "STABLE").write_text("")
    publish_marker(tree, 6)


def du(tree: Path, numbers: list[int]) -> int:
    """Bytes of the steps as du counts them (allocated blocks, the directories included)."""
    done = subprocess.run(["du", "-s", "-B1", "-c", *(str(tree / f"step_{n}") for n in numbers)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1].split()[0])


def _by_reason(held: list[dict[str, int | str]]) -> dict[str, tuple[int, int]]:
    return {str(h["reason"]): (int(h["bytes"]), int(h["steps"])) for h in held}


def _expected(tree: Path) -> dict[str, tuple[int, int]]:
    return {reason: (du(tree, numbers), len(numbers)) for reason, numbers in HELD.items()}


def test_sweep_says_which_rule_holds_how_many_bytes(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    _tree(tree)
    ran = run_janitor("sweep", *POLICY, "--max-bytes", "1M", "--json", str(tree))
    assert ran.code == 3, ran.stderr
    assert step_numbers(tree) == sorted(n for ns in HELD.values() for n in ns)
    doc = json.loads(ran.stdout)["directories"][0]
    assert _by_reason(doc["held"]) == _expected(tree)
    assert [h["reason"] for h in doc["held"]] == ["at-or-above-loaded", "interval-multiple",
                                                   "keep-last", "pinned"]  # largest first
    line = next(line for line in ran.err_lines if "pressure:" in line)
    assert "held by at-or-above-loaded " in line and "(5 steps), interval-multiple" in line
    assert "the consumer is behind: LOADED_STEP=6, newest complete 12, lag 6 steps" in line
    assert "(--pressure alert)" in line


def test_status_says_which_rule_holds_how_many_bytes(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    _tree(tree)
    doc = json.loads(run_janitor("status", "--json", *POLICY, "--max-bytes", "1M",
                                 str(tree)).stdout)["directories"][0]
    # status deletes nothing: the superseded steps are still there, and held as such
    assert _by_reason(doc["held"]) == {**_expected(tree),
                                       "superseded": (du(tree, GONE), len(GONE))}
    assert doc["behind"] == "the consumer is behind: LOADED_STEP=6, newest complete 12, lag 6 steps"
    text = run_janitor("status", *POLICY, "--max-bytes", "1M", str(tree)).stdout
    assert "  held by:   at-or-above-loaded " in text and "  gate:      the consumer" in text
    quiet = run_janitor("status", *POLICY, "--max-bytes", "1T", str(tree)).stdout
    assert "held by" not in quiet and "pressure" not in quiet


def test_the_daemons_pressure_event_says_which_rule_holds_how_many_bytes(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    tree = root / "run"
    _tree(tree)
    daemon = spawn(str(root), *POLICY, "--max-bytes", "1M", "--audit-log", "off",
                   "--log-format", "json")
    event = daemon.wait_event("pressure", timeout_s=20)
    wait_until(lambda: step_numbers(tree) == sorted(n for ns in HELD.values() for n in ns), 10,
               "the superseded steps gone")
    assert event["directory"] == str(tree) and event["mode"] == "alert"
    # The trash is a holder of its own while the superseded steps are reclaimed; the rest is
    # what the steps hold, reason by reason, as du counts them.
    held = _by_reason(event["held"])
    held.pop("trash", None)
    assert held == _expected(tree), event
    assert event["behind"] == \
        "the consumer is behind: LOADED_STEP=6, newest complete 12, lag 6 steps"
    assert "held by at-or-above-loaded" in event["why"]
    assert len(daemon.named("pressure")) == 1
    assert daemon.stop()[0] == 0
