"""An in-memory index of one managed directory, kept current from the names events report.

No I/O here: the daemon reads one child at a time (`fs.scan.classify`) and `put`s what it saw.
The index keeps the step numbers ordered, so the facts every decision reads (`policy.Context`:
newest step, newest complete steps, the loaded step) cost O(keep_last + consumers), and the
entries that can be doomed are found by bisection: with a gate at L, only steps below L that are
not `--interval-to-keep` multiples, plus the staging directories. So a marker moving from L to L'
visits the steps in [L, L') and the few survivors below L, not the thousands of kept multiples.

The index never licenses a deletion by itself: every candidate is read again from disk before
it is decided, and every doomed step is verified through its fd right before its rename. A full
rescan (start, timer, overflow) checks it name by name (`check`), and what differs is reported.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass

from janitor import protocol
from janitor.model import TRASH, Consumer, Entry, Foreign, Item, Pointer, Snapshot, Trash
from janitor.policy import Context, Policy, context_of, pointer_facts, progress_of
from janitor.retention import NO_SOFT_KEEPS, SoftKeeps, soft_keeps

# How many of the newest incomplete steps each pass reads again (see `watch_list`).
WATCHED_INCOMPLETE = 16


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A name where the index and a full rescan disagreed, and how."""

    name: str
    indexed: str
    scanned: str


def _kind(item: Item) -> str:
    """What a mismatch report says an item is: enough to see which event was missed."""
    if item is None:
        return "absent"
    if isinstance(item, Entry):
        what = "staging" if item.staging else "step"
        return f"{what} (ino {item.ino})"
    if isinstance(item, Foreign):
        return "foreign"
    if isinstance(item, Consumer):
        return "marker"
    if isinstance(item, Pointer):
        return "tracker"
    return "trash"


def _same(a: Item, b: Item) -> bool:
    """Whether two views of one name are the same object, as far as events tell. A step's
    completion and times may change with no event in its parent (a file written inside it),
    so they are not compared: the index refreshes them before they decide anything."""
    if isinstance(a, Entry) and isinstance(b, Entry):
        return (a.number, a.dev, a.ino) == (b.number, b.dev, b.ino)
    if isinstance(a, Foreign) and isinstance(b, Foreign):
        return True
    if isinstance(a, Consumer) and isinstance(b, Consumer):
        return True
    if isinstance(a, Pointer) and isinstance(b, Pointer):
        return True
    return type(a) is type(b)


class _Sorted:
    """A set of ints kept as a sorted list, with O(log n) search. Adds append and the list is
    sorted when next read, so a build from an unordered listing costs one sort, not n inserts;
    afterwards new steps arrive at the top, where an append keeps it sorted."""

    __slots__ = ("_unsorted", "_values")

    def __init__(self) -> None:
        self._values: list[int] = []
        self._unsorted = False

    @property
    def values(self) -> list[int]:
        if self._unsorted:
            self._values = sorted(set(self._values))
            self._unsorted = False
        return self._values

    def add(self, value: int) -> None:
        values = self._values
        if values and value <= values[-1]:
            self._unsorted = True
        values.append(value)

    def discard(self, value: int) -> None:
        values = self.values
        at = bisect.bisect_left(values, value)
        if at < len(values) and values[at] == value:
            del values[at]

    def below(self, limit: int) -> list[int]:
        values = self.values
        return values[: bisect.bisect_left(values, limit)]

    def above(self, limit: int) -> list[int]:
        values = self.values
        return values[bisect.bisect_right(values, limit):]

    def last(self) -> int | None:
        values = self.values
        return values[-1] if values else None

    def __len__(self) -> int:
        return len(self.values)


