"""Fault injection in CI (issue 6, part 2): the harness of bench/faults.py with 32 kill points
(seeded): the daemon SIGKILLed mid-rename and mid-reclaim, the writer (save_step in a forked
child) mid-write and the consumer mid-load, each restarted. Nothing may be half-deleted or lost,
and the trash must be empty after the restart. bench/faults.py runs 300."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.safety import load_bench

KILLS = 32
SEED = 20261125


@pytest.mark.slow
@pytest.mark.torch
def test_kill_points(tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    pytest.importorskip("torch")
    faults = load_bench("faults")
    outcomes = faults.run_all(tmp_path, KILLS, SEED)  # type: ignore[attr-defined]
    print(faults.table(outcomes))  # type: ignore[attr-defined]
    total = sum(o.kills for o in outcomes)
    record_property("kill_points", total)
    record_property("in_phase", sum(o.landed for o in outcomes))
    assert total >= 30
    assert {o.fault: o.violations for o in outcomes} == {o.fault: [] for o in outcomes}
    assert sum(o.lost_steps for o in outcomes) == 0
    # The kills must mostly land where they are aimed, or the test proves little.
    assert sum(o.landed for o in outcomes) >= total // 2
