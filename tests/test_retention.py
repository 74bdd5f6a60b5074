"""The soft rules (issue 14, point 1): --keep-within, --keep-hourly, --keep-daily and
--keep-interval, borg-prune style by completion time. Exact tables, properties (they only keep
more; the daemon's index keeps exactly what a full plan keeps, also as steps come and go), the
lock record round trip, and the real command line."""

from __future__ import annotations

from helpers.run import run_janitor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_properties import SCANNED_NS, S, step

from janitor.index import DirectoryIndex
from janitor.model import Snapshot
from janitor.policy import Policy, Reason, plan
from janitor.retention import HOUR_NS, SoftRules, parse_duration, soft_keeps

H = HOUR_NS


def _snapshot(times: dict[int, int]) -> Snapshot:
    return Snapshot("/t", 1, SCANNED_NS, tuple(step(n, changed_ns=t)
                                               for n, t in sorted(times.items())))


def _kept(times: dict[int, int], **rules: object) -> dict[int, Reason]:
    decided = plan(_snapshot(times), Policy(gated=False, **rules))  # type: ignore[arg-type]
    return {d.entry.number: d.reason for d in decided.decisions if not d.delete}  # type: ignore[misc]


def test_keep_hourly_keeps_the_newest_step_of_each_of_the_last_hours() -> None:
    # Two steps an hour for five hours, the newest half an hour ago.
    times = {n: SCANNED_NS - H // 2 - (10 - n) * H // 2 for n in range(1, 11)}
    kept = _kept(times, keep_hourly=3)
    # Scan at 100,000 s: step 10 is in hour 27, steps 9 and 8 in hour 26, 7 and 6 in hour 25.
    assert kept == {10: Reason.NEWEST_COMPLETE, 9: Reason.KEEP_HOURLY, 7: Reason.KEEP_HOURLY}


def test_keep_within_keeps_every_step_of_the_window_and_nothing_older() -> None:
    times = {n: SCANNED_NS - (10 - n) * H for n in range(1, 11)}  # one an hour
    kept = _kept(times, keep_within_s=3.5 * 3600)
    assert set(kept) == {7, 8, 9, 10}
    assert kept[7] == Reason.KEEP_WITHIN


def test_keep_interval_is_bounded_unlike_interval_to_keep() -> None:
    times = {n: SCANNED_NS - (100 - n) * S for n in range(1, 101)}
    assert set(_kept(times, keep_interval=(10, 3))) == {100, 90, 80}
    assert set(_kept(times, interval_to_keep=10)) == {10 * k for k in range(1, 11)}


def test_keep_daily_counts_utc_days() -> None:
    day = 24 * H
    times = {n: SCANNED_NS - (6 - n) * day // 2 for n in range(1, 7)}  # two a day
    kept = _kept(times, keep_daily=2)
    assert len({times[n] // day for n in kept}) == 2 and 6 in kept


def test_soft_rules_stop_when_their_quotas_are_filled() -> None:
    """A pass costs what the rules keep: the iteration stops at the quota, not at the end."""
    seen: list[int] = []

    def newest_first() -> object:
        for n in range(1_000_000, 0, -1):
            seen.append(n)
            yield n, SCANNED_NS - (1_000_000 - n) * S

    result = soft_keeps(newest_first(), SoftRules(hourly=2, interval=(1000, 2)),  # type: ignore[arg-type]
                        SCANNED_NS)
    assert set(result.kept) >= {1_000_000, 999_000}
    assert len(seen) < 4000


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(times=st.dictionaries(st.integers(0, 80), st.integers(SCANNED_NS - 80 * H, SCANNED_NS),
                             max_size=30),
       within=st.one_of(st.none(), st.integers(1, 100 * 3600)),
       hourly=st.integers(0, 5), daily=st.integers(0, 3),
       interval=st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 4))),
       removals=st.lists(st.integers(0, 80), max_size=5))
def test_soft_rules_only_keep_more_and_the_index_agrees(times: dict[int, int],
                                                        within: int | None, hourly: int,
                                                        daily: int,
                                                        interval: tuple[int, int] | None,
                                                        removals: list[int]) -> None:
    # Completion times increase with step numbers, as a trainer writes them.
    ordered = dict(zip(sorted(times), sorted(times.values()), strict=True))
    soft = Policy(gated=False, keep_within_s=within, keep_hourly=hourly, keep_daily=daily,
                  keep_interval=interval)
    bare = Policy(gated=False)
    snap = _snapshot(ordered)
    with_soft = {d.entry.name for d in plan(snap, soft).doomed}
    without = {d.entry.name for d in plan(snap, bare).doomed}
    assert with_soft <= without
    # The daemon's index, kept current name by name, plans the same, also after steps go.
    index = DirectoryIndex.from_snapshot(snap, soft)
    for number in [None, *removals]:
        if number is not None:
            index.put(f"step_{number}", None)
            ordered.pop(number, None)
        expected = plan(_snapshot(ordered), soft)
        context = index.context(SCANNED_NS)
        assert context.soft.kept == plan_soft(ordered, soft)
        assert context.newest_complete == expected.newest_complete


def plan_soft(times: dict[int, int], policy: Policy) -> dict[int, tuple[str, ...]]:
    from janitor.policy import snapshot_context
    return snapshot_context(_snapshot(times), policy)[0].soft.kept


@settings(max_examples=300, deadline=None)
@given(within=st.one_of(st.none(), st.integers(1, 10**6).map(float)),
       hourly=st.integers(0, 100), daily=st.integers(0, 100),
       interval=st.one_of(st.none(), st.tuples(st.integers(1, 10**9), st.integers(1, 100))))
def test_a_recorded_policy_reads_back_with_its_soft_rules(within: float | None, hourly: int,
                                                          daily: int,
                                                          interval: tuple[int, int] | None) -> None:
    policy = Policy(keep_within_s=within, keep_hourly=hourly, keep_daily=daily,
                    keep_interval=interval)
    assert Policy.from_description(policy.describe()) == policy
    old = {k: v for k, v in policy.describe().items() if not k.startswith("keep_") or
           k == "keep_last"}
    assert Policy.from_description(old) == Policy()  # an older janitor's record: no soft rules


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90s", "30m", "6h", "7d", "2w")] == [
        90, 1800, 21600, 604800, 1209600]
    assert all(parse_duration(t) is None for t in ("", "6", "h", "06h", "6H", "1.5h", "٦h",
                                                   "-1h", "6 h", "6hh"))


def test_the_command_line_keeps_and_explains_soft_steps(tmp_path: object) -> None:
    from pathlib import Path
    tree = Path(str(tmp_path)) / "run"
    for number in range(1, 13):
        (tree / f"step_{number}").mkdir(parents=True)
        (tree / f"step_{number}" / "STABLE").write_text("")
    ran = run_janitor("sweep", "--no-gate", "--keep-interval", "4:2", str(tree))
    assert ran.code == 3, ran.stderr
    assert sorted(int(p.name[5:]) for p in tree.glob("step_*")) == [8, 12]
    explained = run_janitor("explain", "--no-gate", "--keep-interval", "4:2",
                            str(tree / "step_8"))
    assert "kept by --keep-interval 4:2   <- decides" in explained.stdout
    for bad in ("--keep-within=6x", "--keep-interval=4", "--keep-hourly=-1", "--keep-daily=1e3"):
        refused = run_janitor("sweep", bad, str(tree))
        assert refused.code == 2 and refused.stderr.count("\n") == 1, (bad, refused.stderr)
