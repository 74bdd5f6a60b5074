"""Idle CPU and I/O priority for the threads that reclaim trash, never for the whole daemon.

Unlinking a 300 GB step can wait; the trainer cannot, and neither can the daemon's reactions
(scan, plan, rename on the loop thread). So each reclaim thread lowers only itself: CPU policy
SCHED_IDLE (nice 19 where that is refused) and the idle I/O class. Linux applies both per thread
when given the thread's own id, and a thread created afterwards inherits them. A process-wide
setting (systemd's Nice= or IOSchedulingClass=, `nice`) would slow the reactions too.

Lowering needs no privilege. A sandbox that refuses it (seccomp, a container runtime) only costs
the priority: reclaim goes on at normal priority, and one warning per process says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from dataclasses import dataclass

import structlog

log = structlog.get_logger("janitor.priority")

IOPRIO_WHO_PROCESS = 1  # with a thread id: that thread alone
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13
IDLE_NICE = 19
# (ioprio_set, ioprio_get) by machine; asm-generic numbers for the newer architectures.
IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31), "riscv64": (30, 31)}
_KERNEL_NAME_MAX = 15  # TASK_COMM_LEN - 1

_warned = threading.Event()


@dataclass(frozen=True, slots=True)
class Lowered:
    """What one call achieved: cpu "SCHED_IDLE", "nice 19" or "unchanged"; io "idle" or
    "unchanged"; and why, for whatever stayed unchanged."""

    cpu: str
    io: str
    why: tuple[str, ...] = ()


def idle_this_thread() -> Lowered:
    """Give the calling thread idle CPU and I/O priority; a refusal is logged, never raised."""
    tid = threading.get_native_id()
    why: list[str] = []
    cpu = _idle_cpu(tid, why)
    io = _idle_io(tid, why)
    lowered = Lowered(cpu, io, tuple(why))
    if why and not _warned.is_set():
        _warned.set()
        log.warning("priority_not_lowered", cpu=cpu, io=io, why="; ".join(why),
                    effect="reclaim goes on; what stayed unchanged competes with the trainer "
                           "at normal priority (logged once)")
    return lowered


def label_this_thread() -> None:
    """Show the thread's Python name to the kernel (`top -H`, `ps -L`, /proc/<pid>/task/*/comm),
    so the idle threads can be told from the loop. Best effort: the name is only a label."""
    name = threading.current_thread().name.encode()[:_KERNEL_NAME_MAX]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass


def _idle_cpu(tid: int, why: list[str]) -> str:
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except OSError as exc:
        why.append(f"SCHED_IDLE refused ({_words(exc.errno)})")
    except AttributeError:  # not Linux
        why.append("SCHED_IDLE unknown here")
    try:
        os.setpriority(os.PRIO_PROCESS, tid, IDLE_NICE)
        return f"nice {IDLE_NICE}"
    except OSError as exc:
        why.append(f"nice {IDLE_NICE} refused ({_words(exc.errno)})")
    return "unchanged"


def _idle_io(tid: int, why: list[str]) -> str:
    syscalls = IOPRIO_SYSCALLS.get(platform.machine())
    if syscalls is None:
        why.append(f"idle I/O class unknown on {platform.machine()}")
        return "unchanged"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
    except (OSError, AttributeError) as exc:  # no libc with syscall(): a static or odd build
        why.append(f"idle I/O class unavailable ({exc})")
        return "unchanged"
    value = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT
    if libc.syscall(ctypes.c_long(syscalls[0]), ctypes.c_int(IOPRIO_WHO_PROCESS),
                    ctypes.c_int(tid), ctypes.c_int(value)) == 0:
        return "idle"
    why.append(f"idle I/O class refused ({_words(ctypes.get_errno())})")
    return "unchanged"


def _words(number: int | None) -> str:
    """errno's name and meaning, e.g. 'EPERM, operation not permitted'."""
    if not number:
        return "no reason given"
    text = os.strerror(number)
    return f"{errno.errorcode.get(number, number)}, {text[:1].lower()}{text[1:]}"
