"""Back-pressure for the trainer: wait before a save until the disk has room for the step.

The janitor frees space only below the consumer's `LOADED_STEP`; a stalled consumer therefore
stalls deletion, and a trainer that keeps saving fills the disk and dies with ENOSPC mid-step.
`wait_for_headroom` turns that crash into a wait with a reason in the log: it polls
os.statvfs (f_bavail * f_frsize, what an unprivileged writer may use) until the filesystem has
room for the next step plus a reserve, and raises HeadroomTimeout (an OSError with errno ENOSPC)
if that does not happen in time. It never deletes anything itself.
"""

from __future__ import annotations

import errno
import logging
import math
import operator
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from janitor import protocol

from . import _fs
from ._checks import check_directory, check_file_name

logger = logging.getLogger("trainer_hooks")

MIB = 1024 * 1024
# Default reserve: 5% of the filesystem, at least 64 MiB, but never more than 10% of it (a small
# filesystem) nor more than 32 GiB (a petabyte parallel filesystem would otherwise keep 50 TB).
RESERVE_FRACTION = 0.05
RESERVE_MIN_BYTES = 64 * MIB
RESERVE_MAX_FRACTION = 0.10
RESERVE_MAX_BYTES = 32 * 1024 * MIB
# The forecast is the largest of this many newest complete steps (a step's size may vary).
FORECAST_STEPS = 3
# While waiting, a reminder is logged at most this often.
LOG_EVERY_S = 30.0

Log = Callable[[str], object]


class HeadroomTimeout(OSError):  # noqa: N818  # the name the API promises
    """The filesystem did not get room for the next step in time (errno ENOSPC)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def wait_for_headroom(directory: str | os.PathLike[str], need_bytes: int | None = None, *,
                      reserve_bytes: int | None = None, timeout: float = 600.0,
                      poll_s: float = 0.5, log: Log | None = None,
                      complete_marker: str = protocol.DEFAULT_COMPLETE_MARKER) -> int:
    """Block until the filesystem of `directory` has `need_bytes` + `reserve_bytes` available.

    Returns the available bytes (f_bavail * f_frsize) when it proceeds. `need_bytes=None`
    forecasts the next step as the largest of the newest 3 complete `step_N` directories
    (allocated blocks, not following symlinks, not crossing into other filesystems); 0 when
    there is none. `reserve_bytes=None` is default_reserve() of the filesystem. `timeout` is in
    seconds (math.inf waits forever); on expiry HeadroomTimeout (errno ENOSPC) is raised.
    While waiting it logs why through `log` (default: INFO on the "trainer_hooks" logger),
    once when the wait begins and then at most every 30 s.
    """
    root = check_directory(directory)
    need = None if need_bytes is None else check_bytes(need_bytes, "need_bytes")
    reserve = None if reserve_bytes is None else check_bytes(reserve_bytes, "reserve_bytes")
    limit = check_timeout(timeout)
    interval = _check_poll(poll_s)
    marker = check_file_name(complete_marker, "complete_marker")
    if log is not None and not callable(log):
        raise TypeError(f"log must be a callable taking one str, got {type(log).__name__}")
    say: Log = logger.info if log is None else log

    if need is None:
        need = forecast_step_bytes(root, marker)
    if reserve is None:
        reserve = default_reserve(_total_bytes(root))
    started = time.monotonic()
    deadline = started + limit
    last_said: float | None = None
    while True:
        available = available_bytes(root)
        if available >= need + reserve:
            if last_said is not None:
                say(f"headroom in {str(root)!r}: {_size(available)} available, proceeding "
                    f"after {time.monotonic() - started:.1f} s")
            return available
        now = time.monotonic()
        waited = now - started
        if now >= deadline:
            raise HeadroomTimeout(
                f"no room for the next step in {str(root)!r} after waiting {waited:.1f} s: "
                f"{_size(available)} available, {_size(need)} needed + {_size(reserve)} reserve "
                "(is the consumer stalled? the janitor frees only below its LOADED_STEP)")
        if last_said is None or now - last_said >= LOG_EVERY_S:
            say(f"waiting for headroom in {str(root)!r}: {_size(available)} available, "
                f"{_size(need)} needed + {_size(reserve)} reserve, waited {waited:.1f} s; the "
                "janitor frees space only below the consumer's loaded step (LOADED_STEP), so a "
                "stalled consumer is the usual cause")
            last_said = now
        time.sleep(min(interval, deadline - now))


def available_bytes(directory: str | os.PathLike[str]) -> int:
    """What an unprivileged writer may still use on the filesystem of `directory`."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def default_reserve(total_bytes: int) -> int:
    """The reserve kept free by default: 5% of the filesystem, at least 64 MiB, at most 10% of
    it and at most 32 GiB. Room for logs, the janitor's trash bookkeeping and a step that came
    out larger than its forecast."""
    reserve = max(int(total_bytes * RESERVE_FRACTION), RESERVE_MIN_BYTES)
    return min(reserve, int(total_bytes * RESERVE_MAX_FRACTION), RESERVE_MAX_BYTES)


