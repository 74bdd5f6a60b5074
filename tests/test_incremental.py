"""The daemon's incremental passes decide, on real trees, exactly what a full look decides.

A hypothesis state machine changes a real directory the ways trainers, consumers and operators
do (steps written whole or in place, completion markers removed, pins, markers moved, rewritten,
broken, steps deleted by hand); after each change a TrackedDirectory is told only the names a
parent-directory inotify watch would report (a file written *inside* a step is not reported) and
its plan is compared with a fresh full `ManagedDirectory.look()` of the same tree. Both run dry
(no deletion), so every doomed step stays and the comparison covers the whole history.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from janitor.model import ScanOptions
from janitor.ops import incremental
from janitor.ops.incremental import TrackedDirectory
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy
from trainer_hooks import mark_loaded

NUMBERS = st.integers(0, 30)


def _write_step(directory: Path, number: int, *, complete: bool,
                depends: bytes | None = None) -> None:
    step = directory / f"step_{number}"
    step.mkdir()
    (step / "weights.bin").write_bytes(b"w")
    if depends is not None:  # written with the step, before its completion marker
        (step / "DEPENDS_ON").write_bytes(depends)
    if complete:
        (step / "STABLE").touch()


def _doomed(plan_decisions: object) -> set[str]:
    return {d.entry.name for d in plan_decisions if d.delete}  # type: ignore[attr-defined]


class IncrementalMatchesFull(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="janitor-incr-"))
        self.dir = self.root / "broadcasts"
        self.dir.mkdir()
        self.policy = Policy(interval_to_keep=5, keep_last=2, partial_grace_s=0.0)
        self.options = ScanOptions()
        managed = ManagedDirectory(str(self.dir), dry_run=True, policy=self.policy,
                                   options=self.options)
        self.tracked = TrackedDirectory(managed)
        self.tracked.full_pass()
        self.pending: set[str] = set()

    def teardown(self) -> None:
        self.tracked.close()
        shutil.rmtree(self.root)

    def _steps(self) -> list[int]:
        return sorted(int(p.name[5:]) for p in self.dir.glob("step_*"))

    @rule(number=NUMBERS, complete=st.booleans(), data=st.data())
    def write_step(self, number: int, complete: bool, data: st.DataObject) -> None:
        if (self.dir / f"step_{number}").exists():
            return
        # Its dependencies: mostly steps already here (a chain of patches), sometimes any
        # number, a malformed file, or none.
        here = self._steps()
        depends = data.draw(st.one_of(
            st.none(),
            st.lists(st.sampled_from(here) if here else NUMBERS, min_size=1, max_size=3)
            .map(lambda ns: "".join(f"{n}\n" for n in ns).encode()),
            st.lists(NUMBERS, max_size=2).map(lambda ns: "".join(f"{n}\n" for n in ns)
                                              .encode()),
            st.sampled_from([b"x\n", b"01\n", b"\xff"])))
        _write_step(self.dir, number, complete=complete, depends=depends)
        self.pending.add(f"step_{number}")

    @precondition(lambda self: bool(self._steps()))
    @rule(data=st.data())
    def complete_in_place(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(self._steps()))
        (self.dir / f"step_{number}" / "STABLE").touch()  # no event in the parent

    @precondition(lambda self: bool(self._steps()))
    @rule(data=st.data())
    def remove_completion(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(self._steps()))
        (self.dir / f"step_{number}" / "STABLE").unlink(missing_ok=True)  # no event either

    @precondition(lambda self: bool(self._steps()))
    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(self._steps()))
        (self.dir / f"step_{number}" / "PIN").touch()

    @precondition(lambda self: bool(self._steps()))
    @rule(data=st.data())
    def delete_step(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(self._steps()))
        shutil.rmtree(self.dir / f"step_{number}")
        self.pending.add(f"step_{number}")

    @precondition(lambda self: bool(self._steps()))
    @rule(data=st.data(), consumer=st.sampled_from(["", "eval"]))
    def publish(self, data: st.DataObject, consumer: str) -> None:
        number = data.draw(st.sampled_from(self._steps()))
        mark_loaded(self.dir, number, consumer=consumer or None)
        self.pending.add("LOADED_STEP" + (f".{consumer}" if consumer else ""))

    @rule(content=st.sampled_from([b"", b"abc", b"7\n", b"-1"]))
    def break_marker(self, content: bytes) -> None:
        (self.dir / "LOADED_STEP").write_bytes(content)
        self.pending.add("LOADED_STEP")

    @rule()
    def remove_marker(self) -> None:
        if (self.dir / "LOADED_STEP").exists():
            os.unlink(self.dir / "LOADED_STEP")
            self.pending.add("LOADED_STEP")

    @invariant()
    def same_plan_as_a_full_look(self) -> None:
        names = sorted(self.pending)
        self.pending.clear()
        before = self.tracked.index.snapshot("/", 0, 0)
        if self.tracked.changed_pass(names, skip_if_unchanged=True) is None:
            # The daemon's echo skip: only when every named child read as it was indexed.
            assert self.tracked.index.snapshot("/", 0, 0) == before
        result = self.tracked.changed_pass(names)
        assert result is not None
        with ManagedDirectory(str(self.dir), dry_run=True, policy=self.policy,
                              options=self.options) as fresh:
            _, full = fresh.look()
        assert result.plan.progress == full.progress
        assert result.plan.newest_complete == full.newest_complete
        assert _doomed(result.plan.decisions) == _doomed(full.decisions)
        held = {d.entry.name for d in full.decisions if d.reason.value == "depended-on"}
        looked = {d.entry.name for d in result.plan.decisions}
        assert held & looked == {d.entry.name for d in result.plan.decisions
                                 if d.reason.value == "depended-on"}


IncrementalMatchesFull.TestCase.settings = settings(max_examples=60, stateful_step_count=25,
                                                    deadline=None)
test_incremental_matches_full = pytest.mark.slow(IncrementalMatchesFull.TestCase)


def test_a_publish_reads_only_the_steps_it_passed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 kept multiples: a marker moving by one step reads a handful of names, not 10,000."""
    directory = tmp_path / "broadcasts"
    directory.mkdir()
    for n in range(0, 20_000, 2):
        (directory / f"step_{n}").mkdir()
        (directory / f"step_{n}" / "STABLE").touch()
    for n in (20_001, 20_003):
        _write_step(directory, n, complete=True)
    mark_loaded(directory, 20_001)
    managed = ManagedDirectory(str(directory), dry_run=False, policy=Policy(interval_to_keep=2),
                               options=ScanOptions())
    with TrackedDirectory(managed) as tracked:
        tracked.full_pass()
        _write_step(directory, 20_005, complete=True)
        mark_loaded(directory, 20_005)
        read: list[str] = []
        real = incremental.classify

        def counting(fd: int, dev: int, mount: int | None, name: str,
                     options: ScanOptions) -> object:
            read.append(name)
            return real(fd, dev, mount, name, options)

        monkeypatch.setattr(incremental, "classify", counting)
        result = tracked.changed_pass(["step_20005", "LOADED_STEP"])
        assert result is not None
        assert [t.entry.number for t in result.trashed] == [20_001, 20_003]
        assert len(read) < 10, read
        assert not (directory / "step_20001").exists()
        assert (directory / "step_19998").exists() and (directory / "step_20005").exists()


