"""The daemon's reconcile of one managed directory, at a cost that follows the change.

A `TrackedDirectory` holds a ManagedDirectory (the lock, the fd, the one executor) and the
directory's index. A pass reads again only the names an event reported, the few names the
decision rests on (`DirectoryIndex.watch_list`) and the entries that could be doomed
(`DirectoryIndex.candidates`), then decides those with `policy.settle` and executes through the
same `ManagedDirectory.execute` a sweep uses. The steps a pass would delete are read in depth and
decided again (as in a full look), and each is verified through its fd right before its rename
(`fs.reaper.move_to_trash`): the index picks what to look at, never what may be deleted unseen.

The full scan stays as the safety net: at adoption, after an inotify overflow or a replaced root
(`full_pass`), and on the timer as a `Rescan` spread over many loop iterations, which reads every
name again and corrects the index, reporting what a missed event had left wrong.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from janitor import protocol
from janitor.dependencies import Note, notes
from janitor.fs.pointers import read_best
from janitor.fs.scan import classify, deepen, scan_items
from janitor.index import DirectoryIndex, Mismatch
from janitor.model import TRASH, Foreign, Item, Pointer, Snapshot
from janitor.ops.managed import ManagedDirectory, PassResult
from janitor.policy import Context, Decision, Plan, settle

# A rescan's mismatches are missed events only when the directory's own times show no entry was
# added, removed or renamed for this long before the rescan began (an event for a change just
# before it may still be on its way from the kernel).
QUIET_NS = 1_000_000_000
# Passes re-read the Context's names until they stop changing; in a tree that changes under the
# pass faster than it can be read, stop after this many rounds (the next event passes again).
CONTEXT_ROUNDS = 4


class TrackedDirectory:
    """One managed directory and its index, reconciled from the names that changed."""

    def __init__(self, managed: ManagedDirectory) -> None:
        self.managed = managed
        self.index = DirectoryIndex(managed.policy)
        self.mismatches = 0  # missed events found by rescans, over the daemon's life
        self.rescan: Rescan | None = None  # the timer's check, while it runs
        self._rescan_quiet_ns: int | None = None  # asked for and not begun
        # --pressure relieve: given the decisions and their context, the soft-kept steps to
        # delete (the daemon sets it from its footprint and budget); None: no relieving.
        self.relieve: Callable[[list[Decision], Context], frozenset[int]] | None = None
        # The names the last pass read fresh (its event's, what the decision rested on, the
        # candidates): what the daemon's per-step sizes compare against the index afterwards.
        self.last_read: frozenset[str] = frozenset()
        # What the last pass found wrong with the dependencies of the steps new to the index
        # (a dependency not here, a cycle): said once by the daemon's recorder.
        self.notes: list[Note] = []
        # The best pointer read from the newest complete step, by (name, inode, change time).
        self._best: tuple[tuple[str, int, int], Pointer | None] | None = None

    @property
    def path(self) -> str:
        return self.managed.path

    def close(self) -> None:
        if self.rescan is not None:
            self.rescan.close()
            self.rescan = None
        self._rescan_quiet_ns = None
        self.managed.close()

    def __enter__(self) -> TrackedDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, name: str) -> Item:
        managed = self.managed
        return classify(managed.fd, managed.dev, managed.mount_id, name, managed.options)

    # ---- passes ---------------------------------------------------------------------------

    def full_pass(self, stop: Callable[[], bool] | None = None) -> PassResult:
        """Read every name, rebuild the index from them, then decide and execute as any pass.

        The listing is the quick one (`scan_items`): a complete step costs one lookup of its
        marker; what a decision rests on is read in full by `_look`, as in every pass."""
        managed = self.managed
        scanned_ns = time.time_ns()
        index = DirectoryIndex(managed.policy)
        fresh: set[str] = set()
        foreign: list[Foreign] = []
        for name, item, verified in scan_items(managed.fd, managed.options):
            index.put(name, item, verified=verified)
            if verified:
                fresh.add(name)
            if isinstance(item, Foreign):
                foreign.append(item)
        self.index = index
        return self._decide_and_execute(scanned_ns, fresh, foreign, stop)

    def changed_pass(self, names: Iterable[str], stop: Callable[[], bool] | None = None, *,
                     skip_if_unchanged: bool = False) -> PassResult | None:
        """Read the named children again (an event named them), then decide and execute.

        With `skip_if_unchanged`, a pass whose names all read as the index already had them
        (the echo of our own rename into the trash, a hidden temporary file, the second and
        third events of one write) decides nothing and returns None: nothing the decision rests
        on sends no event, and what only time changes (a partial step's grace running out) is
        the timer's. A pass given no names always decides."""
        scanned_ns = time.time_ns()
        fresh: set[str] = set()
        foreign: list[Foreign] = []
        changed = False
        for name in names:
            item = self._read(name)
            changed = changed or item != self.index.get(name)
            self.index.put(name, item)
            fresh.add(name)
            if isinstance(item, Foreign):
                foreign.append(item)
        if skip_if_unchanged and fresh and not changed:
            return None
        return self._decide_and_execute(scanned_ns, fresh, foreign, stop)

    def relist_pass(self, stop: Callable[[], bool] | None = None) -> PassResult:
        """For a change without names (a poll saw the directory change): one listing, and the
        names that appeared or vanished since the index last heard of them are read again."""
        listed = set(os.listdir(self.managed.fd))
        known = set(self.index.names())
        result = self.changed_pass(sorted(listed ^ known), stop)
        assert result is not None
        return result

    def _decide_and_execute(self, scanned_ns: int, fresh: set[str], foreign: list[Foreign],
                            stop: Callable[[], bool] | None) -> PassResult:
        snapshot, decided = self._look(scanned_ns, fresh)
        self.last_read = frozenset(fresh)
        self.notes = notes(self.index.take_new_dependents(), self.index)
        snapshot = Snapshot(snapshot.path, snapshot.dev, snapshot.scanned_ns, snapshot.entries,
                            tuple(sorted(foreign, key=lambda f: f.name)), snapshot.consumers,
                            snapshot.trash_present, snapshot.pointers)
        result = self.managed.execute(snapshot, decided, stop=stop, sync=False)
        for trashed in result.trashed:
            self.index.put(trashed.entry.name, None)
        if result.trashed:
            self.index.put(protocol.TRASH_DIR, TRASH)
        return result

    def _look(self, scanned_ns: int, fresh: set[str]) -> tuple[Snapshot, Plan]:
        """The plan over the candidates, with the facts they rest on read fresh: the index's
        `look` (compare ManagedDirectory.look, which reads every name)."""
        index = self.index
        context = index.context(scanned_ns)
        for _ in range(CONTEXT_ROUNDS):
            stale = [n for n in index.watch_list(context) if n not in fresh]
            if not stale:
                break
            self._refresh(stale, fresh)
            context = index.context(scanned_ns)
        self._refresh([e.name for e in index.candidates(context) if e.name not in fresh], fresh)
        context = self._final_context(scanned_ns)
        candidates = index.candidates(context)
        policy = self.managed.policy
        # Every step that is not a candidate is kept by a rule before the dependency rule; the
        # index's edges say which candidates those (and kept candidates) need.
        decisions, context = settle(candidates, policy, context, index)
        chosen = self.relieve(decisions, context) if self.relieve is not None else frozenset()
        if chosen:
            decisions, context = settle(candidates, policy, replace(context, relieve=chosen),
                                        index)
        doomed = frozenset(d.entry.name for d in decisions if d.delete)
        snapshot = index.snapshot(self.managed.path, self.managed.dev, scanned_ns,
                                  entries=candidates, foreign=())
        if doomed:
            # As in a full look: the doomed are read in depth (pin file, a shard rewritten in
            # place) and decided again, which can only keep more (a step found pinned keeps
            # what it depends on too).
            snapshot = deepen(self.managed.fd, snapshot, doomed, self.managed.options)
            deepened = {e.name: e for e in snapshot.entries}
            decisions, context = settle([deepened[d.entry.name] for d in decisions], policy,
                                        context, index)
        return snapshot, Plan(tuple(decisions), context.progress, context.newest_complete)

    def _final_context(self, scanned_ns: int) -> Context:
        """The index's Context, with the layout's best pointer read from the newest complete
        step (once a pass, and only for a layout that has one: Hugging Face's)."""
        index, managed = self.index, self.managed
        context = index.context(scanned_ns)
        newest = context.newest_complete
        if managed.options.layout.best is None or newest is None:
            return context
        entry = index.step(newest)
        # A complete step's state file does not change: read it once per step (a long run's
        # trainer_state.json holds megabytes of log history), again only if the step did.
        key = (entry.name, entry.ino, entry.changed_ns)
        if self._best is None or self._best[0] != key:
            self._best = (key, read_best(managed.fd, entry.name, managed.options))
        best = self._best[1]
        return context if best is None else index.context(scanned_ns, best)

    def _refresh(self, names: list[str], fresh: set[str]) -> None:
        for name in names:
            self.index.put(name, self._read(name))
            fresh.add(name)

    # ---- the timer's check ----------------------------------------------------------------

    def start_rescan(self, quiet_ns: int = QUIET_NS) -> None:
        """Ask for the timer's check (unless one is under way): see Rescan. Its fds are opened
        at its first slice, so a daemon holding many directories has one rescan's fds open at a
        time, not one per directory (the loop works through them in turn)."""
        if self.rescan is None:
            self._rescan_quiet_ns = quiet_ns

    @property
    def rescanning(self) -> bool:
        return self.rescan is not None or self._rescan_quiet_ns is not None

    def advance_rescan(self, budget_s: float) -> RescanResult | None:
        """Work on the rescan asked for for about `budget_s`; its result once it is done."""
        try:
            if self.rescan is None:
                assert self._rescan_quiet_ns is not None
                quiet_ns, self._rescan_quiet_ns = self._rescan_quiet_ns, None
                self.rescan = Rescan(self, quiet_ns)
            result = self.rescan.advance(budget_s)
        except BaseException:
            self.rescan = None
            raise
        if result is not None:
            self.rescan = None
        return result


@dataclass(slots=True)
class RescanResult:
    """What a finished rescan found: the names it corrected, whether they count as missed events
    (the directory was quiet before the rescan) or may be changes still in flight, and the plain
    subdirectories it saw (discovery looks below them for managed directories)."""

    corrected: list[Mismatch]
    counted: bool
    subdirs: tuple[str, ...]


class Rescan:
    """A full re-read of one directory, spread over loop iterations (`advance`), checking the
    index name by name; names put after it began are fresher than it and skipped.

    Even the listing is spread: the directory is read through its own open file description
    (a `scandir` iterator kept between slices, the one fd a rescan holds), so 100,000 names
    never block one iteration.
    A name present throughout is listed exactly once; one added or removed meanwhile may or may
    not be, and its event has put it anyway. Names the index holds that the listing never showed
    are read again at the end.
    """

    def __init__(self, tracked: TrackedDirectory, quiet_ns: int = QUIET_NS) -> None:
        self.tracked = tracked
        self.quiet_ns = quiet_ns
        self.started_ns = time.time_ns()
        self.since_seq = tracked.index.seq
        # One fd while it runs: the scandir iterator's own dup of a new open file description
        # (its offset is not the managed fd's, which the passes list meanwhile).
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                     dir_fd=tracked.managed.fd)
        try:
            self._listing: Iterator[os.DirEntry[str]] | None = os.scandir(fd)
        finally:
            os.close(fd)
        self.listed: set[str] = set()
        self.subdirs: list[str] = []
        self.corrected: list[Mismatch] = []
        self._held: Iterator[str] | None = None  # the second phase: names the index holds

    def close(self) -> None:
        if self._listing is not None:
            self._listing.close()  # type: ignore[attr-defined]
            self._listing = None
        self._held = None

    def advance(self, budget_s: float) -> RescanResult | None:
        """Check names for about `budget_s` seconds; the result once every name was checked."""
        try:
            return self._advance(budget_s)
        except BaseException:
            self.close()
            raise

    def _advance(self, budget_s: float) -> RescanResult | None:
        tracked = self.tracked
        index = tracked.index
        deadline = time.monotonic() + budget_s
        listing = self._listing if self._held is None else ()
        assert listing is not None
        for count, item in enumerate(listing, 1):
            name = item.name
            self.listed.add(name)
            if not index.touched_since(name, self.since_seq):
                found = tracked._read(name)
                if found is None and not name.startswith(".") \
                        and item.is_dir(follow_symlinks=False):
                    self.subdirs.append(name)
                mismatch = index.check(name, found)
                if mismatch is not None:
                    self.corrected.append(mismatch)
            if count % 64 == 0 and time.monotonic() >= deadline:
                return None
        # Then the names the index holds that the listing never showed, also in slices.
        if self._held is None:
            if self._listing is not None:
                self._listing.close()  # type: ignore[attr-defined]
                self._listing = None
            self._held = iter(list(index.names()))
        for count, name in enumerate(self._held, 1):
            if name not in self.listed and not index.touched_since(name, self.since_seq):
                mismatch = index.check(name, tracked._read(name))
                if mismatch is not None:
                    self.corrected.append(mismatch)
            if count % 1024 == 0 and time.monotonic() >= deadline:
                return None
        index.forget_untouched(self.since_seq)
        st = os.fstat(tracked.managed.fd)  # the same directory: its times, now
        self.close()
        quiet = max(st.st_mtime_ns, st.st_ctime_ns) < self.started_ns - self.quiet_ns
        if quiet:
            tracked.mismatches += len(self.corrected)
        corrected = sorted(self.corrected, key=lambda m: m.name)
        return RescanResult(corrected, quiet, tuple(sorted(self.subdirs)))
