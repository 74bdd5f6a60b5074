"""The daemon's side of --max-bytes and --min-free (janitor.budget): notice when a directory or
a filesystem crosses its budget, say so once when it begins and once when it ends, keep the
metrics an alert reads (the state, the bytes over, the predicted seconds to full), say what holds
a directory's bytes, and, under --pressure relieve, share a filesystem's free-space deficit out
among the directories on it.

- `PressureWatch`: the events and gauges. A directory over --max-bytes is logged (`pressure`)
  once its per-reason split is known (`SplitJob`), with the keep reasons that hold how many
  bytes, largest first, and who is behind when the consumer gate holds the most; under relieve
  that is after the relief pass, so what it names is what relief could not take. If the largest
  holder changes while the pressure lasts, `pressure_held` says so; `pressure_cleared` ends it.
- `SplitJob`: one directory's split, every step decided with the Context of its last pass and
  sized by the footprint's measurements (nothing is measured again), in slices of the loop like
  a rescan. The loop starts one only when a directory is over its budget and the split could
  have changed (its bytes, step count, trash or the Context's facts), at most one at a time and
  at most every SPLIT_GAP_S or ten times its last cost, so a reaction pass never pays for it.
- `FreeRelief`: --min-free under relieve. Each pass offers the steps relief may take in its
  directory (oldest first, with their completion times and sizes); a filesystem's deficit
  (HYSTERESIS of the watermark above it, trash being reclaimed counted as freed) is shared out
  by completion time across the directories on it (budget.share_deficit).

Called from the loop (never from a watcher thread).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Container, Iterable

import structlog

from janitor.budget import (
    Budget,
    Holding,
    Offer,
    add_held,
    holdings,
    seconds_to_full,
    share_deficit,
)
from janitor.daemon.metrics import Metrics
from janitor.fs.pins import pinned_names
from janitor.index import DirectoryIndex
from janitor.ops.report import TRASH_HOLDER, held_text, holder, human_bytes
from janitor.policy import Context, Policy, decide

log = structlog.get_logger("janitor")

# The free-space samples the write rate is fitted on: at most one a second, the last ten minutes.
RATE_WINDOW_S = 600.0
RATE_SAMPLES = 600
# The least time between two splits of one directory (and at least ten times the last one's
# cost): a split is O(steps), spread over loop slices; this bounds its share of the loop.
SPLIT_GAP_S = 2.0
# How many entries a split decides between two looks at the clock.
SPLIT_CHUNK = 64


class PressureWatch:
    def __init__(self, budget: Budget, metrics: Metrics) -> None:
        self.budget = budget
        self.metrics = metrics
        self._over: dict[str, int] = {}  # directories over --max-bytes, by how much
        self._unsaid: set[str] = set()  # over, not logged yet (waiting for their split)
        self._top: dict[str, str | None] = {}  # logged: the largest holder said last
        self._short: dict[str, int] = {}  # filesystems short of --min-free, by mount point
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def over_paths(self) -> list[str]:
        """The directories over --max-bytes now."""
        return list(self._over)

    def directory(self, path: str, stream: str | None, used: int) -> None:
        """A directory's bytes (steps and trash) changed."""
        if self.budget.max_bytes is None:
            return
        over = self.budget.over(used)
        if stream is not None:
            self.metrics.set_directory_pressure(stream, over)
        was = path in self._over
        if over:
            self._over[path] = over
            if not was:
                self._unsaid.add(path)  # said with its split (held)
        elif was:
            del self._over[path]
            self._unsaid.discard(path)
            if path in self._top:  # said: its end is said too
                del self._top[path]
                log.info("pressure_cleared", directory=path, bytes=used,
                         max_bytes=self.budget.max_bytes)

    def held(self, path: str, split: list[Holding], behind: str | None) -> None:
        """A directory's split is known: the `pressure` event if it is still over and not said
        yet, else `pressure_held` when the largest holder changed."""
        if path not in self._over:
            return
        used = sum(h.bytes for h in split)
        over = self.budget.over(used)
        if not over:
            return  # by the split's count it is not over (the trash shrank meanwhile)
        top = split[0].reason if split else None
        relieve = self.budget.relieves_bytes
        fields: dict[str, object] = {
            "directory": path, "bytes": used, "max_bytes": self.budget.max_bytes,
            "over_bytes": over, "mode": self.budget.pressure,
            "held": [h._asdict() for h in split], "behind": behind}
        text = held_text(split)
        why = (f"holds {human_bytes(used)}, {human_bytes(over)} over --max-bytes; held by "
               f"{text}" + (f"; {behind}" if behind else ""))
        if path in self._unsaid:
            self._unsaid.discard(path)
            self._top[path] = top
            log.warning("pressure", **fields, why=why,
                        action="relief deleted what soft rules alone kept; the rest is held by "
                               "hard rules: " + (behind or "see janitor status") if relieve else
                        "nothing more is deleted than the rules allow: "
                        + (behind or "check the consumer's lag (janitor status)")
                        + ", or raise the budget")
        elif self._top.get(path) != top:
            self._top[path] = top
            log.info("pressure_held", **fields, why=why)

    def filesystems(self, sizes: dict[str, tuple[int, int]], now: float) -> None:
        """Each filesystem's (available, total) bytes after a pass."""
        for mountpoint, (avail, total) in sizes.items():
            samples = self._samples.setdefault(mountpoint, deque(maxlen=RATE_SAMPLES))
            if not samples or now - samples[-1][0] >= 1.0:
                samples.append((now, avail))
            while samples and now - samples[0][0] > RATE_WINDOW_S:
                samples.popleft()
            eta = seconds_to_full(list(samples))
            self.metrics.set_filesystem_forecast(mountpoint, eta)
            if not self.budget.watches_free:
                continue
            short = self.budget.short(avail, total)
            self.metrics.set_filesystem_pressure(mountpoint, short)
            if short and mountpoint not in self._short:
                relieve = self.budget.relieves_free
                log.warning("pressure", filesystem=mountpoint, avail_bytes=avail,
                            size_bytes=total, short_bytes=short, mode=self.budget.pressure,
                            seconds_to_full=None if math.isinf(eta) else round(eta),
                            why=f"{human_bytes(avail)} free, {human_bytes(short)} short of "
                                "--min-free",
                            action="relieving: steps kept only by soft rules go, oldest first "
                                   "across the directories on it, never one a hard rule keeps"
                                   if relieve else
                                   "nothing more is deleted than the rules allow: check the "
                                   "consumers' lag (janitor status)")
            elif not short and mountpoint in self._short:
                log.info("pressure_cleared", filesystem=mountpoint, avail_bytes=avail)
            if short:
                self._short[mountpoint] = short
            else:
                self._short.pop(mountpoint, None)
        for gone in set(self._samples) - set(sizes):
            del self._samples[gone]
            self._short.pop(gone, None)