class DirectoryIndex:
    """What one managed directory holds, by name, with its step numbers kept in order."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.entries: dict[str, Entry] = {}  # steps and staging directories
        self.foreign: dict[str, Foreign] = {}
        self.consumers: dict[str, Consumer] = {}  # by file name
        self.pointers: dict[str, Pointer] = {}  # a layout's tracker files, by file name
        self.trash_present = False
        self._by_number: dict[int, str] = {}
        self._steps = _Sorted()  # every step number
        self._open = _Sorted()  # the step numbers that are not interval multiples
        self._complete = _Sorted()
        self._ready = _Sorted()  # steps holding a `.receiver_ready`
        self._staging: set[str] = set()
        # Dependency edges (janitor.dependencies): who names each step, by number. A Graph for
        # policy.settle, kept as steps are put, so a pass asks only about its candidates.
        self._dependents: dict[int, set[int]] = {}
        # Steps put since the last `take_new_dependents`, naming dependencies (reported once).
        self._new_dependents: set[int] = set()
        # Names put from a quick listing (`fs.scan.scan_items`): a step's device, inode and
        # change time there are the listing's guesses until the name is read in full.
        self.unverified: set[str] = set()
        self.seq = 0  # bumped by every put: a rescan started at seq s is older than later puts
        # Bumped when a step comes or goes or a complete step's flag or time changes: the soft
        # rules' result is kept until then (or until a step leaves the --keep-within window).
        self._steps_changed = 0
        self._soft: tuple[tuple[int, int | None], SoftKeeps] | None = None
        self._touched: dict[str, int] = {}

    # ---- building -----------------------------------------------------------------------

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, policy: Policy) -> DirectoryIndex:
        index = cls(policy)
        for entry in snapshot.entries:
            index.put(entry.name, entry)
        for foreign in snapshot.foreign:
            index.put(foreign.name, foreign)
        for consumer in snapshot.consumers:
            index.put(consumer.filename, consumer)
        for pointer in snapshot.pointers:
            if pointer.complete_through:  # a tracker; a best pointer is read by each pass
                index.put(pointer.filename, pointer)
        index.trash_present = snapshot.trash_present
        return index

    def get(self, name: str) -> Item:
        if name in self.entries:
            return self.entries[name]
        if name in self.foreign:
            return self.foreign[name]
        if name in self.consumers:
            return self.consumers[name]
        if name in self.pointers:
            return self.pointers[name]
        return TRASH if name == protocol.TRASH_DIR and self.trash_present else None

    def put(self, name: str, item: Item, *, verified: bool = True) -> None:
        """Record what `name` is now (None: gone); `verified` False for a quick listing's guess."""
        self.seq += 1
        self._touched[name] = self.seq
        if verified:
            self.unverified.discard(name)
        elif isinstance(item, Entry):
            self.unverified.add(name)
        old = self.entries.get(name)
        if (old is not None and isinstance(item, Entry) and item.number is not None
                and item.number == old.number):
            self._update_step(old, item)  # the common case: a step read again
            return
        self._remove(name)
        if not verified and isinstance(item, Entry):
            self.unverified.add(name)  # _remove forgot it
        if isinstance(item, Entry):
            self._add_entry(item)
        elif isinstance(item, Foreign):
            self.foreign[name] = item
        elif isinstance(item, Consumer):
            self.consumers[name] = item
        elif isinstance(item, Pointer):
            self.pointers[name] = item
        elif isinstance(item, Trash):
            self.trash_present = True

    def _add_entry(self, entry: Entry) -> None:
        number = entry.number
        if number is None:
            self.entries[entry.name] = entry
            self._staging.add(entry.name)
            return
        other = self._by_number.get(number)
        if other is not None:
            # Canonical names are unique per number (`step_5` only): a second name for one
            # number cannot come from the protocol's parser. Keep neither as deletable.
            raise ValueError(f"two entries for step {number}: {other!r} and {entry.name!r}")
        self.entries[entry.name] = entry
        self._by_number[number] = entry.name
        self._steps.add(number)
        self._steps_changed += 1
        interval = self.policy.interval_to_keep
        if interval is None or number % interval != 0:
            self._open.add(number)
        if entry.complete:
            self._complete.add(number)
        if entry.receiver_ready_ns is not None:
            self._ready.add(number)
        self._link(number, entry.depends)

    def _link(self, number: int, depends: tuple[int, ...]) -> None:
        for dependency in depends:
            self._dependents.setdefault(dependency, set()).add(number)
        if depends:
            self._new_dependents.add(number)

    def _unlink(self, number: int, depends: tuple[int, ...]) -> None:
        for dependency in depends:
            named = self._dependents.get(dependency)
            if named is not None:
                named.discard(number)
                if not named:
                    del self._dependents[dependency]

    def _update_step(self, old: Entry, new: Entry) -> None:
        """A step read again under the same name and number: O(1) unless a flag flipped."""
        number = new.number
        assert number is not None
        self.entries[new.name] = new
        if old.complete != new.complete or (new.complete and old.changed_ns != new.changed_ns):
            self._steps_changed += 1
        if old.complete != new.complete:
            (self._complete.add if new.complete else self._complete.discard)(number)
        if (old.receiver_ready_ns is None) != (new.receiver_ready_ns is None):
            (self._ready.discard if new.receiver_ready_ns is None else self._ready.add)(number)
        if old.depends != new.depends:
            self._unlink(number, old.depends)
            self._link(number, new.depends)

    def _remove(self, name: str) -> None:
        if name in self.unverified:
            self.unverified.discard(name)
        entry = self.entries.pop(name, None)
        if entry is not None:
            if entry.number is None:
                self._staging.discard(name)
            else:
                number = entry.number
                del self._by_number[number]
                self._unlink(number, entry.depends)
                self._steps_changed += 1
                for ordered in (self._steps, self._open, self._complete, self._ready):
                    ordered.discard(number)
            return
        if self.foreign.pop(name, None) is not None:
            return
        if self.consumers.pop(name, None) is not None:
            return
        if self.pointers.pop(name, None) is not None:
            return
        if name == protocol.TRASH_DIR:
            self.trash_present = False

    # ---- reading ------------------------------------------------------------------------

    def names(self) -> Iterator[str]:
        yield from self.entries
        yield from self.foreign
        yield from self.consumers
        yield from self.pointers
        if self.trash_present:
            yield protocol.TRASH_DIR

    def step(self, number: int) -> Entry:
        return self.entries[self._by_number[number]]

    @property
    def step_numbers(self) -> Container[int]:
        """Membership of step numbers (a view: no copy)."""
        return self._by_number.keys()

    @property
    def step_count(self) -> int:
        return len(self._steps)

    def context(self, scanned_ns: int, best: Pointer | None = None) -> Context:
        """The same Context `policy.plan` would derive from a full snapshot of this index (and
        `best`, the best pointer a pass read from the newest complete step, if any)."""
        policy = self.policy
        newest = self._steps.last()
        ready = self._ready.last()
        consumers = [self.consumers[k] for k in sorted(self.consumers)]
        progress = progress_of(consumers, newest,
                               None if ready is None else self.step(ready), policy)
        pointers = [self.pointers[k] for k in sorted(self.pointers)]
        facts = pointer_facts(pointers + ([best] if best is not None else []),
                              self._by_number.__contains__)
        return context_of(progress, self._top_complete(facts.complete_through), scanned_ns,
                          policy, facts, self._soft_keeps(facts.complete_through, scanned_ns))

    def _soft_keeps(self, through: int | None, scanned_ns: int) -> SoftKeeps:
        """The soft rules' keeps, computed again only when the steps changed (or the
        --keep-within window moved past one): a pass costs what they keep, at most."""
        rules = self.policy.soft
        if not rules.any:
            return NO_SOFT_KEEPS
        key = (self._steps_changed, through)
        cached = self._soft
        if cached is not None and cached[0] == key and (
                cached[1].valid_until_ns is None or scanned_ns < cached[1].valid_until_ns):
            return cached[1]
        result = soft_keeps(self._complete_newest_first(through), rules, scanned_ns)
        self._soft = (key, result)
        return result

    def _complete_newest_first(self, through: int | None) -> Iterator[tuple[int, int]]:
        """(number, completion time) of the complete steps, newest first, lazily."""
        complete = self._complete.values
        if through is None:
            numbers: Iterable[int] = reversed(complete)
        else:
            steps = self._steps.values
            below = steps[: bisect.bisect_right(steps, through)]
            numbers = sorted(set(complete) | set(below), reverse=True)
        for number in numbers:
            yield number, self.step(number).changed_ns

    def _top_complete(self, through: int | None) -> list[int]:
        """The `keep_last` newest complete steps, newest first: those holding a completion
        file, and with a tracker every step at or below it (found by bisection)."""
        keep = self.policy.keep_last
        complete = self._complete.values
        top = complete[len(complete) - min(keep, len(complete)):]
        if through is not None:
            steps = self._steps.values
            end = bisect.bisect_right(steps, through)
            top = sorted(set(top) | set(steps[max(0, end - keep):end]))[-keep:]
        return top[::-1]

    def candidates(self, context: Context) -> list[Entry]:
        """Every entry `policy.decide` could doom under `context` (a superset): the staging
        directories, and the steps that are not interval multiples below the loaded step (all of
        them without a gate). Nothing while the directory is halted."""
        if context.progress.problem is not None:
            return []
        found = [self.entries[name] for name in sorted(self._staging)]
        loaded = context.progress.loaded_step
        if not self.policy.gated:
            numbers = self._open.values
        elif loaded is None:
            numbers = []
        else:
            numbers = self._open.below(loaded)
        found.extend(self.entries[self._by_number[n]] for n in numbers)
        return found

    def watch_list(self, context: Context) -> list[str]:
        """The names whose state decides the Context, read again before each decision: the
        consumer markers, the `keep_last` newest complete steps (a completion marker removed
        inside a step sends its parent no event), the newest incomplete steps above the oldest
        of those (one may have completed in place), the newest step and the newest sentinel."""
        names = list(self.consumers) + list(self.pointers)
        complete = self._complete.values
        top = complete[len(complete) - min(self.policy.keep_last, len(complete)):]
        floor = top[0] if top else -1
        completed = set(top)
        names.extend(self._by_number[n] for n in top)
        # The newest few only: a step completed in place that the index still thinks incomplete
        # only keeps more (it cannot be the newest complete the plan protects), and the rescan
        # catches it up; a tree of thousands of incomplete steps must not cost a read of each.
        pending = [n for n in self._steps.above(floor)[-4 * WATCHED_INCOMPLETE:]
                   if n not in completed]
        names.extend(self._by_number[n] for n in pending[-WATCHED_INCOMPLETE:])
        for number in (self._ready.last(),):
            if number is not None:
                names.append(self._by_number[number])
        return list(dict.fromkeys(names))

    # ---- dependencies (a janitor.dependencies.Graph) --------------------------------------

    @property
    def has_edges(self) -> bool:
        return bool(self._dependents)

    def depends(self, step: int) -> tuple[int, ...]:
        name = self._by_number.get(step)
        return () if name is None else self.entries[name].depends

    def dependents(self, step: int) -> Iterable[int]:
        return self._dependents.get(step, ())

    def present(self, step: int) -> bool:
        return step in self._by_number

    def take_new_dependents(self) -> list[int]:
        """The steps put since the last call that name a dependency (what a report of missing
        dependencies and cycles looks at: only what changed)."""
        taken = sorted(n for n in self._new_dependents if n in self._by_number)
        self._new_dependents.clear()
        return taken

    def steps_above(self, number: int | None) -> list[int]:
        """The step numbers above `number` (all of them for None), in order."""
        return list(self._steps.values) if number is None else self._steps.above(number)

    def snapshot(self, path: str, dev: int, scanned_ns: int,
                 entries: Iterable[Entry] | None = None,
                 foreign: Iterable[Foreign] | None = None) -> Snapshot:
        """A Snapshot of the given entries (all of them by default) with every consumer."""
        chosen = self.entries.values() if entries is None else entries
        ordered = sorted(chosen, key=lambda e: (e.number is None, e.number or 0, e.name))
        strangers = self.foreign.values() if foreign is None else foreign
        return Snapshot(path, dev, scanned_ns, tuple(ordered),
                        tuple(sorted(strangers, key=lambda f: f.name)),
                        tuple(self.consumers[k] for k in sorted(self.consumers)),
                        self.trash_present,
                        tuple(self.pointers[k] for k in sorted(self.pointers)))

    # ---- checking -----------------------------------------------------------------------

    def touched_since(self, name: str, seq: int) -> bool:
        """Whether `name` was put after the index's seq was `seq` (fresher than a rescan that
        began then)."""
        return self._touched.get(name, 0) > seq

    def check(self, name: str, item: Item) -> Mismatch | None:
        """Take a rescan's fresh view of `name`; say how the index disagreed about what the name
        is (a missed event), if it did. Drift in a step's completion or times is no mismatch:
        writes inside a step send its parent no event, and the index reads those again before
        they decide anything. The rescan's view wins either way."""
        mine = self.get(name)
        if mine is item:
            return None
        guessed = name in self.unverified and isinstance(mine, Entry) and \
            isinstance(item, Entry) and mine.number == item.number
        mismatch = None if guessed or _same(mine, item) else \
            Mismatch(name, _kind(mine), _kind(item))
        if mismatch is not None or mine != item or guessed:
            self.put(name, item)
        return mismatch

    def unlisted(self, listed: set[str], since_seq: int) -> list[str]:
        """The names the index holds that a listing taken when its seq was `since_seq` did not
        show, and that no put has refreshed since."""
        return [name for name in list(self.names())
                if name not in listed and not self.touched_since(name, since_seq)]

    def forget_untouched(self, since_seq: int) -> None:
        """Drop the bookkeeping of names gone before `since_seq`, once it holds twice as many
        names as the directory: it stays the size of the tree, not of its history, at a cost
        spread over the puts that grew it."""
        if len(self._touched) <= 2 * (len(self.entries) + len(self.foreign)) + 1024:
            return
        for name in [n for n, seq in self._touched.items() if seq <= since_seq
                     and self.get(n) is None]:
            del self._touched[name]
