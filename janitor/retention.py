"""The soft retention rules: time-based thinning and a bounded interval class (issue 14).

    --keep-within 6h     every complete step completed within 6 h of the scan
    --keep-hourly 24     the newest complete step of each of the last 24 hours that have one
    --keep-daily 7       the newest complete step of each of the last 7 days (UTC) that have one
    --keep-interval 1000:3   the newest 3 complete multiples of 1000

borg-prune style, by completion time (a complete step's change time: its completion marker is
written last). Complete steps are taken newest first; each rule stops when its quota is filled
(`within` at the first step older than the window), so a pass costs what the quotas keep, not
what the directory holds. Soft rules never override a hard one: they only keep more.

Pure: no clock, no I/O; the caller passes the scan time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HOUR_NS = 3600 * 1_000_000_000
DAY_NS = 24 * HOUR_NS

# The reasons, in the order `decide` reports them (the first that keeps a step names it).
WITHIN = "keep-within"
HOURLY = "keep-hourly"
DAILY = "keep-daily"
INTERVAL = "keep-interval"
ORDER = (WITHIN, HOURLY, DAILY, INTERVAL)


@dataclass(frozen=True, slots=True)
class SoftRules:
    within_ns: int | None = None
    hourly: int = 0
    daily: int = 0
    interval: tuple[int, int] | None = None  # (N, COUNT)

    @property
    def any(self) -> bool:
        return (self.within_ns is not None or self.hourly > 0 or self.daily > 0
                or self.interval is not None)


@dataclass(frozen=True, slots=True)
class SoftKeeps:
    """Which complete steps the soft rules keep, each with every rule that keeps it, and until
    when this holds (`valid_until_ns`: the first moment a step leaves the --keep-within window;
    None: until the complete steps change)."""

    kept: dict[int, tuple[str, ...]]
    valid_until_ns: int | None = None


NO_SOFT_KEEPS = SoftKeeps({})


def soft_keeps(newest_first: Iterable[tuple[int, int]], rules: SoftRules,
               scanned_ns: int) -> SoftKeeps:
    """`newest_first`: (step number, completion time ns) of the complete steps, newest first."""
    if not rules.any:
        return NO_SOFT_KEEPS
    kept: dict[int, list[str]] = {}
    hours: set[int] = set()
    days: set[int] = set()
    multiples = 0
    within_open = rules.within_ns is not None
    valid_until: int | None = None
    every, count = rules.interval or (1, 0)
    for number, done_ns in newest_first:
        reasons: list[str] = []
        if within_open:
            assert rules.within_ns is not None
            if scanned_ns - done_ns <= rules.within_ns:
                reasons.append(WITHIN)
                leaves = done_ns + rules.within_ns + 1
                valid_until = leaves if valid_until is None else min(valid_until, leaves)
            else:
                within_open = False
        hour, day = done_ns // HOUR_NS, done_ns // DAY_NS
        if len(hours) < rules.hourly and hour not in hours:
            hours.add(hour)
            reasons.append(HOURLY)
        if len(days) < rules.daily and day not in days:
            days.add(day)
            reasons.append(DAILY)
        if multiples < count and number % every == 0:
            multiples += 1
            reasons.append(INTERVAL)
        if reasons:
            kept[number] = reasons
        if (not within_open and len(hours) >= rules.hourly and len(days) >= rules.daily
                and multiples >= count):
            break
    return SoftKeeps({n: tuple(r) for n, r in kept.items()}, valid_until)


def parse_duration(text: str) -> float | None:
    """Seconds of a duration like `90s`, `30m`, `6h`, `7d`, `2w` (a whole number and one unit,
    ASCII); None when it is not one."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if len(text) < 2 or text[-1] not in units:
        return None
    digits = text[:-1]
    if not (digits.isascii() and digits.isdigit()) or (len(digits) > 1 and digits[0] == "0"):
        return None
    return float(int(digits) * units[text[-1]])
