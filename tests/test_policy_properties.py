"""`plan` is pure: property tests (hypothesis) of docs/design.md's invariants 1-5 on synthetic
snapshots, and exact-reason example tables in the style of borg's prune tests.

Run with `--hypothesis-show-statistics` to see the example counts and the events below.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from janitor import protocol
from janitor.model import Consumer, Entry, Snapshot
from janitor.policy import DELETE_REASONS, Plan, Policy, PolicyError, Reason, plan

S = 1_000_000_000
SCANNED_NS = 100_000 * S


def step(number: int, *, complete: bool = True, pinned: bool = False,
         changed_ns: int = SCANNED_NS - 5000 * S, ready_ns: int | None = None,
         depends: tuple[int, ...] = (), depends_problem: str | None = None) -> Entry:
    return Entry(protocol.step_name(number), number, complete, pinned, changed_ns, 1, 1000 + number,
                 ready_ns, depends, depends_problem)


def staging(name: str, changed_ns: int) -> Entry:
    return Entry(protocol.STAGING_PREFIX + name, None, False, False, changed_ns, 1, 7)


def marker(step_number: int | None, *, name: str = "", mtime_ns: int = SCANNED_NS - 10 * S,
           problem: str | None = None, ctime_ns: int | None = None) -> Consumer:
    filename = protocol.marker_name(name)
    return Consumer(name, filename, None if problem else step_number, problem, mtime_ns, ctime_ns)


def snapshot(entries: list[Entry], consumers: list[Consumer]) -> Snapshot:
    ordered = sorted(entries, key=lambda e: (e.number is None, e.number or 0, e.name))
    return Snapshot("/tree", 1, SCANNED_NS, tuple(ordered), (), tuple(consumers))


# ---- strategies -------------------------------------------------------------------------------

times = st.integers(min_value=SCANNED_NS - 3000 * S, max_value=SCANNED_NS + S)
# Mostly old steps and recent markers (so gated plans do delete), sometimes any order at all.
step_times = st.one_of(st.integers(SCANNED_NS - 3000 * S, SCANNED_NS - 1000 * S), times)
marker_times = st.one_of(st.integers(SCANNED_NS - 900 * S, SCANNED_NS), times)


@st.composite
def steps_strategy(draw: st.DrawFn) -> list[Entry]:
    numbers = draw(st.sets(st.integers(min_value=0, max_value=60), max_size=25))
    # Dependencies in one tree in three: mostly on older steps (a chain of patches), sometimes
    # on any number (missing ones, newer ones, itself, cycles), sometimes an unreadable file.
    chained = draw(st.integers(0, 2)) == 0
    out = []
    for n in sorted(numbers):
        depends: tuple[int, ...] = ()
        problem = None
        if chained and draw(st.integers(0, 3)) > 0:
            depends = tuple(draw(st.lists(st.one_of(st.integers(max(0, n - 6), max(0, n - 1)),
                                                    st.integers(0, 62)), max_size=3)))
            if draw(st.integers(0, 11)) == 0:
                depends, problem = (), "DEPENDS_ON: line 1: 'x': not canonical ASCII decimal"
        out.append(step(n, complete=draw(st.booleans()), pinned=draw(st.integers(0, 9)) == 0,
                        changed_ns=draw(step_times), depends=depends, depends_problem=problem))
    return out


@st.composite
def consumers_strategy(draw: st.DrawFn) -> list[Consumer]:
    count = draw(st.integers(min_value=0, max_value=3))
    names = ["", "eval", "uploader"][:count]
    out = []
    for name in names:
        if draw(st.integers(0, 7)) == 0:
            problem = draw(st.sampled_from(["empty (half-written or truncated?)",
                                            "content 'abc': not canonical ASCII decimal",
                                            "is a directory", "is a symlink (never followed)",
                                            "unreadable (permission denied)"]))
            out.append(marker(None, name=name, problem=problem, mtime_ns=draw(times)))
        else:
            # ctime: mostly the same write; sometimes the mtime was set into the future or the
            # past after it (`touch -d`), so the two differ either way.
            ctime = draw(st.one_of(st.none(), marker_times))
            out.append(marker(draw(st.integers(0, 62)), name=name, mtime_ns=draw(marker_times),
                              ctime_ns=ctime))
    return out


@st.composite
def staging_strategy(draw: st.DrawFn) -> list[Entry]:
    count = draw(st.integers(min_value=0, max_value=2))
    return [staging(f"w{i}", draw(times)) for i in range(count)]


policies = st.builds(
    Policy,
    gated=st.booleans(),
    interval_to_keep=st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
    keep_last=st.integers(min_value=1, max_value=5),
    partial_grace_s=st.sampled_from([0.0, 1.0, 600.0, 2000.0]),
)


@dataclass(frozen=True, slots=True)
class Case:
    snap: Snapshot
    policy: Policy


cases = st.builds(
    lambda steps, consumers, stage, policy: Case(snapshot(steps + stage, consumers), policy),
    steps_strategy(), consumers_strategy(), staging_strategy(), policies,
)


# ---- the invariants, checked independently of the implementation's own bookkeeping ----------

def check_invariants(case: Case, result: Plan) -> str:
    """Assert every invariant `plan` owns; return which gating branch was checked."""
    snap, policy = case.snap, case.policy
    # Every entry gets exactly one decision, in order, and delete <=> a deletion reason.
    assert [d.entry for d in result.decisions] == list(snap.entries)
    for decision in result.decisions:
        assert decision.delete == (decision.reason in DELETE_REASONS), decision
    deleted = [d.entry for d in result.decisions if d.delete]
    deleted_steps = [e for e in deleted if e.number is not None]
    complete = sorted((e.number for e in snap.steps if e.complete and e.number is not None),
                      reverse=True)
    newest_complete = complete[0] if complete else None

    # Pinned entries are never deleted; the keep_last newest complete steps are kept.
    assert not any(e.pinned for e in deleted)
    # Nothing a kept step needs, directly or through other needed steps, is deleted; a complete
    # step whose dependency file could not be read is kept.
    present = {e.number: e for e in snap.steps}
    needed: set[int] = set()
    work = [d.entry for d in result.decisions if not d.delete and d.entry.number is not None]
    while work:
        for number in work.pop().depends:
            if number in present and number not in needed:
                needed.add(number)
                work.append(present[number])
    assert not any(e.number in needed for e in deleted_steps), needed
    assert not any(e.complete and e.depends_problem for e in deleted_steps)
    kept_last = set(complete[: policy.keep_last])
    assert not any(e.number in kept_last for e in deleted_steps)

    # 2: never a multiple of interval_to_keep.
    if policy.interval_to_keep is not None:
        assert not any(e.number % policy.interval_to_keep == 0 for e in deleted_steps)

    # 3: never the newest complete step, nor an incomplete step newer than it (or any incomplete
    # step when no step is complete yet).
    for entry in deleted_steps:
        assert entry.number != newest_complete
        if not entry.complete:
            assert newest_complete is not None and entry.number < newest_complete

    if not policy.gated:
        return "ungated"
    # 5: no marker, or any invalid marker: nothing at all is deleted in this directory.
    if not snap.consumers or any(c.problem is not None for c in snap.consumers):
        assert deleted == []
        return "gated: halted by a missing or invalid marker"
    # 5: any consumer beyond the newest step (from another run): nothing is deleted.
    newest_step = max((e.number for e in snap.steps if e.number is not None), default=None)
    if newest_step is not None and any(c.step is not None and c.step > newest_step
                                       for c in snap.consumers):
        assert deleted == []
        return "gated: halted by a consumer beyond the newest step"
    loaded = min(c.step for c in snap.consumers if c.step is not None)
    # A marker licenses from the earlier of its mtime and ctime (ctime None: not known).
    marker_ns = min(c.mtime_ns if c.ctime_ns is None else min(c.mtime_ns, c.ctime_ns)
                    for c in snap.consumers)
    # 1: never a step at or above the effective (minimum) loaded step.
    assert not any(e.number >= loaded for e in deleted_steps)
    # 4: never a step changed at or after the oldest marker that licenses its deletion.
    assert not any(e.changed_ns >= marker_ns for e in deleted_steps)
    return "gated: valid markers"


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_plan_keeps_invariants_1_to_5(case: Case) -> None:
    result = plan(case.snap, case.policy)
    event(check_invariants(case, result))
    doomed = len(result.doomed)
    event("deletes something" if doomed else "deletes nothing")
    if doomed and case.policy.gated:
        event("gated and deletes something")
    if any(d.reason is Reason.ABANDONED_PARTIAL for d in result.decisions):
        event("deletes an abandoned partial step")
    if any(d.reason is Reason.ABANDONED_STAGING for d in result.decisions):
        event("deletes an abandoned staging dir")
    if any(d.reason is Reason.CHANGED_AFTER_MARKER for d in result.decisions):
        event("keeps a step changed after the marker")


@settings(max_examples=300, deadline=None)
@given(cases)
def test_plan_is_deterministic_and_pure(case: Case) -> None:
    first = plan(case.snap, case.policy)
    assert plan(case.snap, case.policy) == first


@settings(max_examples=300, deadline=None)
@given(steps_strategy(), st.integers(0, 70), policies)
def test_receiver_ready_progress_keeps_invariants_1_to_3(steps: list[Entry], ready: int,
                                                          policy: Policy) -> None:
    """The sentinel handshake: `.receiver_ready` in step R means everything below R is loaded."""
    progress_policy = Policy(gated=policy.gated, interval_to_keep=policy.interval_to_keep,
                             keep_last=policy.keep_last, partial_grace_s=policy.partial_grace_s,
                             progress="receiver-ready")
    marked = [step(e.number or 0, complete=e.complete, pinned=e.pinned, changed_ns=e.changed_ns,
                   ready_ns=SCANNED_NS - 10 * S if e.number == ready else None) for e in steps]
    case = Case(snapshot(marked, []), progress_policy)
    result = plan(case.snap, case.policy)
    # Reuse the ungated checks (2, 3, pinned, keep_last) by pretending to be ungated ...
    check_invariants(Case(case.snap, policy=Policy(gated=False,
                                                   interval_to_keep=policy.interval_to_keep,
                                                   keep_last=policy.keep_last)), result)
    if policy.gated:
        # ... then 1 and 5 for the sentinel: nothing deleted without one, nothing at or above it.
        if not any(e.number == ready for e in marked):
            assert result.doomed == ()
        deleted = [d.entry.number for d in result.doomed if d.entry.number is not None]
        assert all(n < ready for n in deleted)


@pytest.mark.parametrize("keep_last", [0, -1, -5])
def test_policy_refuses_keep_last_below_one(keep_last: int) -> None:
    with pytest.raises(PolicyError, match="--keep-last must be >= 1"):
        Policy(keep_last=keep_last)


@pytest.mark.parametrize("interval", [0, -1, -2, False])
def test_policy_refuses_interval_below_one(interval: int) -> None:
    with pytest.raises(PolicyError, match="--interval-to-keep must be a whole number >= 1"):
        Policy(interval_to_keep=interval)


def test_policy_refuses_negative_grace() -> None:
    with pytest.raises(PolicyError, match="--partial-grace"):
        Policy(partial_grace_s=-1)


# ---- exact-reason examples (borg style: tiny inputs, every reason spelled out) ---------------

OLD = SCANNED_NS - 5000 * S  # long before the marker and outside every grace period
MARKED = SCANNED_NS - 100 * S
RECENT = SCANNED_NS - 1 * S


def decisions(result: Plan) -> dict[str, str]:
    return {d.entry.name: f"{d.action} {d.reason.value}" for d in result.decisions}


EXAMPLES = [
    pytest.param(
        [step(n) for n in range(1, 11)], [marker(8, mtime_ns=MARKED)],
        Policy(interval_to_keep=5, keep_last=2),
        {"step_1": "delete superseded", "step_2": "delete superseded",
         "step_3": "delete superseded", "step_4": "delete superseded",
         "step_5": "keep interval-multiple", "step_6": "delete superseded",
         "step_7": "delete superseded", "step_8": "keep at-or-above-loaded",
         "step_9": "keep keep-last", "step_10": "keep interval-multiple"},
        id="interval-keep-last-loaded"),
    pytest.param(
        [step(1), step(2), step(3)], [],
        Policy(),
        {"step_1": "keep no-valid-marker", "step_2": "keep no-valid-marker",
         "step_3": "keep no-valid-marker"},
        id="no-marker-keeps-all"),
    pytest.param(
        [step(1), step(2), step(3)], [marker(3, mtime_ns=MARKED),
                                      marker(None, name="eval", problem="empty")],
        Policy(),
        {"step_1": "keep no-valid-marker", "step_2": "keep no-valid-marker",
         "step_3": "keep no-valid-marker"},
        id="one-bad-consumer-halts"),
    pytest.param(
        [step(n) for n in range(1, 7)],
        [marker(6, mtime_ns=MARKED), marker(3, name="eval", mtime_ns=MARKED)],
        Policy(),
        {"step_1": "delete superseded", "step_2": "delete superseded",
         "step_3": "keep at-or-above-loaded", "step_4": "keep at-or-above-loaded",
         "step_5": "keep at-or-above-loaded", "step_6": "keep newest-complete"},
        id="slowest-consumer-wins"),
    pytest.param(
        [step(1, changed_ns=MARKED + S), step(2, changed_ns=MARKED), step(3), step(4)],
        [marker(4, mtime_ns=MARKED)], Policy(),
        {"step_1": "keep changed-after-marker", "step_2": "keep changed-after-marker",
         "step_3": "delete superseded", "step_4": "keep newest-complete"},
        id="changed-after-marker"),
    pytest.param(
        [step(1), step(2, complete=False), step(3), step(4, complete=False, changed_ns=OLD),
         step(5, complete=False, changed_ns=RECENT)],
        [marker(3, mtime_ns=MARKED)], Policy(),
        {"step_1": "delete superseded", "step_2": "delete abandoned-partial",
         "step_3": "keep newest-complete", "step_4": "keep in-progress",
         "step_5": "keep in-progress"},
        id="partials"),
    pytest.param(
        [step(1, pinned=True), step(2), step(3), staging("old", OLD), staging("new", RECENT)],
        [marker(3, mtime_ns=MARKED)], Policy(),
        {"step_1": "keep pinned", "step_2": "delete superseded", "step_3": "keep newest-complete",
         ".janitor-staging.old": "delete abandoned-staging",
         ".janitor-staging.new": "keep in-progress"},
        id="pinned-and-staging"),
    pytest.param(
        [step(1), step(2), step(3)], [marker(9, mtime_ns=MARKED)], Policy(),
        {"step_1": "keep no-valid-marker", "step_2": "keep no-valid-marker",
         "step_3": "keep no-valid-marker"},
        id="marker-beyond-newest-step"),
    pytest.param(
        [step(n) for n in range(1, 6)],
        [marker(2, mtime_ns=MARKED), marker(99, name="eval", mtime_ns=MARKED)], Policy(),
        {f"step_{n}": "keep no-valid-marker" for n in range(1, 6)},
        id="any-consumer-beyond-newest-halts"),
    pytest.param(
        # `touch -d tomorrow LOADED_STEP`: mtime in the future, ctime the real write (MARKED);
        # step_1 rewritten after the real write is not licensed by the future mtime.
        [step(1, changed_ns=MARKED + S), step(2), step(3)],
        [marker(3, mtime_ns=MARKED + 86400 * S, ctime_ns=MARKED)], Policy(),
        {"step_1": "keep changed-after-marker", "step_2": "delete superseded",
         "step_3": "keep newest-complete"},
        id="future-dated-marker-licenses-from-ctime"),
    pytest.param(
        [step(1), step(2), step(3, changed_ns=RECENT)], [], Policy(gated=False, keep_last=1),
        {"step_1": "delete superseded", "step_2": "delete superseded",
         "step_3": "keep newest-complete"},
        id="ungated"),
    pytest.param(
        [step(0), step(1), step(2)], [marker(2, mtime_ns=MARKED)], Policy(interval_to_keep=1),
        {"step_0": "keep interval-multiple", "step_1": "keep interval-multiple",
         "step_2": "keep interval-multiple"},
        id="interval-one-keeps-all"),
]


@pytest.mark.parametrize(("entries", "consumers", "policy", "expected"), EXAMPLES)
def test_plan_examples(entries: list[Entry], consumers: list[Consumer], policy: Policy,
                       expected: dict[str, str]) -> None:
    result = plan(snapshot(entries, consumers), policy)
    assert decisions(result) == expected
    check_invariants(Case(snapshot(entries, consumers), policy), result)
