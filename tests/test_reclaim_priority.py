"""Reclaim never in the trainer's way: the reclaim thread and its pool workers run at idle CPU
and I/O priority, while the loop (scan, plan, rename) and every other thread stay at normal.

Read from the kernel: the scheduling policy is field 41 of /proc/<pid>/task/<tid>/stat, the I/O
class comes from the ioprio_get syscall, and the threads are told apart by their comm.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from pathlib import Path

import pytest
import structlog
from helpers.daemon import Spawn, publish_marker
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until

from janitor.fs import priority

SCHED_OTHER = 0
SCHED_IDLE = 5
IOPRIO_CLASS_IDLE = 3
RECLAIM_COMM = "janitor-reclaim"

pytestmark = pytest.mark.skipif(platform.machine() not in priority.IOPRIO_SYSCALLS,
                                reason="ioprio_get's number is known only for some machines")


def sched_policy(pid: int, tid: int) -> int:
    """Field 41 of the thread's stat line (fields counted from 1; comm may hold spaces)."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    after_comm = stat[stat.rindex(")") + 2:].split()
    return int(after_comm[41 - 3])


def io_class(tid: int) -> int:
    """The thread's I/O scheduling class (0 none, 1 realtime, 2 best-effort, 3 idle)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ioprio_get = priority.IOPRIO_SYSCALLS[platform.machine()][1]
    value = libc.syscall(ctypes.c_long(ioprio_get), ctypes.c_int(priority.IOPRIO_WHO_PROCESS),
                         ctypes.c_int(tid))
    if value < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(value) >> priority.IOPRIO_CLASS_SHIFT


def threads(pid: int) -> dict[int, str]:
    """tid -> comm of each live thread of `pid` (a thread may exit while we look)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(name)] = Path(f"/proc/{pid}/task/{name}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def assert_idle(pid: int, tid: int) -> None:
    assert (sched_policy(pid, tid), io_class(tid)) == (SCHED_IDLE, IOPRIO_CLASS_IDLE), \
        f"thread {tid} of {pid} is not idle"


def assert_normal(pid: int, tid: int) -> None:
    assert sched_policy(pid, tid) == SCHED_OTHER, f"thread {tid} of {pid} is not SCHED_OTHER"
    assert io_class(tid) != IOPRIO_CLASS_IDLE, f"thread {tid} of {pid} is in the idle I/O class"


# ---- the module, on a thread of this process ---------------------------------------------------

def test_idle_this_thread_lowers_only_the_calling_thread() -> None:
    ready, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["tid"] = threading.get_native_id()
        seen["lowered"] = priority.idle_this_thread()
        priority.label_this_thread()
        ready.set()
        release.wait(30)

    thread = threading.Thread(target=worker, name="prio-probe-thread-long-name")
    thread.start()
    try:
        assert ready.wait(30)
        tid = int(str(seen["tid"]))
        assert seen["lowered"] == priority.Lowered("SCHED_IDLE", "idle")
        assert_idle(os.getpid(), tid)
        # The kernel's name is the Python one, cut to the 15 bytes the kernel keeps.
        assert threads(os.getpid())[tid] == "prio-probe-thre"
        assert_normal(os.getpid(), threading.get_native_id())
    finally:
        release.set()
        thread.join(30)


def test_a_refusal_is_one_warning_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "setpriority", refuse)
    monkeypatch.setattr(platform, "machine", lambda: "pdp11")
    monkeypatch.setattr(priority, "_warned", threading.Event())
    results: list[priority.Lowered] = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):  # three threads, say: the reclaim thread and two pool workers
            thread = threading.Thread(target=lambda: results.append(priority.idle_this_thread()))
            thread.start()
            thread.join(30)
    assert [(r.cpu, r.io) for r in results] == [("unchanged", "unchanged")] * 3
    assert results[0].why == ("SCHED_IDLE refused (EPERM, operation not permitted)",
                              "nice 19 refused (EPERM, operation not permitted)",
                              "idle I/O class unknown on pdp11")
    warnings = [e for e in logs if e["event"] == "priority_not_lowered"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "EPERM" in warnings[0]["why"]


def test_nice_19_when_sched_idle_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(priority, "_warned", threading.Event())
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["lowered"] = priority.idle_this_thread()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
    lowered = seen["lowered"]
    assert isinstance(lowered, priority.Lowered)
    assert (lowered.cpu, lowered.io, seen["nice"]) == ("nice 19", "idle", 19)
    assert [e["event"] for e in logs] == ["priority_not_lowered"]  # SCHED_IDLE was refused
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19


# ---- a real daemon -----------------------------------------------------------------------------

def _doomed_big_step(tmp_path: Path, subdirectories: int, files_each: int) -> tuple[Path, Path]:
    """step_1 with `subdirectories` x `files_each` files (work for every pool worker), steps
    2-9 small, LOADED_STEP 1: publishing 2 dooms step 1."""
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, [1])
    for index in range(subdirectories):
        shards = managed / "step_1" / f"shards{index}"
        shards.mkdir()
        for number in range(files_each):
            (shards / f"s{number}").touch()
    make_steps(managed, range(2, 10))
    publish_marker(managed, 1)
    return root, managed