class SplitJob:
    """What holds one directory's bytes, by keep reason (ops.report.holder): every entry of its
    index decided in `context` (its last pass's) with its pin read (one lstat a step, as status
    and sweep read every pin: the index knows a pin only where a pass read a step in depth) and
    sized by `size_of` (the footprint's), `advance`d in slices. An entry gone meanwhile is passed
    over; one changed is decided as it is now. Started, a job runs to its end, so a directory
    that changes faster than it is split still gets its split (one slightly behind)."""

    def __init__(self, path: str, fd: int, index: DirectoryIndex, policy: Policy,
                 context: Context, size_of: Callable[[str], int], key: object) -> None:
        self.path = path
        self.fd = fd
        self.key = key
        self.context = context
        self.policy = policy
        self.index = index
        self._size_of = size_of
        self._names = list(index.entries)  # a copy at C speed: the index may change meanwhile
        self._at = 0
        self._totals: dict[str, list[int]] = {}
        self.spent_s = 0.0

    def advance(self, budget_s: float) -> bool:
        """Decide entries for about `budget_s`; True once every entry is decided."""
        started = time.monotonic()
        deadline = started + budget_s
        entries, names = self.index.entries, self._names
        policy, context = self.policy, self.context
        while self._at < len(names):
            stop = min(len(names), self._at + SPLIT_CHUNK)
            chunk = [(name, entries.get(name)) for name in names[self._at:stop]]
            pins = pinned_names(self.fd, [name for name, entry in chunk if entry is not None
                                          and entry.number is not None and not entry.pinned])
            for name, found in chunk:
                if found is None:
                    continue
                entry = dataclasses.replace(found, pinned=True) if name in pins else found
                add_held(self._totals, holder(decide(entry, policy, context), policy, context),
                         self._size_of(name))
            self._at = stop
            if time.monotonic() >= deadline:
                break
        self.spent_s += time.monotonic() - started
        return self._at >= len(names)

    def result(self, trash_bytes: int) -> list[Holding]:
        """The split, with the trash (being reclaimed) as a holder of its own."""
        totals = dict(self._totals)
        if trash_bytes:
            totals[TRASH_HOLDER] = [trash_bytes, 0]
        return holdings(totals)


