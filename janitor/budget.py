"""Byte budgets and free-space watermarks (issue 14, point 3), in alert mode.

`--max-bytes SIZE` bounds what one managed directory holds (its steps and its trash);
`--min-free SIZE|PCT` is the free space each filesystem holding one should keep. Crossing either
never deletes anything the rules keep: the janitor says so (a log event when it begins and when
it ends, a status line, metrics with the bytes over and the predicted time to full), because what
holds the bytes is almost always a consumer that is behind, which only a person can fix.

Pure: parsing and the comparisons; the daemon and the commands do the measuring.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)(i?B)?", re.ASCII)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
MAX_BYTES = 1 << 62
# Relieving stops this fraction of --max-bytes below it, so one new step does not start again.
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
    # HYSTERESIS below --max-bytes (the free-space watermark is alert only).
    pressure: str = "alert"

    @property
    def relieves(self) -> bool:
        return self.pressure == "relieve" and self.max_bytes is not None

    def relieve_deficit(self, used: int) -> int:
        """Bytes to free under relieve: back to HYSTERESIS below the budget once over it."""
        if self.max_bytes is None or used <= self.max_bytes:
            return 0
        return used - (self.max_bytes - int(self.max_bytes * HYSTERESIS))

    @property
    def any(self) -> bool:
        return self.max_bytes is not None or self.min_free_bytes is not None or \
            self.min_free_fraction is not None

    def over(self, used: int) -> int:
        """Bytes a directory holding `used` is over --max-bytes (0 when within)."""
        return 0 if self.max_bytes is None else max(0, used - self.max_bytes)

    def short(self, avail: int, total: int) -> int:
        """Bytes a filesystem is short of --min-free (0 when it has enough)."""
        want = self.min_free_bytes
        if self.min_free_fraction is not None:
            want = max(want or 0, math.ceil(total * self.min_free_fraction))
        return 0 if want is None else max(0, want - avail)

    def describe(self) -> dict[str, object]:
        return {"max_bytes": self.max_bytes, "min_free_bytes": self.min_free_bytes,
                "min_free_fraction": self.min_free_fraction, "pressure": self.pressure}


NO_BUDGET = Budget()


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
