"""A stateful model test (issue 6, part 5): random interleavings of trainer writes, incomplete
steps, consumer marks (valid, corrupt, a second consumer), pins, janitor passes (real, dry, and
SIGKILLed mid-pass in a forked child, then recovered), checked against a model of what may go.

The model keeps, per step, whether it is complete, pinned, its files, and the logical time of its
last change; per consumer, its marker value (None when corrupt) and when it was written. A janitor
pass may remove a step only if the model said, right before that pass, that the step was deletable
(invariants 1-5). After every rule: the steps on disk are exactly the model's, each whole
(invariant 7); a dry run changes nothing (invariant 9); after a recovery pass the trash is empty.
The janitor is allowed to be more careful than the model (equal filesystem timestamps), never less.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from helpers.tree import newest_step_change_ns, step_numbers, trash_names, tree_state
from helpers.wait import wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import trainer_hooks
from janitor import protocol
from janitor.model import ScanOptions
from janitor.ops.sweep import SweepRequest, sweep_directory
from janitor.policy import Policy

INTERVAL = 5
MAX_STEP = 24
POLICY = Policy(interval_to_keep=INTERVAL, keep_last=1, partial_grace_s=0.0)
steps = st.integers(min_value=0, max_value=MAX_STEP)
consumers = st.sampled_from(["", "eval"])


@dataclass
class StepModel:
    complete: bool
    files: dict[str, bytes]
    changed: int  # logical time of the last change
    pinned: bool = False


@dataclass
class MarkerModel:
    value: int | None  # None: corrupt
    written: int


@dataclass
class Stats:
    passes: int = 0
    kills: int = 0
    deleted: int = 0
    examples: int = 0
    counts: dict[str, int] = field(default_factory=dict)


STATS = Stats()


class JanitorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.base = Path(tempfile.mkdtemp(prefix="janitor-model-", dir=parent))
        self.tree = self.base / "tree"
        self.tree.mkdir()
        self.clock = 0
        self.steps: dict[int, StepModel] = {}
        self.markers: dict[str, MarkerModel] = {}
        STATS.examples += 1

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def _tick(self, what: str) -> int:
        self.clock += 1
        STATS.counts[what] = STATS.counts.get(what, 0) + 1
        return self.clock

    # ---- the model of what may be deleted ----------------------------------------------------

    def deletable(self) -> set[int]:
        """Steps the policy may delete now, per the model (the janitor may delete fewer)."""
        if not self.markers or any(m.value is None for m in self.markers.values()):
            return set()
        values = [m.value for m in self.markers.values() if m.value is not None]
        loaded = min(values)
        if self.steps and max(values) > max(self.steps):
            return set()  # any marker beyond the newest step: from another run, halt
        licensed_at = min(m.written for m in self.markers.values())
        complete = [n for n, s in self.steps.items() if s.complete]
        if not complete:
            return set()
        newest = max(complete)
        return {n for n, s in self.steps.items()
                if n < loaded and n % INTERVAL != 0 and not s.pinned and n != newest
                and (s.complete or n < newest) and s.changed < licensed_at}

    # ---- the trainer -------------------------------------------------------------------------

    @rule(number=steps, size=st.integers(0, 64))
    def write_complete_step(self, number: int, size: int) -> None:
        """trainer_hooks.staged_step: hidden staging, files, STABLE last, rename (or exchange)."""
        files = {f"shard_{i}.bin": bytes([number % 256]) * (size + i) for i in range(3)}
        with trainer_hooks.staged_step(self.tree, number) as staging:
            for name, data in files.items():
                (staging / name).write_bytes(data)
        files[protocol.DEFAULT_COMPLETE_MARKER] = b""
        self.steps[number] = StepModel(True, files, self._tick("write_complete_step"))

    @rule(number=steps)
    def write_incomplete_step(self, number: int) -> None:
        """A writer that died mid-step without staging: step_N without STABLE."""
        if number in self.steps:
            return
        step = self.tree / protocol.step_name(number)
        step.mkdir()
        (step / "partial.bin").write_bytes(b"half")
        self.steps[number] = StepModel(False, {"partial.bin": b"half"},
                                       self._tick("write_incomplete_step"))

    @rule(number=steps, pin=st.booleans())
    def pin(self, number: int, pin: bool) -> None:
        if number not in self.steps:
            return
        path = self.tree / protocol.step_name(number) / protocol.PIN_FILE
        if not pin and not path.exists():
            return  # unpinning an unpinned step changes nothing on disk
        if pin:
            path.write_bytes(b"")
        else:
            path.unlink(missing_ok=True)
        model = self.steps[number]
        model.pinned = pin
        model.files.pop(protocol.PIN_FILE, None)
        if pin:
            model.files[protocol.PIN_FILE] = b""
        model.changed = self._tick("pin")

    # ---- consumers ---------------------------------------------------------------------------

    def _after_steps(self) -> None:
        """Let the filesystem clock pass every step's change time, so the marker licenses them
        (the janitor keeps a step changed in the marker's own clock tick; the model would not)."""
        newest = newest_step_change_ns(self.tree)
        probe = self.base / "clock"

        def past() -> bool:
            probe.write_bytes(b"")
            return probe.stat().st_mtime_ns > newest

        wait_until(past, 5, "the filesystem clock to tick", interval_s=0.0005)

    @rule(consumer=consumers, value=st.integers(0, MAX_STEP + 2))
    def mark_loaded(self, consumer: str, value: int) -> None:
        self._after_steps()
        trainer_hooks.mark_loaded(self.tree, value, consumer or None)
        self.markers[consumer] = MarkerModel(value, self._tick("mark_loaded"))

    @rule(consumer=consumers, behind=st.integers(0, 3))
    def mark_near_newest(self, consumer: str, behind: int) -> None:
        """The common case: a consumer that loaded (nearly) the newest complete step."""
        complete = [n for n, s in self.steps.items() if s.complete]
        if complete:
            self.mark_loaded(consumer, max(0, max(complete) - behind))

    @rule(consumer=consumers,
          data=st.sampled_from([b"", b"abc", b"12x\n", b"007\n", b" 3", b"1\n\n", b"9" * 21]))
    def corrupt_marker(self, consumer: str, data: bytes) -> None:
        (self.tree / protocol.marker_name(consumer or None)).write_bytes(data)
        self.markers[consumer] = MarkerModel(None, self._tick("corrupt_marker"))

    @rule(consumer=consumers)
    def remove_marker(self, consumer: str) -> None:
        (self.tree / protocol.marker_name(consumer or None)).unlink(missing_ok=True)
        if self.markers.pop(consumer, None) is not None:
            self._tick("remove_marker")

    # ---- the janitor -------------------------------------------------------------------------

    def _request(self, dry_run: bool = False) -> SweepRequest:
        return SweepRequest((str(self.tree),), POLICY, ScanOptions(), dry_run, 0)

    def _account(self, allowed: set[int], what: str) -> None:
        """Steps gone from disk must have been deletable; drop them from the model."""
        gone = set(self.steps) - set(step_numbers(self.tree))
        assert gone <= allowed, f"{what} removed {sorted(gone - allowed)} (allowed "\
                                f"{sorted(allowed)}); model {self.steps} markers {self.markers}"
        for number in gone:
            del self.steps[number]
        STATS.deleted += len(gone)

    @rule()
    def janitor_pass(self) -> None:
        allowed = self.deletable()
        report = sweep_directory(str(self.tree), self._request())
        assert report.error is None, report.error
        STATS.passes += 1
        self._tick("janitor_pass")
        self._account(allowed, "a pass")
        assert trash_names(self.tree) == []

    @rule()
    def dry_run(self) -> None:
        before = tree_state(self.tree)
        report = sweep_directory(str(self.tree), self._request(dry_run=True))
        assert report.error is None
        assert tree_state(self.tree) == before
        self._tick("dry_run")

    @rule(op=st.sampled_from(["rename", "unlink", "rmdir", "fsync", "write"]),
          nth=st.integers(1, 12))
    def killed_pass_then_recovery(self, op: str, nth: int) -> None:
        """A forked child runs a pass and SIGKILLs itself at its nth `op`; then a pass recovers."""
        allowed = self.deletable()
        pid = os.fork()
        if pid == 0:  # the child: count calls, die at the chosen one
            try:
                _die_at(op, nth)
                sweep_directory(str(self.tree), self._request())
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        STATS.kills += 1
        self._tick("killed_pass")
        self._account(allowed, "a killed pass")
        self.check_tree()  # whole or gone, right after the kill
        self.janitor_pass()  # recovery: leftover trash reclaimed, nothing more than allowed
        assert trash_names(self.tree) == []

    # ---- invariants --------------------------------------------------------------------------

    @invariant()
    def check_tree(self) -> None:
        assert set(step_numbers(self.tree)) == set(self.steps)
        for number, model in self.steps.items():
            step = self.tree / protocol.step_name(number)
            found = {p.name: p.read_bytes() for p in step.iterdir()}
            assert found == model.files, f"step_{number} is not whole"


def _die_at(op: str, nth: int) -> None:
    calls = [0]
    original = getattr(os, op)

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(os, op, counted)


JanitorModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestJanitorModel = JanitorModel.TestCase


def teardown_module() -> None:
    with contextlib.suppress(OSError):
        print(f"\nmodel: {STATS.examples} examples, {STATS.passes} passes, {STATS.kills} killed "
              f"passes, {STATS.deleted} steps deleted; rules {sorted(STATS.counts.items())}")