class FreeRelief:
    """--min-free under --pressure relieve, per filesystem (st_dev): each directory's offers
    from its last pass, the hysteresis, and the shares of a deficit. An offer not measured when
    its pass made it is looked up again (`measured`) when shares are made, so sizing a step
    needs no pass of its own."""

    def __init__(self, budget: Budget, measured: Callable[[str, str], int | None]) -> None:
        self.budget = budget
        self._measured = measured
        # Per directory: its filesystem, its offers oldest first, and whether any is unsized.
        self._offers: dict[str, tuple[int, list[Offer], bool]] = {}
        self._relieving: set[int] = set()  # filesystems relieved until HYSTERESIS above

    def offer(self, path: str, dev: int, offers: list[Offer]) -> None:
        """What relief may take in `path` now (a pass decided it), oldest first."""
        self._offers[path] = (dev, offers, any(o.bytes is None for o in offers))

    def taken(self, path: str, names: Iterable[str]) -> None:
        """Steps of `path` gone (into the trash): no longer offered."""
        known = self._offers.get(path)
        gone = set(names)
        if known is None or not gone:
            return
        dev, offers, _ = known
        self.offer(path, dev, [o for o in offers if o.name not in gone])

    def keep_only(self, paths: Container[str]) -> None:
        """Forget the directories no longer held."""
        for path in [p for p in self._offers if p not in paths]:
            del self._offers[path]

    def deficit(self, dev: int, avail: int, total: int, freed: int) -> int:
        """Bytes relief must free on filesystem `dev` (budget.free_deficit), with its
        hysteresis: once started it goes on until the free space itself (not counting `freed`,
        the trash still being reclaimed) is HYSTERESIS of the watermark above it. So a moment
        where the trash is counted twice (freed on disk, not yet off the reclaimer's books)
        only delays relief until the next look, and never ends it short of the margin."""
        relieving = dev in self._relieving
        deficit = self.budget.free_deficit(avail, total, freed, relieving)
        if deficit or (relieving and avail < self.budget.free_target(total)):
            self._relieving.add(dev)
        else:
            self._relieving.discard(dev)
        return deficit

    def shares(self, dev: int, deficit: int) -> dict[str, int]:
        """Each directory's part of `deficit` on filesystem `dev` (budget.share_deficit)."""
        queues = {}
        for path, (on, known, unsized) in list(self._offers.items()):
            if on != dev:
                continue
            offers = known
            if unsized:
                offers = [o if o.bytes is not None else o._replace(
                    bytes=self._measured(path, o.name)) for o in known]
                self.offer(path, dev, offers)
            queues[path] = offers
        return share_deficit(queues, deficit)
