"""trainer_hooks.wait_for_headroom on real size-limited tmpfs mounts (issue 14, point 4).

A stalled consumer stalls the janitor (it frees only below LOADED_STEP), so a trainer that keeps
saving runs into ENOSPC. These tests fill a real tmpfs, show that a plain write then fails with
ENOSPC, and that a writer which waits for headroom instead blocks without leaving anything
partial, and proceeds once the consumer resumes and a real `janitor run` frees the space.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.daemon import Daemon
from helpers.tree import newest_change_ns, step_numbers, wait_for_fs_clock
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janitor import protocol
from trainer_hooks import (
    HeadroomTimeout,
    mark_loaded,
    newest_complete_step,
    staged_step,
    wait_for_headroom,
)
from trainer_hooks.headroom import available_bytes, default_reserve, forecast_step_bytes

CI = os.environ.get("CI") == "true"
MIB = 1024 * 1024
STEP = 1 * MIB
RESERVE = 512 * 1024
SHARD = "shard.bin"


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "8m") -> Iterator[Path]:
    """A real tmpfs of `size` at `where`; skipped where mounting is impossible, failed in CI."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs (need root): {done.stderr.decode().strip()}"
        if CI:
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def content(number: int, size: int = STEP) -> bytes:
    seed = b"%d:" % number
    return (seed * (size // len(seed) + 1))[:size]


def publish(tree: Path, number: int, size: int = STEP) -> None:
    """A torch-free step: one shard of `size` bytes, published by staged_step (STABLE last)."""
    with staged_step(tree, number) as staging:
        (staging / SHARD).write_bytes(content(number, size))


def is_whole(tree: Path, number: int, size: int = STEP) -> bool:
    step = tree / protocol.step_name(number)
    return ((step / SHARD).read_bytes() == content(number, size)
            and (step / protocol.DEFAULT_COMPLETE_MARKER).is_file())


def staging_left(tree: Path) -> list[str]:
    return [n for n in os.listdir(tree) if n.startswith(protocol.STAGING_PREFIX)]


def fill_to(mounted: Path, leave: int) -> Path:
    """A filler file outside the tree that leaves exactly `leave` bytes available."""
    filler = mounted / "filler.bin"
    extra = available_bytes(mounted) - leave
    assert extra > 0 and extra % 4096 == 0, extra
    with filler.open("ab") as handle:
        handle.write(b"\0" * extra)
    assert available_bytes(mounted) == leave
    return filler


def loaded(tree: Path, step: int) -> None:
    """The consumer's marker, strictly after every change in the tree (coarse fs clocks)."""
    wait_for_fs_clock(tree, newest_change_ns(tree))
    mark_loaded(tree, step)


class Recorder:
    """A `log` callable that remembers every line and wakes waiters."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    def count(self, word: str) -> int:
        with self.lock:
            return sum(word in line for line in self.lines)


# ---- 1. the mount is real ----------------------------------------------------------------------

def test_a_plain_write_larger_than_the_free_space_fails_with_enospc(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as mounted:
        tree = mounted / "broadcasts"
        tree.mkdir()
        publish(tree, 1)
        fill_to(mounted, STEP)
        with pytest.raises(OSError) as caught:
            publish(tree, 2, 2 * STEP)
        assert caught.value.errno == errno.ENOSPC
        assert step_numbers(tree) == [1] and staging_left(tree) == []
        assert is_whole(tree, 1)


# ---- 2. a stalled consumer makes the writer wait; resuming it lets the writer go on ----------

@pytest.mark.slow
def test_writer_waits_for_a_stalled_consumer_and_proceeds_when_the_janitor_frees(
        tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as mounted:
        tree = mounted / "broadcasts"
        tree.mkdir()
        for number in (1, 2, 3):
            publish(tree, number)
        loaded(tree, 1)
        marks = [(time.monotonic(), 1)]
        daemon = Daemon(["--audit-log", "off", "--rescan-interval", "0.5", mounted])
        try:
            daemon.wait_event("ready")
            daemon.wait_event("directory_adopted")
            wait_until((tree / protocol.LOCK_FILE).exists, 10, "the janitor's lock")
            # Room for less than one step plus its reserve: the writer must wait at step 4.
            fill_to(mounted, STEP + RESERVE // 2)
            record, published, failed = Recorder(), [], []

            def writer() -> None:
                try:
                    for number in range(4, 10):
                        wait_for_headroom(tree, reserve_bytes=RESERVE, timeout=60, poll_s=0.05,
                                          log=record)
                        publish(tree, number)
                        published.append(number)
                except BaseException as exc:  # reported by the main thread
                    failed.append(exc)

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            waits = 0

            def blocked_or_done(seen: int) -> bool:
                return record.count("waiting for headroom") > seen or not thread.is_alive()

            def proceeded(before: int) -> bool:
                return len(published) > before or bool(failed)

            while True:
                wait_until(lambda: blocked_or_done(waits), 30,  # noqa: B023  # read at once
                           "the writer to wait or finish")
                if not thread.is_alive():
                    break
                waits += 1
                # Blocked: nothing partial, nothing at or above the loaded step gone.
                mark = marks[-1][1]
                assert staging_left(tree) == [], staging_left(tree)
                newest = newest_complete_step(tree)
                assert newest is not None
                assert [n for n in step_numbers(tree) if n >= mark] == list(range(mark,
                                                                                 newest + 1))
                assert all(is_whole(tree, n) for n in step_numbers(tree))
                before = len(published)
                loaded(tree, newest)  # the consumer resumes
                marks.append((time.monotonic(), newest))
                wait_until(lambda: proceeded(before), 10,  # noqa: B023  # read at once
                           "the writer to proceed once the janitor freed space")
            thread.join(10)
            assert failed == []
            assert published == list(range(4, 10))
            assert waits >= 2, record.lines
            assert record.count("stalled consumer") == waits
            assert staging_left(tree) == []
            assert all(is_whole(tree, n) for n in step_numbers(tree))
            assert step_numbers(tree)[-1] == 9
            deleted = daemon.named("deleted")
            assert {1, 2, 3, 4} <= {event["step"] for event in deleted}
            for event in deleted:
                licensed = max(step for at, step in marks if at < event["_seen"])
                assert event["step"] < licensed, (event, marks)
        finally:
            daemon.close()


# ---- 3. a short timeout with a stalled consumer -------------------------------------------------

def test_timeout_raises_enospc_and_leaves_nothing(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with tmpfs(tmp_path / "fs") as mounted:
        tree = mounted / "broadcasts"
        tree.mkdir()
        for number in (1, 2, 3):
            publish(tree, number)
        loaded(tree, 1)
        fill_to(mounted, STEP)
        before = sorted(os.listdir(tree))
        caplog.set_level(logging.INFO, logger="trainer_hooks")
        started = time.monotonic()
        with pytest.raises(HeadroomTimeout) as caught:
            wait_for_headroom(tree, reserve_bytes=RESERVE, timeout=0.4, poll_s=0.02)
        took = time.monotonic() - started
        assert 0.4 <= took < 5
        assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
        message = str(caught.value)
        assert "\n" not in message
        assert "1.00 MiB available" in message and "1.00 MiB needed" in message
        assert "524288 B reserve" in message
        assert "after waiting 0.4" in message or "after waiting 0.5" in message
        waiting = [r for r in caplog.records if r.name == "trainer_hooks"]
        assert len(waiting) == 1 and waiting[0].levelno == logging.INFO  # once, not every poll
        assert "stalled consumer" in waiting[0].getMessage()
        assert sorted(os.listdir(tree)) == before and staging_left(tree) == []


@pytest.mark.torch
def test_save_step_waits_for_headroom_then_saves(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from trainer_hooks import load_step, save_step

    with tmpfs(tmp_path / "fs") as mounted:
        tree = mounted / "broadcasts"
        tree.mkdir()
        for number in (1, 2, 3):
            publish(tree, number)
        filler = fill_to(mounted, STEP)
        state = {"w": torch.zeros(64, 64)}
        # The forecast (1 MiB) plus the default reserve (10% of 8 MiB) does not fit in 1 MiB.
        with pytest.raises(HeadroomTimeout) as caught:
            save_step(tree, 4, state, wait_for_headroom=0.3)
        assert caught.value.errno == errno.ENOSPC
        assert step_numbers(tree) == [1, 2, 3] and staging_left(tree) == []
        filler.unlink()
        save_step(tree, 4, state, wait_for_headroom=True)
        assert torch.equal(load_step(tree, 4)["w"], state["w"])
        # Off by default: no wait, the save just happens (here it fits).
        save_step(tree, 5, state)
        assert step_numbers(tree) == [1, 2, 3, 4, 5] and staging_left(tree) == []


# ---- 4. the forecast -----------------------------------------------------------------------------

def test_forecast_is_the_largest_of_the_newest_three_complete_steps(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "32m") as mounted:
        tree = mounted / "broadcasts"
        tree.mkdir()
        assert forecast_step_bytes(tree) == 0  # nothing to forecast from
        publish(tree, 1, 6 * MIB)              # older than the newest three: ignored
        publish(tree, 2, 2 * MIB)
        publish(tree, 3, 1 * MIB)
        publish(tree, 5, MIB // 2)
        incomplete = tree / "step_6"           # in progress: ignored
        incomplete.mkdir()
        (incomplete / SHARD).write_bytes(content(6, 5 * MIB))
        foreign = tree / "step_07"             # foreign name: ignored
        foreign.mkdir()
        (foreign / SHARD).write_bytes(content(7, 5 * MIB))
        (foreign / "STABLE").write_bytes(b"")
        # A symlink to a big file and a hard link are not counted again.
        (tree / "step_3" / "link").symlink_to(mounted / "big")
        (mounted / "big").write_bytes(b"x" * 3 * MIB)
        os.link(tree / "step_5" / SHARD, tree / "step_5" / "again")
        assert forecast_step_bytes(tree) == 2 * MIB
        (tree / "step_2" / "STABLE").unlink()  # now the newest three complete are 1, 3 and 5
        assert forecast_step_bytes(tree) == 6 * MIB
        with pytest.raises(HeadroomTimeout):   # 6 MiB cannot fit in what is left of 32
            wait_for_headroom(tree, reserve_bytes=available_bytes(tree) - 5 * MIB, timeout=0.05)
        assert wait_for_headroom(tree, reserve_bytes=0, timeout=1) == available_bytes(tree)
        assert wait_for_headroom(tree, need_bytes=0, reserve_bytes=0) == available_bytes(tree)


def test_default_reserve() -> None:
    assert default_reserve(8 * MIB) == int(0.8 * MIB)                 # capped at 10%
    assert default_reserve(1000 * MIB) == 64 * MIB                    # at least 64 MiB
    assert default_reserve(10 * 1024**4) == 32 * 1024**3              # at most 32 GiB
    assert default_reserve(100 * 1024**3) == 5 * 1024**3              # 5%


# ---- 5. hostile arguments ------------------------------------------------------------------------

BAD_SIZES = st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(allow_nan=True),
                      st.text(max_size=5), st.binary(max_size=5), st.just(object()),
                      st.lists(st.integers(), max_size=2))
BAD_TIMEOUTS = st.one_of(st.floats(max_value=0), st.just(math.nan), st.booleans(),
                         st.integers(max_value=0), st.text(max_size=5), st.none(),
                         st.just(-math.inf))
BAD_POLLS = st.one_of(st.floats(max_value=0), st.just(math.nan), st.just(math.inf),
                      st.booleans(), st.integers(max_value=0), st.text(max_size=5), st.none())
ARGUMENT = st.sampled_from(["need_bytes", "reserve_bytes", "timeout", "poll_s"])


def _one_line(exc: BaseException) -> bool:
    return bool(str(exc)) and "\n" not in str(exc)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=ARGUMENT, data=st.data())
def test_hostile_arguments_are_one_line_errors_before_any_wait(tmp_path: Path, which: str,
                                                               data: st.DataObject) -> None:
    strategy = {"need_bytes": BAD_SIZES, "reserve_bytes": BAD_SIZES, "timeout": BAD_TIMEOUTS,
                "poll_s": BAD_POLLS}[which]
    value = data.draw(strategy)
    # need 10**30 bytes: were the bad value accepted, the call would wait, not return.
    kwargs = {"need_bytes": 10**30, "timeout": 3600, which: value}
    started = time.monotonic()
    with pytest.raises((TypeError, ValueError)) as caught:
        wait_for_headroom(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
    assert _one_line(caught.value) and which in str(caught.value)


def test_missing_directory_and_bad_log_and_marker(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        wait_for_headroom(tmp_path / "nope")
    assert _one_line(caught.value) and "does not exist" in str(caught.value)
    with pytest.raises(TypeError, match="log must be a callable"):
        wait_for_headroom(tmp_path, log="print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="complete_marker"):
        wait_for_headroom(tmp_path, complete_marker="a/b")
    # numpy-style integers are sizes; math.inf waits forever (here: it need not wait at all).
    assert wait_for_headroom(tmp_path, need_bytes=0, reserve_bytes=0, timeout=math.inf) > 0
    assert wait_for_headroom(tmp_path, need_bytes=0, reserve_bytes=0, timeout=10**400) > 0


@pytest.mark.parametrize("bad", [-1, 0, math.nan, "10", None])
def test_save_step_refuses_a_bad_wait_for_headroom_before_writing(tmp_path: Path,
                                                                  bad: object) -> None:
    from trainer_hooks import save_step

    with pytest.raises((TypeError, ValueError), match="wait_for_headroom"):
        save_step(tmp_path, 1, {}, wait_for_headroom=bad)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
