"""The race, short: bench/race.py with forced long stalls, every cleaner on the same seed.

The consumer stalls for 2 s before three of its loads, far longer than two step intervals, so the
N-2 rule (a) must delete a step the consumer has picked but not yet loaded. The gated inline rule
(b) and the janitor (c) must never fail a load; the janitor costs the trainer no cleanup time and,
after its final pass, leaves no step its rule should have deleted. The roles sleep to pace steps
and to stall (that is the workload); this test only waits on the subprocess, with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.torch]

RACE = Path(__file__).resolve().parents[1] / "bench" / "race.py"


def test_race_n2_rule_fails_and_the_janitor_does_not(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "race.json"
    command = [sys.executable, str(RACE), "--steps", "60", "--step-interval", "0.08",
               "--files-per-step", "20", "--step-bytes", "400000",
               # no multiples below 1000: every step is the rules' to delete or keep
               "--interval-to-keep", "1000",
               # only forced stalls, 2 s each (>= 2 steps even on a loaded machine), before the
               # 1st, 4th and 12th load: the first load happens while the trainer still runs
               "--stall-chance", "0", "--forced-stall", "1:2", "--forced-stall", "4:2",
               "--forced-stall", "12:2",
               "--dir", str(tmp_path / "trees"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["key"]: row for row in json.loads(out.read_text())["results"]}
    a, b, c = rows["a"], rows["b"], rows["c"]
    report = done.stdout
    for row in (a, b, c):
        assert row["steps_written"] == 60, report
        assert row["stalls"] >= 1, report

    # (a) the rule trainers use today deletes under a stalled consumer
    assert a["load_failures"] >= 1, report
    assert a["deleted_by_trainer"] > 0
    assert a["leaked_steps"] == []

    # (b) gating on LOADED_STEP in the trainer fixes the race, at the trainer's expense
    assert b["load_failures"] == 0, b["failure_examples"]
    assert b["deleted_by_trainer"] > 0

    # (c) the janitor: no failure, no trainer time spent deleting, nothing leaked at the end
    assert c["load_failures"] == 0, c["failure_examples"]
    assert c["cleanup_s_total"] == 0
    assert c["deleted_by_trainer"] == 0
    assert c["deleted_by_janitor"] > 0
    assert c["janitor_exit_code"] == 0
    assert c["janitor_errors"] == []
    assert c["leaked_steps"] == []
    # after the final pass only the newest step (= the loaded one) is left
    assert c["final_loaded_step"] == 60
    assert c["steps_on_disk_at_end"] == [60]
