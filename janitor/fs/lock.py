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
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from janitor import protocol
from janitor.fs import reserved

_REFUSE = "remove it by hand (it holds only the holder's record)"


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

    def still_held(self, dir_fd: int) -> bool:
        """Whether `.janitor.lock` still names the file this lock holds.

        An flock lives on an inode, not on a name: if the file is removed or replaced (by hand,
        or by a cleanup script), a second janitor would create a new file and lock that one too,
        and two deleters would run (invariant 8). The holder checks before deleting.
        """
        return self.fd >= 0 and reserved.still_named(dir_fd, protocol.LOCK_FILE, self.fd)

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
    deadline = time.monotonic() + wait_s
    while True:
        fd = _open_verified(dir_fd, os.O_RDWR | os.O_CREAT)
        try:
            _lock_exclusive(fd, path, deadline)
            if reserved.still_named(dir_fd, protocol.LOCK_FILE, fd):
                _write_holder(fd, policy)
                return DirectoryLock(fd)
        except BaseException:
            os.close(fd)
            raise
        # The file was removed or replaced between our open and our flock (its last holder's
        # cleanup, or a hand): the lock is on a dead inode. Open the name again.
        os.close(fd)
        if time.monotonic() >= deadline:
            raise LockHeldError(path, None)


def _lock_exclusive(fd: int, path: str, deadline: float) -> None:
    """flock(LOCK_EX) without blocking on another janitor; a brief `status` is waited for."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if _held_exclusively(fd) or time.monotonic() >= deadline:
                raise LockHeldError(path, _current_holder(fd)) from None
            time.sleep(0.02)  # a status check holds it for microseconds


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


def _open_verified(dir_fd: int, flags: int) -> int:
    """Open the lock file and check it is a regular file of its own on the directory's mount.

    A hard link to a file outside the tree would otherwise be truncated and overwritten with the
    holder record, and a FIFO would hang the opener: both are refused (UnsafeObjectError).
    """
    try:
        fd = reserved.open_reserved(dir_fd, protocol.LOCK_FILE, flags, 0o644)
    except OSError as exc:
        raise reserved.open_error(exc, protocol.LOCK_FILE, _REFUSE) from None
    try:
        reserved.check_file(fd, protocol.LOCK_FILE, reserved.mount_id(dir_fd), action=_REFUSE)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    flock released at once. A lock file that is not a plain file of its own raises
    UnsafeObjectError (never a hang on a FIFO); an absent one means no holder.
    """
    try:
        fd = _open_verified(dir_fd, os.O_RDONLY)
    except FileNotFoundError:
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
