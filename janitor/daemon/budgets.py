"""The daemon's budgets (--max-bytes, --min-free, --pressure): the state between passes that
relief and the per-reason split rest on, kept out of the loop (janitor.daemon.loop calls in).

- Relief: each pass of a budgeted directory hands its decisions and Context to `relief_for`'s
  hook, which answers with the soft-kept steps to delete (policy.relieve, oldest first): enough
  to bring the directory HYSTERESIS under --max-bytes, and its share of its filesystem's
  --min-free deficit (pressure.FreeRelief), whichever is more. Steps in the trash that the
  reclaimer has not freed yet count as freed, so relief never takes more while it works.
- The split: which keep reasons hold a directory's bytes while it is over --max-bytes
  (pressure.SplitJob), made again only when what it rests on changed, in slices of the loop.
- Free space: every FREE_CHECK_S, a filesystem short of --min-free gets passes in the
  directories that hold its share, whatever took the space.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

from janitor.budget import Budget
from janitor.daemon.dirty import DirtySet
from janitor.daemon.fleet import Held
from janitor.daemon.footprint import Footprint
from janitor.daemon.pressure import SPLIT_GAP_S, FreeRelief, PressureWatch, SplitJob
from janitor.ops.managed import PassResult
from janitor.ops.relief import relief_offers
from janitor.ops.report import gate_text
from janitor.policy import Context, Decision, Reason, relieve

# --min-free under --pressure relieve: how often each filesystem's free space is looked at
# between passes (a statvfs each), so space taken outside the managed directories is seen too.
FREE_CHECK_S = 1.0


class Budgets:
    """The budgets' state and work for one daemon (only what its budget asks for runs)."""

    def __init__(self, budget: Budget, footprint: Footprint | None,
                 dirs: dict[str, Held], dirty: DirtySet, pressure: PressureWatch,
                 trash_bytes: dict[str, int], slice_s: float) -> None:
        self.budget = budget
        self.footprint = footprint
        self.dirs = dirs  # the fleet's held directories (the same dict, kept up to date)
        self.dirty = dirty
        self.pressure = pressure
        # Trash bytes per directory as the reclaimer measured them (written by its thread).
        self._trash_bytes = trash_bytes
        self._slice_s = slice_s
        # Each directory's last Context (what a per-reason split decides in), the directories a
        # relief pass was asked for, the split under way and when each directory may be split
        # again, and --min-free's relief.
        self._contexts: dict[str, Context] = {}
        self._relief_asked: set[str] = set()
        self._split: SplitJob | None = None
        self._split_done: dict[str, tuple[object, float]] = {}
        self.free = FreeRelief(budget, self.measured) if budget.relieves_free else None
        self._next_free_check = 0.0
        # Steps the loop renamed into the trash and the reclaimer has not freed yet (bytes by
        # trash name), counted as freed so relief does not take more while they are reclaimed;
        # the reclaim thread removes them.
        self._in_trash: dict[str, dict[str, int]] = {}
        self._in_trash_lock = threading.Lock()
        # Steps relief chose that turned out pinned when read in depth: not offered again
        # while the step is unchanged (by name: inode and change time).
        self._found_pinned: dict[str, dict[str, tuple[int, int]]] = {}

    @property
    def busy(self) -> bool:
        """A split is under way: the loop comes back at once, as for a rescan."""
        return self._split is not None

    def hook(self, path: str, held: Held) -> None:
        """Give a budgeted directory's passes the relief hook (once)."""
        if self.budgeted() and held.tracked.relieve is None:
            held.tracked.relieve = self.relief_for(path)

    def passed(self, path: str, result: PassResult) -> None:
        """A pass is done (before the footprint forgets what it trashed): the steps now in the
        trash count as freed until reclaimed; the steps it found pinned are offered no more."""
        footprint = self.footprint
        if result.trashed and self.free is not None and footprint is not None:
            with self._in_trash_lock:
                self._in_trash.setdefault(path, {}).update(
                    (t.trash_name, footprint.size_of(path, t.entry.name)) for t in result.trashed)
            self.free.taken(path, [t.entry.name for t in result.trashed])
        if self.budget.relieves:
            self.learn_pins(path, result)

    def reclaimed(self, directory: str, trash_name: str) -> None:
        """Called on the reclaim thread: a trashed step's bytes are free now."""
        with self._in_trash_lock:
            self._in_trash.get(directory, {}).pop(trash_name, None)

    def sized(self, path: str, bytes_: int) -> None:
        """The footprint knows a directory's bytes anew: over --max-bytes under relieve, a pass
        decides again with the sizes now known."""
        if self.budget.relieves_bytes and self.budget.relieve_deficit(bytes_):
            self.ask_relief([path])

    def budgeted(self) -> bool:
        """Whether passes report their Context and decisions to the budgets (the relief hook):
        under --pressure relieve, and for the per-reason split of --max-bytes."""
        return self.budget.relieves or self.budget.max_bytes is not None

    def relief_for(self, path: str) -> Callable[[list[Decision], Context], frozenset[int]]:
        return lambda decisions, context: self._relief(path, decisions, context)

    def _relief(self, path: str, decisions: list[Decision], context: Context) -> frozenset[int]:
        """Each pass: keep its Context (for the split); under --pressure relieve, the soft-kept
        steps to delete, oldest first, by the sizes the footprint measured: enough to bring the
        directory HYSTERESIS under --max-bytes (a step not measured yet counts 0, so more go,
        never a hard-kept one) and its share of its filesystem's --min-free deficit (where a
        step not measured yet stops the share: FreeRelief), whichever is more."""
        self._contexts[path] = context
        self._relief_asked.discard(path)
        budget = self.budget
        footprint = self.footprint
        if not budget.relieves or footprint is None:
            return frozenset()
        managed = self.dirs[path].tracked.managed
        pinned = self._found_pinned.get(path)
        if pinned:
            decisions = [d for d in decisions
                         if pinned.get(d.entry.name) != (d.entry.ino, d.entry.changed_ns)]
        # What stays: the steps less those this pass deletes anyway. The trash is not counted:
        # it is being freed, and counting it would relieve more than the budget asks.
        gone = sum(footprint.size_of(path, d.entry.name) for d in decisions if d.delete)
        deficit = budget.relieve_deficit(footprint.total(path) - gone)
        if self.free is not None:
            offers = relief_offers(decisions, managed.policy, context,
                                   lambda name: footprint.measured(path, name))
            self.free.offer(path, managed.dev, offers)
            short = self._free_deficit(managed.dev, managed.fd, gone)
            if short:
                shares = self.free.shares(managed.dev, short)
                deficit = max(deficit, shares.get(path, 0))
                self.ask_relief([p for p, b in shares.items() if b and p != path])
        if not deficit:
            return frozenset()
        return relieve(decisions, managed.policy, context,
                       lambda name: footprint.size_of(path, name), deficit)

    def ask_relief(self, paths: list[str]) -> None:
        """A pass for each of `paths`, to relieve (a split waits for it)."""
        if paths:
            self._relief_asked.update(paths)
            self.dirty.touch(paths)

    def learn_pins(self, path: str, result: PassResult) -> None:
        """Steps a pass found pinned when reading them in depth (relief chose them): relief
        offers them no more while they are unchanged."""
        found = self._found_pinned.get(path)
        if found is not None:
            index = self.dirs[path].tracked.index
            for name in [n for n, seen in found.items() if (entry := index.entries.get(n)) is None
                         or (entry.ino, entry.changed_ns) != seen]:
                del found[name]
        for decision in result.plan.decisions:
            if decision.reason is Reason.PINNED:
                entry = decision.entry
                self._found_pinned.setdefault(path, {})[entry.name] = (entry.ino,
                                                                       entry.changed_ns)

    def measured(self, path: str, name: str) -> int | None:
        return None if self.footprint is None else self.footprint.measured(path, name)

    def trash_pending(self, path: str) -> int:
        """Bytes of `path` in the trash being reclaimed: what the reclaimer measured, or what
        the loop renamed there and it has not measured yet, whichever is more."""
        with self._in_trash_lock:
            renamed = sum(self._in_trash.get(path, {}).values())
        return max(self._trash_bytes.get(path, 0), renamed)

    def _free_deficit(self, dev: int, fd: int, gone: int) -> int:
        """Bytes relief must free on filesystem `dev` (statvfs through `fd`), counting as freed
        the trash being reclaimed in every directory on it and `gone` (deleted anyway)."""
        assert self.free is not None
        # The trash first, then the free space: a step reclaimed in between is counted twice
        # (relief waits for the next look), never not at all (relief would take too much).
        pending = sum(self.trash_pending(p) for p, h in self.dirs.items()
                      if h.tracked.managed.dev == dev)
        try:
            vfs = os.statvfs(fd)
        except OSError:
            return 0
        return self.free.deficit(dev, vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize,
                                 pending + gone)

    def check_free(self, now: float) -> None:
        """--min-free under relieve, every FREE_CHECK_S: a filesystem short of it (by whatever
        took the space) gets a pass in each directory whose share of the deficit is not 0."""
        if self.free is None or now < self._next_free_check:
            return
        self._next_free_check = now + FREE_CHECK_S
        self.free.keep_only(self.dirs)
        by_dev: dict[int, Held] = {}
        for held in self.dirs.values():
            by_dev.setdefault(held.tracked.managed.dev, held)
        for dev, held in by_dev.items():
            short = self._free_deficit(dev, held.tracked.managed.fd, 0)
            if short:
                self.ask_relief([p for p, b in self.free.shares(dev, short).items() if b])

    def deadlines(self, now: float) -> list[float]:
        """When the budgets want the loop back: the next free-space check, the next time a
        directory over --max-bytes may be split again."""
        out = []
        if self.free is not None:
            out.append(self._next_free_check)
        for path in self.pressure.over_paths():
            done = self._split_done.get(path)
            if done is not None and done[1] > now:
                out.append(done[1])
        return out

    def _forget_released(self) -> None:
        """The budgets' state of directories no longer held (rare: O(directories))."""
        for table in (self._contexts, self._found_pinned):
            for path in [p for p in table if p not in self.dirs]:
                del table[path]
        with self._in_trash_lock:
            for path in [p for p in self._in_trash if p not in self.dirs]:
                del self._in_trash[path]

    # ---- the per-reason split of a directory over --max-bytes ------------------------------

    def _split_key(self, path: str, held: Held, context: Context) -> object:
        """What the split rests on, so it is made again only when one of them changed: a few
        numbers, compared at every loop iteration while the directory is over its budget (the
        --keep-last set and the steps held by dependencies change with the steps, which the
        bytes and the step count follow; the soft rules' result is compared by identity)."""
        footprint = self.footprint
        assert footprint is not None
        return (footprint.total(path), held.tracked.index.step_count, self.trash_pending(path),
                context.progress, context.newest_complete, context.pointed,
                context.complete_through, len(context.held))

    def advance_split(self, now: float) -> None:
        """Start the split of a directory over --max-bytes whose split could have changed (its
        sizes known, no relief pass pending), or advance the one under way."""
        footprint = self.footprint
        if len(self._contexts) > len(self.dirs):
            self._forget_released()
        if footprint is None or self.budget.max_bytes is None:
            return
        if self._split is None:
            over = self.pressure.over_paths()
            for path in [p for p in self._split_done if p not in over]:
                del self._split_done[path]
            for path in over:
                held, context = self.dirs.get(path), self._contexts.get(path)
                if held is None or context is None or footprint.pending_in(path) or \
                        path in self._relief_asked:
                    continue
                key = (self._split_key(path, held, context), context.soft)
                done = self._split_done.get(path)
                if done is not None and (_same_key(done[0], key) or now < done[1]):
                    continue
                self._split = SplitJob(path, held.tracked.managed.fd, held.tracked.index,
                                       held.tracked.managed.policy, context,
                                       functools.partial(footprint.size_of, path), key)
                break
        job = self._split
        if job is None:
            return
        held = self.dirs.get(job.path)
        if held is None or held.tracked.index is not job.index:
            self._split = None  # released, or its index rebuilt (a full pass): start again
            return
        if not job.advance(self._slice_s):
            return
        self._split = None
        path = job.path
        self._split_done[path] = (job.key, time.monotonic() + max(SPLIT_GAP_S, 10 * job.spent_s))
        split = job.result(self.trash_pending(path))
        index = job.index
        consumers = [index.consumers[k] for k in sorted(index.consumers)]
        behind = gate_text(split, job.context.progress.loaded_step, job.context.newest_complete,
                           consumers, job.policy)
        self.pressure.held(path, split, behind)


def _same_key(a: object, b: object) -> bool:
    """Two split keys (facts, SoftKeeps) are the same: the facts equal, the soft rules' result
    the very same object (the index keeps it until its steps change)."""
    assert isinstance(a, tuple) and isinstance(b, tuple)
    return bool(a[0] == b[0] and a[1] is b[1])
