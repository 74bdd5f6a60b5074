"""What the loop must look at next: written by watcher threads, the poll and the timer, taken by
the loop. Thread-safe; it also owns the pipe that wakes the loop (signals write to it too).

For a managed directory it records how much to look at: the children an event named (the
common case: a pass reads only those again), "relist" (a poll saw the directory change but
cannot say which names) or "full" (events may have been lost: a full scan).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Want:
    """How much of one managed directory to look at again."""

    names: set[str] = field(default_factory=set)
    relist: bool = False
    full: bool = False

    def merge(self, other: Want) -> None:
        self.names |= other.names
        self.relist = self.relist or other.relist
        self.full = self.full or other.full


@dataclass(slots=True)
class Pending:
    """Everything marked since the loop last took it."""

    dirty: dict[str, Want]
    relook: set[str]  # directories on the way down that changed
    rediscover: bool
    overflowed: bool


class DirtySet:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: dict[str, Want] = {}
        self._relook: set[str] = set()
        self._rediscover = False
        self._overflowed = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ---- marking (any thread) ------------------------------------------------------------

    def child(self, path: str, name: str | None) -> None:
        """An event named `name` in the managed directory `path` (None: it could not say)."""
        with self._lock:
            want = self._dirty.setdefault(path, Want())
            if name is None:
                want.relist = True
            else:
                want.names.add(name)
        self.wake()

    def touch(self, paths: Iterable[str]) -> None:
        """A pass that reads again only what the decision rests on (after a rescan, which
        corrected the index; partial steps whose grace ran out are swept then)."""
        self._mark(paths, Want())

    def relist(self, paths: Iterable[str]) -> None:
        self._mark(paths, Want(relist=True))

    def full(self, paths: Iterable[str]) -> None:
        self._mark(paths, Want(full=True))

    def _mark(self, paths: Iterable[str], want: Want) -> None:
        with self._lock:
            for path in paths:
                self._dirty.setdefault(path, Want()).merge(want)
        self.wake()

    def relook(self, paths: Iterable[str]) -> None:
        with self._lock:
            self._relook.update(paths)
        self.wake()

    def rediscover(self) -> None:
        with self._lock:
            self._rediscover = True
        self.wake()

    def overflow(self) -> None:
        with self._lock:
            self._overflowed = True
        self.wake()

    # ---- the loop ------------------------------------------------------------------------

    def take(self) -> Pending:
        with self._lock:
            pending = Pending(self._dirty, self._relook, self._rediscover, self._overflowed)
            self._dirty, self._relook = {}, set()
            self._rediscover = self._overflowed = False
        return pending

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already means "wake up"
            os.write(self.wake_w, b"\0")

    def wait(self, timeout: float) -> None:
        """Sleep until woken or `timeout` seconds passed; then empty the pipe."""
        with contextlib.suppress(InterruptedError):
            select.select([self.wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)