def _reclaim_threads(pid: int, at_least: int) -> dict[int, str]:
    def found() -> dict[int, str]:
        named = {tid: comm for tid, comm in threads(pid).items() if comm == RECLAIM_COMM}
        return named if len(named) >= at_least else {}

    return wait_until(found, 60, f"{at_least} {RECLAIM_COMM} threads", interval_s=0.005)


def _check_threads(pid: int, reclaim: set[int]) -> None:
    """The reclaim threads idle; every other thread, the main one first, normal."""
    assert pid not in reclaim
    assert_normal(pid, pid)
    for tid, comm in threads(pid).items():
        if tid in reclaim:
            assert_idle(pid, tid)
        else:
            assert comm != RECLAIM_COMM
            assert_normal(pid, tid)


@pytest.mark.slow
def test_the_reclaim_thread_is_idle_while_it_reclaims(spawn: Spawn, tmp_path: Path) -> None:
    root, managed = _doomed_big_step(tmp_path, subdirectories=1, files_each=30_000)
    daemon = spawn(str(root), "--rescan-interval", "0.5")
    daemon.wait_event("ready")
    publish_marker(managed, 2)  # dooms step 1: 30,000 files to unlink
    wait_until(lambda: 1 not in step_numbers(managed), 10, "step 1 to leave the listing")
    reclaim = _reclaim_threads(daemon.pid, at_least=1)
    assert len(reclaim) == 1
    assert not daemon.named("deleted", step=1), "the reclaim ended before it was looked at"
    _check_threads(daemon.pid, set(reclaim))
    # The loop still reacts at normal priority while the reclaim runs.
    publish_marker(managed, 3)
    wait_until(lambda: 2 not in step_numbers(managed), 10, "step 2 to leave the listing")
    daemon.wait_event("deleted", step=1, timeout_s=120)
    assert not daemon.named("priority_not_lowered")


@pytest.mark.slow
def test_reclaim_pool_workers_are_idle(spawn: Spawn, tmp_path: Path) -> None:
    root, managed = _doomed_big_step(tmp_path, subdirectories=8, files_each=4_000)
    daemon = spawn(str(root), "--rescan-interval", "0.5", "--reclaim-workers", "4")
    daemon.wait_event("ready")
    publish_marker(managed, 2)
    reclaim = _reclaim_threads(daemon.pid, at_least=5)  # the reclaim thread and 4 workers
    _check_threads(daemon.pid, set(reclaim))
    deleted = daemon.wait_event("deleted", step=1, timeout_s=120)
    assert deleted["files"] >= 8 * 4_000
    assert not daemon.named("priority_not_lowered")
