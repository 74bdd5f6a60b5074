"""The daemon's side of --max-bytes and --min-free (janitor.budget): notice when a directory or
a filesystem crosses its budget, say so once when it begins and once when it ends, and keep the
metrics an alert reads (the state, the bytes over, the predicted seconds to full).

Alert mode: nothing here deletes anything. Called from the loop (never from a watcher thread).
"""

from __future__ import annotations

import math
from collections import deque

import structlog

from janitor.budget import Budget, seconds_to_full
from janitor.daemon.metrics import Metrics
from janitor.ops.report import human_bytes

log = structlog.get_logger("janitor")

# The free-space samples the write rate is fitted on: at most one a second, the last ten minutes.
RATE_WINDOW_S = 600.0
RATE_SAMPLES = 600


class PressureWatch:
    def __init__(self, budget: Budget, metrics: Metrics) -> None:
        self.budget = budget
        self.metrics = metrics
        self._over: dict[str, int] = {}  # directories over --max-bytes, by how much
        self._short: dict[str, int] = {}  # filesystems short of --min-free, by mount point
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def directory(self, path: str, stream: str | None, used: int) -> None:
        """A directory's bytes (steps and trash) changed."""
        if self.budget.max_bytes is None:
            return
        over = self.budget.over(used)
        if stream is not None:
            self.metrics.set_directory_pressure(stream, over)
        was = self._over.get(path)
        if over and was is None:
            log.warning("pressure", directory=path, bytes=used, max_bytes=self.budget.max_bytes,
                        over_bytes=over, mode="alert",
                        why=f"holds {human_bytes(used)}, {human_bytes(over)} over --max-bytes",
                        action="nothing more is deleted than the rules allow: check the "
                               "consumer's lag (janitor status), or raise the budget")
        elif not over and was is not None:
            log.info("pressure_cleared", directory=path, bytes=used,
                     max_bytes=self.budget.max_bytes)
        if over:
            self._over[path] = over
        else:
            self._over.pop(path, None)

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
            if self.budget.min_free_bytes is None and self.budget.min_free_fraction is None:
                continue
            short = self.budget.short(avail, total)
            self.metrics.set_filesystem_pressure(mountpoint, short)
            if short and mountpoint not in self._short:
                log.warning("pressure", filesystem=mountpoint, avail_bytes=avail,
                            size_bytes=total, short_bytes=short, mode="alert",
                            seconds_to_full=None if math.isinf(eta) else round(eta),
                            why=f"{human_bytes(avail)} free, {human_bytes(short)} short of "
                                "--min-free",
                            action="nothing more is deleted than the rules allow: check the "
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
