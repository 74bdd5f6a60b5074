"""How many bytes each managed directory's steps hold: the `directory_bytes{stream}` gauge.

Measured off the reaction path. A step is sized once by its inode (a complete step does not
change; one still being written is sized again whenever a pass reads it changed or complete, and
at each refresh, until it is complete), in slices
of at most a few milliseconds per loop iteration, so a directory of 10,000 steps costs one walk of
its tree after adoption and then only its new steps. A step the loop renames into the trash
leaves the total at once. The daemon runs this when metrics are served or a budget needs the
sizes (--max-bytes; --min-free under --pressure relieve, whose relief and per-reason split of a
directory under pressure read each step's size here instead of measuring it again).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from janitor.fs.sizes import tree_size
from janitor.index import DirectoryIndex
from janitor.model import Entry

# A directory's total, published by its managed path.
Publish = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class _Sized:
    ino: int
    complete: bool
    changed_ns: int
    bytes: int

    def stale(self, entry: Entry) -> bool:
        """Whether the index's reading of the step says this size is out of date: another
        inode, or a step that was incomplete when sized and has since completed or changed."""
        return self.ino != entry.ino or (not self.complete and (
            entry.complete or entry.changed_ns != self.changed_ns))


class Footprint:
    """Per managed directory: the size of each step and staging directory, and their total."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._sizes: dict[str, dict[str, _Sized]] = {}
        self._totals: dict[str, int] = {}
        self._queue: deque[tuple[str, str]] = deque()
        self._queued: Counter[str] = Counter()  # queue entries by directory

    @property
    def pending(self) -> bool:
        """Whether steps wait to be sized (the loop then keeps coming back, like a rescan)."""
        return bool(self._queue)

    def pending_in(self, path: str) -> bool:
        """Whether steps of this directory wait to be sized (its total is not final yet)."""
        return self._queued[path] > 0

    def _enqueue(self, path: str, name: str) -> None:
        self._queue.append((path, name))
        self._queued[path] += 1

    def refresh(self, path: str, index: DirectoryIndex) -> None:
        """Compare with the index (after adoption and each rescan): queue what is new, replaced
        or still incomplete; drop what is gone. O(steps) dictionary work, no I/O."""
        sizes = self._sizes.setdefault(path, {})
        for name in [n for n in sizes if n not in index.entries]:
            self._drop(path, name)
        for name, entry in index.entries.items():
            known = sizes.get(name)
            if known is None or known.ino != entry.ino or not known.complete:
                self._enqueue(path, name)
        self._publish(path, self.total(path))

    def known(self, path: str) -> bool:
        return path in self._sizes

    def touch(self, path: str, names: Iterable[str], index: DirectoryIndex) -> None:
        """A pass read these names again: size the new, replaced, completed or still-growing
        steps among them, drop the gone. O(names), so a reaction costs the same whatever the
        directory keeps. The names are every name the pass read, not only its event's: a step
        completes with no event in its parent, and the pass reads it as the newest step."""
        sizes = self._sizes.get(path)
        if sizes is None:
            return
        gone = False
        for name in names:
            entry = index.entries.get(name)
            known = sizes.get(name)
            if entry is None:
                gone = gone or known is not None
                self._drop(path, name)
            elif known is None or known.stale(entry):
                self._enqueue(path, name)
        if gone:
            self._publish(path, self.total(path))

    def removed(self, path: str, names: Iterable[str]) -> None:
        """Steps renamed into the trash (or gone): out of the total now."""
        sizes = self._sizes.get(path)
        if sizes is None:
            return
        for name in names:
            self._drop(path, name)
        self._publish(path, self.total(path))

    def forget(self, path: str) -> None:
        """A directory no longer held."""
        self._sizes.pop(path, None)
        self._totals.pop(path, None)

    def size_of(self, path: str, name: str) -> int:
        """The measured size of one step (0 while not measured yet)."""
        return self.measured(path, name) or 0

    def measured(self, path: str, name: str) -> int | None:
        """The measured size of one step, None while it was never measured."""
        sized = self._sizes.get(path, {}).get(name)
        return None if sized is None else sized.bytes

    def total(self, path: str) -> int:
        return self._totals.get(path, 0)

    def _drop(self, path: str, name: str) -> None:
        sized = self._sizes[path].pop(name, None)
        if sized is not None:
            self._totals[path] -= sized.bytes

    def _put(self, path: str, name: str, sized: _Sized) -> None:
        self._drop(path, name)
        self._sizes[path][name] = sized
        self._totals[path] = self._totals.get(path, 0) + sized.bytes

    def advance(self, indexes: Callable[[str], tuple[int, DirectoryIndex] | None],
                budget_s: float) -> None:
        """Size queued steps for about `budget_s`. `indexes(path)` gives a held directory's fd
        and index (None once released). A step that vanished or cannot be read counts 0 until
        the next refresh looks again."""
        deadline = time.monotonic() + budget_s
        changed: set[str] = set()
        while self._queue and time.monotonic() < deadline:
            path, name = self._queue.popleft()
            self._queued[path] -= 1
            if not self._queued[path]:
                del self._queued[path]
            held = indexes(path)
            sizes = self._sizes.get(path)
            if held is None or sizes is None:
                continue
            fd, index = held
            entry = index.entries.get(name)
            if entry is None:
                self._drop(path, name)
                changed.add(path)
                continue
            known = sizes.get(name)
            if known is not None and known.ino == entry.ino and known.complete:
                continue  # queued twice: already sized
            try:
                size = tree_size(fd, name)
            except OSError:
                size = 0
            self._put(path, name, _Sized(entry.ino, entry.complete, entry.changed_ns, size))
            changed.add(path)
        for path in changed:
            self._publish(path, self.total(path))
