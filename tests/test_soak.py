"""The soak of bench/soak.py at 60 seconds (issue 6, part 6): a trainer at 20 steps/s, three
stalling consumers and the daemon; no invariant violation, no failed load, flat open fds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from helpers.safety import load_bench

# Open fds of the daemon may move by a few (a reclaim job's dup'ed trash fd, an inotify read in
# flight), never grow with the number of steps.
FD_SLACK = 6


@pytest.mark.slow
def test_soak_one_minute(record_property: pytest.RecordProperty) -> None:
    soak = load_bench("soak")
    parent = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="janitor-soak-", dir=parent) as base:
        figures = soak.soak(1.0, Path(base))  # type: ignore[attr-defined]

    for key in ("steps_written", "loads", "deletions_audited", "disk_high_water_bytes",
                "fds_first", "fds_max", "rss_max", "latency_s"):
        record_property(key, figures[key])
    assert figures["errors"] == []
    assert figures["violations"] == []
    assert figures["load_failures"] == []
    assert figures["steps_written"] >= 600  # 20 steps/s held for most of the minute
    assert figures["deletions_audited"] > figures["steps_written"] // 2
    assert figures["fds_max"] - figures["fds_first"] <= FD_SLACK
    assert figures["latency_s"]["count"] > 0
