"""Byte budgets and free-space watermarks (issue 14, point 3).

`--max-bytes SIZE` bounds what one managed directory holds (its steps and its trash);
`--min-free SIZE|PCT` is the free space each filesystem holding one should keep.

Under `--pressure alert` (the default) crossing either deletes nothing the rules keep: the
janitor says so (a log event when it begins and when it ends, a status line, metrics with the
bytes over and the predicted time to full) and says which keep reasons hold how many bytes
(`held_by`), because what holds them is almost always a consumer that is behind, which only a
person can fix.

Under `--pressure relieve` the steps kept only by a soft rule (policy.SOFT_REASONS) that the
consumer gate would let go are deleted too, oldest first (policy.relieve), never a step a hard
rule keeps, until the directory is HYSTERESIS below --max-bytes (`relieve_deficit`) and each
filesystem short of --min-free is HYSTERESIS of the watermark above it (`free_deficit`), where
bytes already in the trash being reclaimed count as freed. Several managed directories on one
filesystem share its deficit by completion time: the oldest relievable step of any of them goes
first (`share_deficit`), each directory in its own oldest-first order.

Pure: parsing, the comparisons and the shares; the daemon and the commands do the measuring.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import NamedTuple

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)(i?B)?", re.ASCII)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
MAX_BYTES = 1 << 62
# Relieving stops this fraction of --max-bytes below it, and this fraction of --min-free above
# the watermark, so one new step does not start it again.
HYSTERESIS = 0.05


class BudgetError(ValueError):
    """A size or percentage that is refused; the message is one line."""


def parse_size(text: str) -> int:
    """Bytes of `100G`, `1.5T`, `500GiB`, `4096` (K, M, G, T, P are powers of 1024)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise BudgetError(f"{text!a} is not a size; expected a number and K, M, G, T or P "
                          "(powers of 1024), e.g. 500G")
    value = float(match[1]) * _UNITS[match[2]]
    if not (math.isfinite(value) and 1 <= value <= MAX_BYTES):
        raise BudgetError(f"{text!a} is out of range; 1 byte .. 4 EiB")
    return int(value)


@dataclass(frozen=True, slots=True)
class Budget:
    """What the janitor watches: a directory's bytes and each filesystem's free space."""

    max_bytes: int | None = None
    min_free_bytes: int | None = None
    min_free_fraction: float | None = None  # 0 < f < 1
    # alert: say so; relieve: also delete steps kept only by soft rules, oldest first, until
    # HYSTERESIS below --max-bytes and HYSTERESIS of --min-free above the watermark.
    pressure: str = "alert"

    @property
    def relieves(self) -> bool:
        """Whether --pressure relieve acts at all (it needs --max-bytes or --min-free)."""
        return self.relieves_bytes or self.relieves_free

    @property
    def relieves_bytes(self) -> bool:
        return self.pressure == "relieve" and self.max_bytes is not None

    @property
    def relieves_free(self) -> bool:
        return self.pressure == "relieve" and self.watches_free

    @property
    def watches_free(self) -> bool:
        return self.min_free_bytes is not None or self.min_free_fraction is not None

    def relieve_deficit(self, used: int) -> int:
        """Bytes to free under relieve: back to HYSTERESIS below the budget once over it."""
        if self.max_bytes is None or used <= self.max_bytes:
            return 0
        return used - (self.max_bytes - int(self.max_bytes * HYSTERESIS))

    def free_want(self, total: int) -> int | None:
        """The free bytes --min-free asks of a filesystem of `total` bytes (None: not set)."""
        want = self.min_free_bytes
        if self.min_free_fraction is not None:
            want = max(want or 0, math.ceil(total * self.min_free_fraction))
        return want

    def free_deficit(self, avail: int, total: int, freed: int, relieving: bool) -> int:
        """Bytes to free under relieve on a filesystem with `avail` of `total` bytes free and
        `freed` more on their way (in the trash being reclaimed, or deleted by this pass anyway).
        It starts once avail + freed falls below --min-free (or goes on while `relieving`, the
        hysteresis) and asks for HYSTERESIS of the watermark above it (at most the whole
        filesystem); 0 once there."""
        want = self.free_want(total)
        if want is None or self.pressure != "relieve":
            return 0
        if not relieving and avail + freed >= want:
            return 0
        return max(0, self.free_target(total) - avail - freed)

    def free_target(self, total: int) -> int:
        """Where relief on a filesystem of `total` bytes stops: HYSTERESIS of the --min-free
        watermark above it (the whole filesystem at most, unless the watermark asks more)."""
        want = self.free_want(total) or 0
        return min(max(total, want), want + math.ceil(want * HYSTERESIS))

    @property
    def any(self) -> bool:
        return self.max_bytes is not None or self.min_free_bytes is not None or \
            self.min_free_fraction is not None

    def over(self, used: int) -> int:
        """Bytes a directory holding `used` is over --max-bytes (0 when within)."""
        return 0 if self.max_bytes is None else max(0, used - self.max_bytes)

    def short(self, avail: int, total: int) -> int:
        """Bytes a filesystem is short of --min-free (0 when it has enough)."""
        want = self.free_want(total)
        return 0 if want is None else max(0, want - avail)

    def describe(self) -> dict[str, object]:
        return {"max_bytes": self.max_bytes, "min_free_bytes": self.min_free_bytes,
                "min_free_fraction": self.min_free_fraction, "pressure": self.pressure}


