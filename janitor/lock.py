"""One deleter per managed directory (invariant 8): an flock on `.janitor.lock` naming its holder.

The lock file records host, pid, start time, command and policy, so the line a second instance
prints names the first. The kernel releases the flock when its holder dies, so a stale file from a
killed janitor never blocks the next one. A dry run takes no lock and writes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from janitor import protocol

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class LockHeldError(Exception):
    """Another janitor holds the lock of a managed directory."""

    def __init__(self, path: str, holder: dict[str, object] | None) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path}: another janitor holds {protocol.LOCK_FILE} "
                         f"({describe_holder(holder)}); stop it first, or run with --dry-run")


def describe_holder(holder: dict[str, object] | None) -> str:
    """A short 'pid 123 on host since 2026-...' for messages."""
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}")


@dataclass(slots=True)
class DirectoryLock:
    """A held lock; release() or process exit frees it."""

    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def acquire(dir_fd: int, path: str, policy: dict[str, object],
            wait_s: float = 1.0) -> DirectoryLock:
    """Take the managed directory's lock, waiting up to `wait_s` for a brief holder (a `status`).

    Another janitor (an exclusive holder) is refused at once, never waited for: two janitors
    started together must not both run, one after the other, as if nothing had happened.
    """
    fd = os.open(protocol.LOCK_FILE, _OPEN_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        _check_regular(fd)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _held_exclusively(fd) or time.monotonic() >= deadline:
                    raise LockHeldError(path, _current_holder(fd)) from None
                time.sleep(0.02)  # a status check holds it for microseconds
        _write_holder(fd, policy)
    except BaseException:
        os.close(fd)
        raise
    return DirectoryLock(fd)


def _held_exclusively(fd: int) -> bool:
    """Whether another janitor holds the lock (exclusive), rather than a `status` (shared)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _current_holder(fd: int, wait_s: float = 1.0) -> dict[str, object] | None:
    """The holder the lock file names, waiting briefly while it is still being written.

    A new holder truncates and rewrites the file just after taking the lock, so for an instant it
    is empty or still names the previous holder, which has exited.
    """
    deadline = time.monotonic() + wait_s
    while True:
        holder = _read_holder(fd)
        if _plausible(holder) or time.monotonic() >= deadline:
            return holder
        time.sleep(0.005)


def _plausible(holder: dict[str, object] | None) -> bool:
    """False for no holder, or one on this host whose process no longer exists."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another host's pid cannot be checked from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _check_regular(fd: int) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(f"{protocol.LOCK_FILE} is not a regular file; remove it by hand")


def _write_holder(fd: int, policy: dict[str, object]) -> None:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv[:1] + sys.argv[1:2]),
        "policy": policy,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> dict[str, object] | None:
    try:
        data = os.pread(fd, 65536, 0)
        holder = json.loads(data)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def inspect(dir_fd: int) -> tuple[bool, dict[str, object] | None]:
    """Whether a janitor holds this directory's lock now, and what its lock file says.

    Read-only: opens the file without creating it and tests the lock with a shared, non-blocking
    flock released at once.
    """
    try:
        fd = os.open(protocol.LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return False, None
    try:
        holder = _read_holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, holder
    finally:
        os.close(fd)