def _rescan(tracked: TrackedDirectory, quiet_ns: int) -> incremental.RescanResult:
    tracked.start_rescan(quiet_ns)
    for _ in range(10_000):
        result = tracked.advance_rescan(0.001)
        if result is not None:
            return result
    raise AssertionError("a rescan of a small directory never finished")


def test_a_rescan_finds_and_corrects_what_no_event_said(tmp_path: Path) -> None:
    directory = tmp_path / "broadcasts"
    directory.mkdir()
    for n in (1, 2, 3):
        _write_step(directory, n, complete=True)
    mark_loaded(directory, 1)
    (directory / "notes").mkdir()
    managed = ManagedDirectory(str(directory), dry_run=True, policy=Policy(),
                               options=ScanOptions())
    with TrackedDirectory(managed) as tracked:
        tracked.full_pass()
        assert _rescan(tracked, quiet_ns=0).corrected == []
        # Behind the index's back (no pass is told): a step appears, another goes, one is
        # replaced by another directory of the same name.
        _write_step(directory, 4, complete=True)
        shutil.rmtree(directory / "step_2")
        os.rename(directory / "step_3", tmp_path / "old_step_3")  # held: no inode reuse
        _write_step(directory, 3, complete=False)
        result = _rescan(tracked, quiet_ns=0)
        assert result.counted and tracked.mismatches == 3
        assert [(m.name, m.indexed.split()[0], m.scanned.split()[0]) for m in result.corrected] \
            == [("step_2", "step", "absent"), ("step_3", "step", "step"),
                ("step_4", "absent", "step")]
        assert result.subdirs == ("notes",)
        assert sorted(tracked.index.entries) == ["step_1", "step_3", "step_4"]
        assert not tracked.index.step(3).complete
        # The same drift in a directory that changed just before the rescan (an event may be on
        # its way) is corrected without being counted as a missed event.
        _write_step(directory, 5, complete=True)
        result = _rescan(tracked, quiet_ns=10**18)
        assert [m.name for m in result.corrected] == ["step_5"] and not result.counted
        assert tracked.mismatches == 3


