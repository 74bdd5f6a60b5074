"""Prometheus metrics of the daemon, on a private registry, behind a few methods the loop calls.

Names follow Prometheus conventions: prefix `ckpt_janitor_`, base units (seconds, bytes), `_total`
on counters. Labels are small closed vocabularies only (decision reasons, error kinds, watch mode);
never a step number or a path, which would grow the series without bound. Per-directory detail
belongs in logs and `janitor status`; the metrics summarise over all managed directories.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PREFIX = "ckpt_janitor_"
# A reconcile of an idle directory takes well under a millisecond; a huge tree on NFS, seconds.
RECONCILE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
WATCH_MODES = ("inotify", "poll")


def _package_version() -> str:
    try:
        return metadata.version("ckpt-janitor")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class _WithoutCreatedSeries(Collector):
    """The registry minus the `*_created` samples prometheus_client adds to counters/histograms.

    In the classic text format each of them becomes a gauge series of its own in Prometheus,
    doubling our series for a value nobody queries. prometheus_client can only switch them off
    process-wide (`disable_created_metrics`); filtering here keeps that global state untouched.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            # collect() builds fresh Metric objects on every call, so trimming them is safe.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """Every metric the daemon exports; one instance per process, each on its own registry.

    The reconcile loop reports what it did through the methods below; `render()` is what
    `/metrics` serves. Counters only go up; `set_*` methods overwrite a gauge with the latest
    observation over all managed directories.
    """

    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, PREFIX
        self._build_info = Gauge(f"{p}build_info", "Always 1; the version label says which build.",
                                 ["version"], registry=r)
        self._build_info.labels(version=version or _package_version()).set(1)
        self._deletions = Counter(f"{p}deletions", "Step directories moved into trash, by reason.",
                                  ["reason"], registry=r)
        self._reclaimed_bytes = Counter(f"{p}reclaimed_bytes", "Bytes freed by reclaiming trash.",
                                        registry=r)
        self._reclaimed_files = Counter(f"{p}reclaimed_files", "Files unlinked from trash.",
                                        registry=r)
        self._errors = Counter(f"{p}errors", "Errors met and survived, by kind.", ["kind"],
                               registry=r)
        self._refusals = Counter(f"{p}refusals",
                                 "Reconciles of a directory that deleted nothing, by reason.",
                                 ["reason"], registry=r)
        self._overflows = Counter(f"{p}inotify_overflows",
                                  "Inotify queue overflows (each forces a full reconcile).",
                                  registry=r)
        self._index_mismatches = Counter(
            f"{p}index_mismatches", "Names where a timer rescan found a directory's in-memory "
            "index wrong (a missed event: a bug; the rescan corrected it).", registry=r)
        self._reconcile_duration = Histogram(f"{p}reconcile_duration_seconds",
                                             "Wall time of one reconcile pass.",
                                             buckets=RECONCILE_BUCKETS_S, registry=r)
        self._last_reconcile = Gauge(f"{p}last_reconcile_timestamp_seconds",
                                     "Unix time the last reconcile pass finished.", registry=r)
        self._managed = Gauge(f"{p}managed_directories", "Managed directories being kept.",
                              registry=r)
        self._lag_max = Gauge(f"{p}loaded_step_lag_steps_max",
                              "Largest lag, in steps, of the effective loaded step behind the "
                              "newest complete step, over directories with a valid marker.",
                              registry=r)
        self._without_marker = Gauge(f"{p}directories_without_valid_marker",
                                     "Managed directories where a missing or bad marker blocks "
                                     "all deletion.", registry=r)
        self._trash_pending = Gauge(f"{p}trash_pending_bytes",
                                    "Bytes in trash waiting to be reclaimed.", registry=r)
        self._free = Gauge(f"{p}filesystem_free_bytes",
                           "Free bytes on the fullest managed filesystem (NaN until measured).",
                           registry=r)
        # NaN, not 0, until measured: a 0 would look like a full disk to an alert.
        self._free.set(math.nan)
        # A count, not a 0/1 flag: `--watch auto` may poll NFS directories and inotify-watch others.
        self._watch_mode = Gauge(f"{p}watch_mode", "Managed directories watched in each mode.",
                                 ["mode"], registry=r)
        self._watches = Gauge(f"{p}watches", "Inotify watches held (0 in poll mode).", registry=r)
        self._exposed = _WithoutCreatedSeries(r)

    def deleted(self, reason: str, steps: int = 1) -> None:
        """Count `steps` step directories moved into trash for the policy reason `reason`."""
        self._deletions.labels(reason=reason).inc(steps)

    def reclaimed(self, bytes_: int, files: int) -> None:
        """Count bytes and files freed by the reclaim worker (call per chunk, not at the end)."""
        self._reclaimed_bytes.inc(bytes_)
        self._reclaimed_files.inc(files)

    def error(self, kind: str) -> None:
        """Count an error the daemon survived, e.g. kind="scan", "rename", "reclaim"."""
        self._errors.labels(kind=kind).inc()

    def refused(self, reason: str) -> None:
        """Count a directory reconcile that deleted nothing on principle, e.g. "marker_missing"."""
        self._refusals.labels(reason=reason).inc()

    def inotify_overflow(self) -> None:
        """Count an inotify queue overflow."""
        self._overflows.inc()

    def index_mismatch(self, names: int) -> None:
        """Count names a rescan found the index wrong about."""
        self._index_mismatches.inc(names)

    def reconcile_finished(self, duration_s: float, unix_time: float) -> None:
        """Record a finished pass: its duration and when it ended (`time.time()`, not monotonic)."""
        self._reconcile_duration.observe(duration_s)
        self._last_reconcile.set(unix_time)

    def set_directory_lags(self, lags: Iterable[int | None]) -> None:
        """Summarise every managed directory's lag in steps; None for one without a valid marker.

        The maximum lag is 0 when no directory has a valid marker; read it together with
        `directories_without_valid_marker`.
        """
        lag_values = list(lags)
        valid = [lag for lag in lag_values if lag is not None]
        self._managed.set(len(lag_values))
        self._without_marker.set(len(lag_values) - len(valid))
        self._lag_max.set(max(valid, default=0))

    def set_trash_pending_bytes(self, bytes_: int) -> None:
        """Bytes renamed into trash and not yet reclaimed, over all managed directories."""
        self._trash_pending.set(bytes_)

    def set_filesystem_free_bytes(self, free_bytes: Iterable[int]) -> None:
        """Free bytes of each managed filesystem; the gauge keeps the smallest (NaN for none)."""
        self._free.set(min(free_bytes, default=math.nan))

    def set_watching(self, directories_by_mode: Mapping[str, int], watches: int) -> None:
        """How many managed directories each mode ("inotify", "poll") covers; inotify watches held.

        Modes left out are set to 0, so a directory that moved from inotify to polling shows up.
        """
        for mode in {*WATCH_MODES, *directories_by_mode}:
            self._watch_mode.labels(mode=mode).set(directories_by_mode.get(mode, 0))
        self._watches.set(watches)

    def render(self) -> bytes:
        """The text exposition of every metric; serve it as CONTENT_TYPE_LATEST."""
        return generate_latest(self._exposed)
