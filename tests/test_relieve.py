"""--pressure relieve (issue 14, point 3): over --max-bytes, steps kept only by soft rules go,
oldest first, until 5% under the budget; never a step a hard rule keeps (the gate, the newest
complete step, writes in progress, pins, pointers, --interval-to-keep multiples)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.tree import step_numbers
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_properties import SCANNED_NS, consumers_strategy, snapshot, steps_strategy

from janitor.ops.report import holder
from janitor.policy import (
    SOFT_REASONS,
    Policy,
    Reason,
    gate_allows,
    plan,
    relieve,
    snapshot_context,
)

SIZE = 200 * 1024


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), gated=st.booleans(), keep_last=st.integers(1, 8),
       interval=st.one_of(st.none(), st.integers(2, 7)),
       within=st.one_of(st.none(), st.integers(1, 4000)),
       deficit=st.integers(0, 40))
def test_relieve_takes_only_soft_kept_steps_oldest_first(data: st.DataObject, gated: bool,
                                                         keep_last: int,
                                                         interval: int | None,
                                                         within: int | None,
                                                         deficit: int) -> None:
    snap = snapshot(data.draw(steps_strategy()), data.draw(consumers_strategy()))
    policy = Policy(gated=gated, keep_last=keep_last, interval_to_keep=interval,
                    keep_within_s=None if within is None else float(within))
    before = plan(snap, policy)
    context, _ = snapshot_context(snap, policy)
    chosen = relieve(before.decisions, policy, context, lambda _name: 1, deficit)
    after = plan(snap, policy, chosen)
    was = {d.entry.name: d for d in before.decisions}
    eligible = sorted(d.entry.number for d in before.decisions if not d.delete
                      and d.reason in SOFT_REASONS and gate_allows(d.entry, policy, context)
                      and d.entry.number is not None)
    assert sorted(chosen) == eligible[:deficit]  # oldest first, as many as needed
    for decision in after.decisions:
        old = was[decision.entry.name]
        if old.delete:
            assert decision.delete and decision.reason == old.reason  # nothing saved by it
        elif decision.delete and decision.reason is Reason.RELIEVED:
            # newly deleted: only a soft-kept step the gate lets go
            assert old.reason in SOFT_REASONS
            assert gate_allows(decision.entry, policy, context)
        elif decision.delete:
            # ...or a step only those needed: kept as depended-on before, by no one now
            assert old.reason is Reason.DEPENDED_ON, (old, decision)
            number = decision.entry.number
            assert not any(number in d.entry.depends for d in after.decisions if not d.delete)
        elif old.reason is Reason.DEPENDED_ON:
            assert decision.reason in (Reason.DEPENDED_ON, *SOFT_REASONS,
                                       Reason.AT_OR_ABOVE_LOADED, Reason.CHANGED_AFTER_MARKER)
        else:
            assert decision.reason == old.reason
    assert before.progress.problem is None or not chosen


def _tree(tree: Path, numbers: range) -> None:
    for number in numbers:
        step = tree / f"step_{number}"
        step.mkdir(parents=True)
        (step / "w.bin").write_bytes(os.urandom(SIZE))
        (step / "STABLE").write_text("")


def test_sweep_relieves_oldest_soft_kept_steps_only(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    _tree(tree, range(1, 11))
    (tree / "step_4" / ".janitor-pin").write_text("")  # hard: never relieved
    publish_marker(tree, 9)
    ran = run_janitor("sweep", "--keep-last", "8", "--max-bytes", "1200K", "--pressure",
                      "relieve", "--json", str(tree))
    assert ran.code == 3, ran.stderr
    # 1, 2 superseded; 3, 5, 6 relieved (4 is pinned); 7, 8 stay as few as the budget needs;
    # 9 is the loaded step and 10 the newest complete: hard.
    assert step_numbers(tree) == [4, 7, 8, 9, 10]
    survivors = sum(os.path.getsize(tree / f"step_{n}" / "w.bin") for n in step_numbers(tree))
    assert survivors <= 1200 * 1024


def test_alert_deletes_nothing_more(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    _tree(tree, range(1, 11))
    publish_marker(tree, 9)
    ran = run_janitor("sweep", "--keep-last", "8", "--max-bytes", "1200K", str(tree))
    assert ran.code == 3 and step_numbers(tree) == list(range(3, 11))
    assert "pressure" in ran.stderr


def test_the_daemon_relieves_once_it_knows_the_sizes(spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    tree = root / "run"
    _tree(tree, range(1, 11))
    publish_marker(tree, 1)  # nothing deletable yet
    daemon = spawn(str(root), "--keep-last", "8", "--max-bytes", "1200K", "--pressure",
                   "relieve", "--audit-log", "off", "--log-format", "json")
    daemon.wait_event("pressure")
    assert step_numbers(tree) == list(range(1, 11))  # the gate holds everything
    publish_marker(tree, 9)
    # As the sweep: 1, 2 superseded, then 3, 4, 5 relieved (oldest first) until 5% under.
    wait_until(lambda: step_numbers(tree) == [6, 7, 8, 9, 10], 15, "relief down to the budget")
    wait_until(lambda: len(daemon.named("deleted")) == 5, 10, "the five deletions logged")
    reasons = {e["step"]: e["reason"] for e in daemon.named("deleted")}
    assert reasons == {1: "superseded", 2: "superseded", 3: "relieved", 4: "relieved",
                       5: "relieved"}
    assert daemon.stop()[0] == 0


def test_relieve_needs_a_budget(tmp_path: Path) -> None:
    ran = run_janitor("sweep", "--pressure", "relieve", str(tmp_path))
    assert ran.code == 2 and ran.stderr.count("\n") == 1
    assert ran.stderr.startswith("janitor: ") and "--max-bytes or --min-free" in ran.stderr
    for budget in (["--min-free", "10%"], ["--max-bytes", "1G"]):
        ran = run_janitor("sweep", "--pressure", "relieve", *budget, "--dry-run", str(tmp_path))
        assert ran.code == 0, ran.stderr  # accepted (nothing is managed there)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), gated=st.booleans(), keep_last=st.integers(1, 8),
       within=st.one_of(st.none(), st.integers(1, 4000)))
def test_the_split_names_soft_rules_only_for_what_relief_may_take(
        data: st.DataObject, gated: bool, keep_last: int, within: int | None) -> None:
    """ops.report.holder: a step kept by a soft rule (or as another kept step's dependency) is
    held by that rule only when the gate would let it go (relief may take a soft-kept one);
    otherwise by the gate. Every other decision is held by its own reason."""
    snap = snapshot(data.draw(steps_strategy()), data.draw(consumers_strategy()))
    policy = Policy(gated=gated, keep_last=keep_last,
                    keep_within_s=None if within is None else float(within))
    decided = plan(snap, policy)
    context, _ = snapshot_context(snap, policy)
    may_take = relieve(decided.decisions, policy, context, lambda _name: 0, 1)
    for decision in decided.decisions:
        held = holder(decision, policy, context)
        soft = not decision.delete and decision.reason in (*SOFT_REASONS, Reason.DEPENDED_ON)
        if soft and not gate_allows(decision.entry, policy, context):
            assert held in ("at-or-above-loaded", "changed-after-marker")
            assert held == "at-or-above-loaded" or \
                decision.entry.number < (context.progress.loaded_step or 0)
        else:
            assert held == decision.reason.value
        assert (held in SOFT_REASONS and not decision.delete) == \
            (decision.entry.number in may_take and not decision.delete)


def test_the_scan_time_is_the_snapshots() -> None:
    assert SCANNED_NS > 0  # the strategies above plan at this time (no clock is read)