def test_names_an_event_reported_during_a_rescan_are_not_mismatches(tmp_path: Path) -> None:
    directory = tmp_path / "broadcasts"
    directory.mkdir()
    for n in range(200):
        (directory / f"step_{n}").mkdir()
        (directory / f"step_{n}" / "STABLE").touch()
    mark_loaded(directory, 0)
    managed = ManagedDirectory(str(directory), dry_run=True, policy=Policy(),
                               options=ScanOptions())
    with TrackedDirectory(managed) as tracked:
        tracked.full_pass()
        tracked.start_rescan(0)
        assert tracked.advance_rescan(0.0) is None  # one slice: 64 names at most
        shutil.rmtree(directory / "step_199")
        _write_step(directory, 200, complete=True)
        tracked.changed_pass(["step_199", "step_200"])  # what the events would say
        result = None
        while result is None:
            result = tracked.advance_rescan(0.001)
        assert result.corrected == []
        assert "step_200" in tracked.index.entries and "step_199" not in tracked.index.entries


def test_rescans_of_many_directories_hold_the_fds_of_one_at_a_time(tmp_path: Path) -> None:
    """The timer asks every directory for a rescan at once; a daemon near its fd limit must not
    then hold two more fds per directory: each rescan opens its own when it begins."""
    tracked = []
    for i in range(20):
        directory = tmp_path / f"run{i}" / "broadcasts"
        directory.mkdir(parents=True)
        for n in range(300):
            (directory / f"step_{n}").mkdir()
        mark_loaded(directory, 0)
        one = TrackedDirectory(ManagedDirectory(str(directory), dry_run=True, policy=Policy(),
                                                options=ScanOptions()))
        one.full_pass()
        tracked.append(one)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for one in tracked:
            one.start_rescan(0)
        assert len(os.listdir("/proc/self/fd")) == before, "asking opens nothing"
        most = 0
        for one in tracked:  # the loop works through them in turn, slice by slice
            while one.rescanning:
                one.advance_rescan(0.0)
                most = max(most, len(os.listdir("/proc/self/fd")) - before)
        assert 0 < most <= 1, "one rescan at a time, one fd each"
    finally:
        for one in tracked:
            one.close()
