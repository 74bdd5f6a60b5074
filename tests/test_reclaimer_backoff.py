"""The reclaim worker's backoff: a failing trash entry is retried after 1 s, 2 s, 4 s ... at most
every 10 min (per directory and trash name), not at every rescan. The clock is a fake one here,
the trash a real directory, the reclaim the real one except for the entry made to fail."""

from __future__ import annotations

import errno
import gc
import os
from pathlib import Path

import pytest

from janitor.daemon import reclaimer
from janitor.fs import reaper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_entry_is_retried_with_exponential_backoff_and_reset_on_success(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trash = tmp_path / "trash"
    (trash / "3.1.1.0" / "sub").mkdir(parents=True)
    (trash / "4.1.1.0").mkdir()
    attempts: list[tuple[float, str]] = []
    real = reaper.reclaim
    failing = {"3.1.1.0"}

    def counted(trash_fd: int, names: list[str] | None = None, *,
                workers: int = 1, idle: bool = False) -> reaper.ReclaimStats:
        assert names is not None
        attempts.append((clock.now, names[0]))
        if names[0] in failing:
            return reaper.ReclaimStats(pending=[names[0]], problems=[f"{names[0]}: no"],
                                       failed={names[0]: "permission denied at sub"})
        return real(trash_fd, names, workers=workers, idle=idle)

    monkeypatch.setattr(reaper, "reclaim", counted)
    deleted: list[str] = []
    clock = Clock()
    worker = reclaimer.Reclaimer(lambda _d, item, _s: deleted.append(item.trash_name), None,
                                 clock=clock)
    fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def rescan(at: float) -> None:
            clock.now = at
            worker.submit("dir", fd, None)
            assert worker.drain(10)

        rescan(1000.0)  # fails (first of the episode); 4.1.1.0 goes
        assert deleted == ["4.1.1.0"]
        for tenth in range(1, 700):  # a rescan every 0.1 s for 70 s
            rescan(1000.0 + tenth / 10)
        for ten in range(8, 300):  # then every 10 s up to 3000 s
            rescan(1000.0 + ten * 10)
        tried = [at - 1000.0 for at, name in attempts if name == "3.1.1.0"]
        assert tried[:7] == pytest.approx([0, 1, 3, 7, 15, 31, 63], abs=0.11)
        # waits of 64, 128, 256, 512 s, then capped at 600 s, each seen at the next 10 s rescan
        assert tried[7:] == pytest.approx([130, 260, 520, 1040, 1640, 2240, 2840], abs=0.11)

        failing.clear()
        rescan(1000.0 + 3500)  # due again: now it works, and the episode ends
        assert deleted == ["4.1.1.0", "3.1.1.0"]
        assert os.listdir(trash) == []
    finally:
        os.close(fd)


def test_only_one_leftover_job_per_directory_waits_in_the_queue(tmp_path: Path) -> None:
    trash = tmp_path / "trash"
    trash.mkdir()
    fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
    try:
        worker = reclaimer.Reclaimer(lambda *_: None, None)
        before = len(os.listdir("/proc/self/fd"))
        jobs = [worker.submit("dir", fd, None) for _ in range(200)]
        held = len(os.listdir("/proc/self/fd")) - before
        assert worker.drain(10)
        assert held <= 2  # one queued, one maybe running: not 200 dup'ed trash fds
        assert all(job.done.is_set() for job in jobs)
    finally:
        os.close(fd)


def test_out_of_fds_a_submit_fails_whole_and_leaves_no_fd_and_no_state(tmp_path: Path) -> None:
    """EMFILE while the job dups its fds (seen under a low RLIMIT_NOFILE with many managed
    directories, where it crashed the daemon): the submit raises, closes what it dup'ed, and
    records nothing, so the next leftover job for that directory is queued and runs."""
    import resource

    trash = tmp_path / "trash"
    (trash / "3.1.1.0").mkdir(parents=True)
    fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
    deleted: list[str] = []
    worker = reclaimer.Reclaimer(lambda _d, item, _s: deleted.append(item.trash_name), None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Counting this process's fds: an object of an earlier test that holds one (a socket, a
    # file) must not be finalized by the collector in the middle of the count.
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_for_one_more_fd(), hard))
        try:
            with pytest.raises(OSError) as raised:
                worker.submit("/tree", fd, [reclaimer.Item("3.1.1.0", 3, "superseded")],
                              sync_fds=(fd, fd))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert raised.value.errno == errno.EMFILE
        assert len(os.listdir("/proc/self/fd")) == before, "the dup that worked was closed"
        worker.submit("/tree", fd, None).done.wait(30)  # a leftover job: not "already queued"
        assert deleted == ["3.1.1.0"] and not (trash / "3.1.1.0").exists()
    finally:
        gc.enable()
        os.close(fd)


def _limit_for_one_more_fd() -> int:
    """An RLIMIT_NOFILE under which exactly one more fd can be opened (dup takes the lowest
    free number, so the limit is the second free number)."""
    def is_open(number: int) -> bool:
        try:
            os.fstat(number)
        except OSError:
            return False
        return True

    free = [n for n in range(4096) if not is_open(n)]
    return free[1]