NO_BUDGET = Budget()


class Offer(NamedTuple):
    """A step relief may delete in one directory: its completion time, its bytes (None while
    not measured) and its name. A directory offers them in its own oldest-first order."""

    time_ns: int
    bytes: int | None
    name: str


def share_deficit(queues: Mapping[str, Sequence[Offer]], deficit: int) -> dict[str, int]:
    """How many bytes each directory on one filesystem gives to free `deficit` there: the
    directories' offers merged by completion time (the oldest head first; ties by directory),
    taken until the deficit is met. Each share is the bytes of a prefix of that directory's
    offers, so policy.relieve given it as a deficit takes that prefix (less any steps of 0 bytes
    at its end, which free nothing). The merge stops at
    an offer not measured yet (bytes None): nothing older than it is passed over for a guess."""
    shares = dict.fromkeys(queues, 0)
    heap = [(offers[0].time_ns, key, 0) for key, offers in queues.items() if offers]
    heapify(heap)
    freed = 0
    while heap and freed < deficit:
        _, key, at = heappop(heap)
        offer = queues[key][at]
        if offer.bytes is None:
            break
        shares[key] += offer.bytes
        freed += offer.bytes
        if at + 1 < len(queues[key]):
            heappush(heap, (queues[key][at + 1].time_ns, key, at + 1))
    return shares


class Holding(NamedTuple):
    """Bytes and steps one reason holds in a directory."""

    reason: str
    bytes: int
    steps: int


def held_by(items: Iterable[tuple[str, int]]) -> list[Holding]:
    """(reason, bytes) of each step summed by reason, the largest first (then the most steps,
    then by name): what holds a directory's bytes."""
    totals: dict[str, list[int]] = {}
    for reason, size in items:
        add_held(totals, reason, size)
    return holdings(totals)


def add_held(totals: dict[str, list[int]], reason: str, size: int) -> None:
    """One step of `size` bytes held by `reason`, into running totals (see `holdings`)."""
    bucket = totals.get(reason)
    if bucket is None:
        totals[reason] = [size, 1]
    else:
        bucket[0] += size
        bucket[1] += 1


def holdings(totals: Mapping[str, Sequence[int]]) -> list[Holding]:
    """Running totals ({reason: [bytes, steps]}) as Holdings, the largest first."""
    return sorted((Holding(r, t[0], t[1]) for r, t in totals.items()),
                  key=lambda h: (-h.bytes, -h.steps, h.reason))


def parse_min_free(text: str) -> Budget:
    """`--min-free`: a size, or a percentage of the filesystem (`10%`)."""
    if text.endswith("%"):
        body = text[:-1]
        if not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", body, re.ASCII) or not 0 < float(body) < 100:
            raise BudgetError(f"{text!a} is not a percentage; expected more than 0% and less "
                              "than 100%, e.g. 10%")
        return Budget(min_free_fraction=float(body) / 100)
    return Budget(min_free_bytes=parse_size(text))


def seconds_to_full(samples: list[tuple[float, int]]) -> float:
    """Seconds until available bytes reach 0 at the rate of `samples` (time s, available),
    by a least-squares line; +inf when space is not falling or too few samples."""
    if len(samples) < 2:
        return math.inf
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_a = sum(a for _, a in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return math.inf
    slope = sum((t - mean_t) * (a - mean_a) for t, a in samples) / var
    if slope >= 0:
        return math.inf
    return max(0.0, samples[-1][1] / -slope)
