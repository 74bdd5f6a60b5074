"""The directory index decides exactly what `policy.plan` decides on a full snapshot.

Property tests (hypothesis): for arbitrary trees, policies and sequences of changes (steps
created, completed, uncompleted, removed, sentinels, markers moved or broken), the index's
Context equals the one `plan` derives from the whole snapshot, and deciding only the index's
candidates dooms exactly the entries the full plan dooms. So the incremental reconcile can never
delete what a full pass would keep, nor miss what it would delete.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_properties import SCANNED_NS, S, consumers_strategy, marker, staging, step

from janitor.index import DirectoryIndex, Mismatch
from janitor.model import TRASH, Consumer, Entry, Foreign, Snapshot
from janitor.policy import Policy, decide, plan

policies = st.builds(
    Policy,
    gated=st.booleans(),
    interval_to_keep=st.one_of(st.none(), st.integers(1, 12)),
    keep_last=st.integers(1, 4),
    partial_grace_s=st.sampled_from([0.0, 60.0, 600.0, 2000.0]),
    progress=st.sampled_from(["loaded-step", "receiver-ready"]),
)

step_times = st.one_of(st.integers(SCANNED_NS - 3000 * S, SCANNED_NS - 1000 * S),
                       st.integers(SCANNED_NS - 3000 * S, SCANNED_NS + S))


@st.composite
def step_entries(draw: st.DrawFn, number: int) -> Entry:
    ready = draw(st.one_of(st.none(), st.integers(SCANNED_NS - 2000 * S, SCANNED_NS)))
    return step(number, complete=draw(st.booleans()), pinned=draw(st.integers(0, 9)) == 0,
                changed_ns=draw(step_times), ready_ns=ready)


@st.composite
def changes(draw: st.DrawFn) -> list[tuple[str, object]]:
    """A sequence of (name, what it is now) as the daemon would `put` them."""
    out: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 9))
        if kind <= 5:
            number = draw(st.integers(0, 60))
            entry = draw(step_entries(number))
            out.append((entry.name, entry))
        elif kind == 6:
            out.append((f"step_{draw(st.integers(0, 60))}", None))  # removed
        elif kind == 7:
            cons = draw(consumers_strategy())
            for name in ("LOADED_STEP", "LOADED_STEP.eval", "LOADED_STEP.uploader"):
                out.append((name, None))
            out.extend((c.filename, c) for c in cons)
        elif kind == 8:
            name = draw(st.sampled_from(["a", "b"]))
            entry = staging(name, draw(step_times))
            out.append((entry.name, entry if draw(st.booleans()) else None))
        else:
            name = f"step_x{draw(st.integers(0, 3))}"
            out.append((name, Foreign(name, "step number: not canonical")))
    return out


def apply(index: DirectoryIndex, sequence: list[tuple[str, object]]) -> None:
    for name, item in sequence:
        index.put(name, item)  # type: ignore[arg-type]


def full_snapshot(index: DirectoryIndex) -> Snapshot:
    return index.snapshot("/tree", 1, SCANNED_NS)


@settings(max_examples=400, deadline=None)
@given(policy=policies, initial=changes(), later=changes())
def test_candidates_doom_exactly_what_the_full_plan_dooms(
        policy: Policy, initial: list[tuple[str, object]],
        later: list[tuple[str, object]]) -> None:
    index = DirectoryIndex(policy)
    apply(index, initial + later)
    whole = full_snapshot(index)
    expected = plan(whole, policy)
    context = index.context(SCANNED_NS)
    assert context.progress == expected.progress
    assert context.newest_complete == expected.newest_complete
    candidates = index.candidates(context)
    assert len({c.name for c in candidates}) == len(candidates)
    doomed = {d.entry.name for d in (decide(e, policy, context) for e in candidates) if d.delete}
    assert doomed == {d.entry.name for d in expected.doomed}
    # The names read again before each decision include every fact the Context rests on.
    watched = set(index.watch_list(context))
    assert set(index.consumers) <= watched
    if expected.newest_complete is not None:
        assert f"step_{expected.newest_complete}" in watched


@settings(max_examples=200, deadline=None)
@given(policy=policies, initial=changes())
def test_an_index_rebuilt_from_its_snapshot_is_the_same(policy: Policy,
                                                        initial: list[tuple[str, object]]) -> None:
    index = DirectoryIndex(policy)
    apply(index, initial)
    again = DirectoryIndex.from_snapshot(full_snapshot(index), policy)
    assert full_snapshot(again) == full_snapshot(index)
    assert again.context(SCANNED_NS) == index.context(SCANNED_NS)


def test_a_marker_moving_visits_only_the_steps_it_passed() -> None:
    """10,000 kept multiples below the marker cost nothing: the candidates are the steps between
    the old and new loaded step (and the survivors below, here none)."""
    policy = Policy(interval_to_keep=10)
    index = DirectoryIndex(policy)
    for n in range(0, 100_000, 10):
        index.put(f"step_{n}", step(n))
    for n in range(100_001, 100_006):
        index.put(f"step_{n}", step(n))
    index.put("LOADED_STEP", marker(100_004))
    context = index.context(SCANNED_NS)
    assert [c.number for c in index.candidates(context)] == [100_001, 100_002, 100_003]


def test_check_reports_missed_events_not_drift() -> None:
    index = DirectoryIndex(Policy())
    index.put("step_1", step(1))
    index.put("step_2", step(2, complete=False))
    seq = index.seq
    # Completion and times drift with no event in the parent: adopted, not a mismatch.
    assert index.check("step_2", step(2, complete=True)) is None
    assert index.step(2).complete
    # Another inode under the same name, or a name the index never heard of: missed events.
    replaced = dataclasses.replace(step(1), ino=99)
    assert index.check("step_1", replaced) == Mismatch("step_1", "step (ino 1001)", "step (ino 99)")
    assert index.check("step_3", step(3)) == Mismatch("step_3", "absent", "step (ino 1003)")
    assert index.check(".janitor-trash", TRASH) == Mismatch(".janitor-trash", "absent", "trash")
    listed_at = index.seq
    index.put("step_9", step(9))
    # A listing taken at `listed_at` that lacks step_3 and the trash: both are unlisted; step_9
    # was put after the listing, so the index is fresher about it.
    assert sorted(index.unlisted({"step_1", "step_2"}, listed_at)) == [".janitor-trash", "step_3"]
    assert seq < listed_at


def test_two_names_for_one_step_are_refused() -> None:
    index = DirectoryIndex(Policy())
    index.put("step_1", step(1))
    with pytest.raises(ValueError, match="two entries for step 1"):
        index.put("step_01", dataclasses.replace(step(1), name="step_01"))


def test_consumers_are_read_in_name_order() -> None:
    index = DirectoryIndex(Policy())
    index.put("step_5", step(5))
    index.put("LOADED_STEP.b", Consumer("b", "LOADED_STEP.b", 3, None, SCANNED_NS - S))
    index.put("LOADED_STEP.a", Consumer("a", "LOADED_STEP.a", None, "empty", SCANNED_NS - S))
    progress = index.context(SCANNED_NS).progress
    assert progress.problem is not None and progress.problem.startswith("LOADED_STEP.a")