def forecast_step_bytes(directory: str | os.PathLike[str],
                        complete_marker: str = protocol.DEFAULT_COMPLETE_MARKER) -> int:
    """The largest size of the newest 3 complete steps in `directory`; 0 if there is none.

    A step vanishing while it is measured (the janitor deleting it) is skipped.
    """
    root = check_directory(directory)
    marker = check_file_name(complete_marker, "complete_marker")
    parent_fd = _fs.open_directory(root)
    try:
        sizes: list[int] = []
        for number in _fs.step_numbers_newest_first(parent_fd):
            size = _complete_step_bytes(protocol.step_name(number), parent_fd, marker)
            if size is not None:
                sizes.append(size)
                if len(sizes) == FORECAST_STEPS:
                    break
        return max(sizes, default=0)
    finally:
        os.close(parent_fd)


def _complete_step_bytes(name: str, parent_fd: int, marker: str) -> int | None:
    """Allocated bytes of the complete step `name`, or None if it is incomplete or gone."""
    try:
        fd = os.open(name, _fs.DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return None  # gone, or swapped for a symlink since the scan
    try:
        if not _fs.is_regular_file(marker, fd):
            return None
        st = os.fstat(fd)
        return _tree_bytes(fd, st.st_dev, {(st.st_dev, st.st_ino)}) + st.st_blocks * 512
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def _tree_bytes(dir_fd: int, device: int, seen: set[tuple[int, int]]) -> int:
    """st_blocks * 512 of everything below `dir_fd` on `device`, each inode counted once."""
    total = 0
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_dev != device or (st.st_dev, st.st_ino) in seen:
                continue  # a mount inside the step, or a hard link already counted
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry.name, _fs.DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    total += _tree_bytes(sub, device, seen)
                finally:
                    os.close(sub)
    return total


def _total_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_blocks * st.f_frsize


def check_bytes(value: object, what: str) -> int:
    """Return `value` as a non-negative int number of bytes, else raise TypeError/ValueError."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be a non-negative int number of bytes, got {value!r} "
                        f"({type(value).__name__})")
    number = operator.index(value)  # type: ignore[arg-type]  # guarded by the __index__ check
    if number < 0:
        raise ValueError(f"{what} must be a non-negative int number of bytes, got {number}")
    return number


def check_timeout(value: object, what: str = "timeout") -> float:
    """Return `value` as seconds > 0 (math.inf allowed: wait forever), else raise."""
    seconds = _number(value, what)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be a number of seconds > 0 (math.inf: wait forever), "
                         f"got {value!r}")
    return seconds


def _check_poll(value: object) -> float:
    seconds = _number(value, "poll_s")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"poll_s must be a finite number of seconds > 0, got {value!r}")
    return seconds


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {value!r} "
                        f"({type(value).__name__})")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float: longer than anyone waits
        return math.inf if value > 0 else -math.inf


def _size(n: int) -> str:
    """Bytes for a log line: exact below 1 MiB, else MiB with two decimals."""
    return f"{n} B" if n < MIB else f"{n / MIB:.2f} MiB"
