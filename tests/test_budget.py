# Lookalike digits are refused on purpose:
# ruff: noqa: RUF001
"""--max-bytes and --min-free in alert mode (issue 14, point 3): said in the log (once when it
begins, once when it ends), in status, in sweep's problems and in the metrics, on real files and a
real size-limited tmpfs; never a reason to delete anything the rules keep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.safety import tmpfs
from helpers.tree import step_numbers
from helpers.wait import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from janitor.budget import (
    Budget,
    BudgetError,
    Offer,
    held_by,
    parse_min_free,
    parse_size,
    seconds_to_full,
    share_deficit,
)
from janitor.model import Entry
from janitor.policy import Context, Decision, Policy, Progress, Reason, relieve

MIB = 1 << 20


def _steps(tree: Path, numbers: range, size: int = 256 * 1024) -> None:
    for number in numbers:
        step = tree / f"step_{number}"
        step.mkdir(parents=True)
        (step / "w.bin").write_bytes(os.urandom(size))
        (step / "STABLE").write_text("")


def test_sizes_and_percentages() -> None:
    assert parse_size("4096") == 4096 and parse_size("500G") == 500 << 30
    assert parse_size("1.5T") == int(1.5 * (1 << 40)) and parse_size("2GiB") == 2 << 30
    assert parse_min_free("10%") == Budget(min_free_fraction=0.1)
    assert parse_min_free("50G") == Budget(min_free_bytes=50 << 30)
    for bad in ("", "0", "G", "1g", "1 G", "-1G", "1e3", "١G", "1.G", "100%", "0%", "x%", "1E"):
        with pytest.raises(BudgetError):
            parse_min_free(bad) if bad.endswith("%") else parse_size(bad)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=12))
def test_any_text_is_a_size_or_one_line(text: str) -> None:
    try:
        value = parse_size(text)
    except BudgetError as exc:
        assert "\n" not in str(exc)
        return
    assert 1 <= value <= 1 << 62


def test_seconds_to_full_follows_the_rate() -> None:
    assert math.isinf(seconds_to_full([(0.0, 100)]))
    assert math.isinf(seconds_to_full([(0.0, 100), (10.0, 120)]))
    assert seconds_to_full([(0.0, 1000), (10.0, 900), (20.0, 800)]) == pytest.approx(80.0)


def test_sweep_says_what_is_over_and_deletes_no_more(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    _steps(tree, range(1, 7))
    publish_marker(tree, 3)
    ran = run_janitor("sweep", "--max-bytes", "512K", "--json", str(tree))
    assert ran.code == 3  # deleted 1 and 2, as without a budget
    assert step_numbers(tree) == [3, 4, 5, 6]
    lines = [line for line in ran.stderr.splitlines() if "pressure" in line]
    assert len(lines) == 1 and "over --max-bytes 512.0 KiB" in lines[0]
    doc = json.loads(ran.stdout)
    assert [f"janitor: {line}" for line in doc["directories"][0]["pressure"]] == lines
    assert doc["exit_code"] == 3


def test_status_shows_the_pressure(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    _steps(tree, range(1, 4))
    publish_marker(tree, 1)
    doc = json.loads(run_janitor("status", "--json", "--max-bytes", "100K", str(tree)).stdout)
    report = doc["directories"][0]
    assert report["pressure"]["over_max_bytes"] == report["bytes"] - 100 * 1024 > 0
    text = run_janitor("status", "--max-bytes", "100M", str(tree)).stdout
    assert "pressure:" not in text


def test_the_daemon_alerts_once_and_clears_when_the_consumer_moves(spawn: Spawn,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    tree = root / "run"
    _steps(tree, range(1, 7))
    publish_marker(tree, 1)
    daemon = spawn(str(root), "--max-bytes", "1M", "--metrics-addr", "127.0.0.1:0",
                   "--audit-log", "off", "--log-format", "json")
    alert = daemon.wait_event("pressure")
    assert alert["directory"] == str(tree) and alert["over_bytes"] > 0
    wait_until(lambda: (daemon.metric("ckpt_janitor_directory_over_budget_bytes",
                                      stream="run") or 0) > 0, 10, "the over-budget gauge")
    assert step_numbers(tree) == [1, 2, 3, 4, 5, 6]  # alert only: nothing the rules keep goes
    publish_marker(tree, 5)  # the consumer catches up: 1-4 may go, the directory shrinks
    daemon.wait_event("pressure_cleared")
    assert step_numbers(tree) == [5, 6]
    assert len(daemon.named("pressure")) == 1
    wait_until(lambda: daemon.metric("ckpt_janitor_directory_over_budget_bytes",
                                     stream="run") == 0, 10, "the gauge back at 0")
    assert daemon.stop()[0] == 0


def test_min_free_on_a_real_small_filesystem(spawn: Spawn, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        tree = mount / "run"
        _steps(tree, range(1, 4), size=MIB)
        publish_marker(tree, 1)  # a stalled consumer: nothing may go
        daemon = spawn(str(mount), "--min-free", "70%", "--metrics-addr", "127.0.0.1:0",
                       "--rescan-interval", "0.5", "--audit-log", "off", "--log-format", "json")
        daemon.wait_event("ready")
        _steps(tree, range(4, 6), size=MIB)  # the trainer keeps writing: space falls
        alert = daemon.wait_event("pressure")
        assert alert["filesystem"] == str(mount) and alert["short_bytes"] > 0
        wait_until(lambda: (daemon.metric("ckpt_janitor_filesystem_short_bytes",
                                          mountpoint=str(mount)) or 0) > 0, 10, "the gauge")
        assert step_numbers(tree) == [1, 2, 3, 4, 5]
        assert daemon.stop()[0] == 0


# ---- relief's arithmetic: the hysteresis, the shares of a filesystem, the split ---------------

@settings(max_examples=500, deadline=None)
@given(st.integers(1, 1 << 40), st.integers(0, 1 << 40), st.integers(0, 1 << 40),
       st.booleans(), st.one_of(st.none(), st.integers(1, 99)))
def test_free_deficit_starts_below_the_watermark_and_stops_above_it(
        total: int, avail: int, freed: int, relieving: bool, percent: int | None) -> None:
    avail = min(avail, total)
    budget = Budget(min_free_bytes=None if percent else total // 3 + 1,
                    min_free_fraction=None if percent is None else percent / 100,
                    pressure="relieve")
    want = budget.free_want(total)
    assert want is not None
    deficit = budget.free_deficit(avail, total, freed, relieving)
    target = min(max(total, want), want + math.ceil(want * 0.05))
    if not relieving and avail + freed >= want:
        assert deficit == 0  # not short once what is on its way out is counted
    else:  # brought back to 5% of the watermark above it, no more
        assert deficit == max(0, target - avail - freed)
    assert Budget(min_free_bytes=want).free_deficit(avail, total, freed, relieving) == 0  # alert


offers_strategy = st.lists(st.tuples(st.integers(0, 50), st.one_of(st.integers(0, 9),
                                                                   st.none())), max_size=8)


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(st.sampled_from(["/a", "/b", "/c", "/d"]), offers_strategy, max_size=4),
       st.integers(0, 60))
def test_shares_take_the_oldest_completion_first_across_directories(
        drawn: dict[str, list[tuple[int, int | None]]], deficit: int) -> None:
    queues = {key: [Offer(t, b, f"step_{i}") for i, (t, b) in enumerate(offers)]
              for key, offers in drawn.items()}
    shares = share_deficit(queues, deficit)
    # The oracle: a plain merge of the directories' heads, oldest (then by directory) first,
    # until the deficit is met or the oldest head is not measured yet.
    taken = dict.fromkeys(queues, 0)
    freed = 0
    while freed < deficit:
        heads = [(queues[k][taken[k]].time_ns, k) for k in queues if taken[k] < len(queues[k])]
        if not heads:
            break
        _, key = min(heads)
        size = queues[key][taken[key]].bytes
        if size is None:
            break
        taken[key] += 1
        freed += size
    assert shares == {k: sum(o.bytes or 0 for o in queues[k][:taken[k]]) for k in queues}
    for key, offers in queues.items():  # each share is a prefix: relieve takes exactly it
        decisions = [Decision(_entry(i), False, Reason.KEEP_WITHIN) for i in range(len(offers))]
        sizes = {o.name: o.bytes or 0 for o in offers}
        chosen = relieve(decisions, Policy(gated=False), _CONTEXT, sizes.__getitem__, shares[key])
        prefix = 0
        while prefix < len(offers) and sum(sizes[o.name] for o in offers[:prefix]) < shares[key]:
            prefix += 1
        assert chosen == frozenset(range(prefix))
        assert all(offers[i].bytes is not None for i in chosen)


def _entry(number: int) -> Entry:
    return Entry(f"step_{number}", number, True, False, 1, 1, 100 + number)


_CONTEXT = Context(Progress(None, None, None), None, frozenset(), 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pinned", "keep-last", "at-or-above-loaded", "trash"]),
                          st.integers(0, 1 << 40))))
def test_held_by_sums_each_reason_largest_first(items: list[tuple[str, int]]) -> None:
    held = held_by(items)
    assert sum(h.bytes for h in held) == sum(b for _, b in items)
    assert sum(h.steps for h in held) == len(items)
    for h in held:
        assert h.bytes == sum(b for r, b in items if r == h.reason)
        assert h.steps == sum(1 for r, _ in items if r == h.reason)
    assert [h.bytes for h in held] == sorted((h.bytes for h in held), reverse=True)
    assert len({h.reason for h in held}) == len(held)
