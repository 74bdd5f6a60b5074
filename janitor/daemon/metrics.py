"""Prometheus metrics of the daemon, on a private registry, behind a few methods the loop calls.

Names follow Prometheus conventions: prefix `ckpt_janitor_`, base units (seconds, bytes), `_total`
on counters. Labels are small closed vocabularies (decision reasons, error kinds, watch mode),
each series present from the start, and the mount point of each filesystem holding a managed
directory (bounded by the mounts); never a step number or a directory path, which would grow the
series without bound. The process_* and python_* families of prometheus_client's own collectors
are exported beside them. Serving negotiates OpenMetrics and gzip (`render`).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from janitor.policy import DELETE_REASONS

PREFIX = "ckpt_janitor_"
# A reconcile of an idle directory takes well under a millisecond; a huge tree on NFS, seconds.
RECONCILE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
WATCH_MODES = ("inotify", "poll")
# Every label value the daemon reports, each series present (at 0) from the start: a counter that
# appears only at its first event hides that event from increase() and rate().
ERROR_KINDS = ("open", "lock", "reconcile", "reclaim")
REFUSAL_REASONS = ("no_valid_marker",)


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
        self._would_delete = Counter(f"{p}would_delete", "Steps a dry-run daemon would have "
                                     "moved into trash, by reason (each step once).",
                                     ["reason"], registry=r)
        for reason in sorted(DELETE_REASONS):
            self._deletions.labels(reason=reason.value)
            self._would_delete.labels(reason=reason.value)
        for kind in ERROR_KINDS:
            self._errors.labels(kind=kind)
        self._refusals = Counter(f"{p}refusals",
                                 "Reconciles of a directory that deleted nothing, by reason.",
                                 ["reason"], registry=r)
        for why in REFUSAL_REASONS:
            self._refusals.labels(reason=why)
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
                           "Deprecated (use ckpt_janitor_filesystem_avail_bytes): free bytes on "
                           "the fullest managed filesystem (NaN until measured).", registry=r)
        self._avail = Gauge(f"{p}filesystem_avail_bytes", "Bytes available to the janitor on "
                            "each filesystem holding a managed directory, by mount point.",
                            ["mountpoint"], registry=r)
        self._size = Gauge(f"{p}filesystem_size_bytes", "Size of each filesystem holding a "
                           "managed directory, by mount point.", ["mountpoint"], registry=r)
        self._fs_short = Gauge(f"{p}filesystem_short_bytes", "Bytes a filesystem is short of "
                               "--min-free (0 when it has enough; alert mode).", ["mountpoint"],
                               registry=r)
        self._fs_eta = Gauge(f"{p}filesystem_seconds_to_full", "Seconds until the filesystem "
                             "is full at the rate of the last ten minutes (+Inf when space is "
                             "not falling).", ["mountpoint"], registry=r)
        self._mountpoints: set[str] = set()
        # Per managed directory, labelled by stream (its path below the root, capped in count:
        # see daemon.fleet.MAX_STREAMS); NaN where unknown (no valid marker, no step yet).
        stream = ["stream"]
        self._dir_loaded = Gauge(f"{p}directory_loaded_step", "Effective loaded step of a "
                                 "managed directory (NaN while no valid marker).", stream,
                                 registry=r)
        self._dir_newest = Gauge(f"{p}directory_newest_complete_step", "Newest complete step "
                                 "of a managed directory.", stream, registry=r)
        self._dir_lag = Gauge(f"{p}directory_lag_steps", "Newest complete step minus the "
                              "effective loaded step.", stream, registry=r)
        self._dir_marker_age = Gauge(f"{p}directory_marker_age_seconds", "Seconds since the "
                                     "oldest consumer marker of a managed directory was "
                                     "written (grows while every consumer is stalled).", stream,
                                     registry=r)
        self._dir_bytes = Gauge(f"{p}directory_bytes", "Bytes held by the step (and staging) "
                                "directories of a managed directory, measured once per step "
                                "off the reaction path.", stream, registry=r)
        self._dir_trash = Gauge(f"{p}directory_trash_bytes", "Bytes in a managed directory's "
                                "trash waiting to be reclaimed.", stream, registry=r)
        self._dir_over = Gauge(f"{p}directory_over_budget_bytes", "Bytes a managed directory "
                               "holds beyond --max-bytes (0 within it; alert mode).", stream,
                               registry=r)
        self._per_directory = (self._dir_loaded, self._dir_newest, self._dir_lag,
                               self._dir_marker_age, self._dir_bytes, self._dir_trash,
                               self._dir_over)
        self._standby = Gauge(f"{p}standby_directories", "Managed directories another janitor "
                              "holds, which this one (--standby) waits to take over.",
                              registry=r)
        # NaN, not 0, until measured: a 0 would look like a full disk to an alert.
        self._free.set(math.nan)
        # A count, not a 0/1 flag: `--watch auto` may poll NFS directories and inotify-watch others.
        self._watched = Gauge(f"{p}directories_watched", "Managed directories watched in each "
                              "mode (inotify, or polled where inotify is blind).", ["mode"],
                              registry=r)
        self._watch_mode = Gauge(f"{p}watch_mode", "Deprecated (use ckpt_janitor_directories_"
                                 "watched, the same count under a name that says so); goes in "
                                 "the next release.", ["mode"], registry=r)
        self._watches = Gauge(f"{p}watches", "Inotify watches held (0 in poll mode).", registry=r)
        # The process (CPU, memory, fds, start time) and the interpreter, as every exporter has.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._exposed = _WithoutCreatedSeries(r)

    def deleted(self, reason: str, steps: int = 1) -> None:
        """Count `steps` step directories moved into trash for the policy reason `reason`."""
        self._deletions.labels(reason=reason).inc(steps)

    def would_delete(self, reason: str) -> None:
        """Count a step a dry run would have deleted, for `reason`."""
        self._would_delete.labels(reason=reason).inc()

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

    def set_directory(self, stream: str, loaded: int | None, newest: int | None,
                      marker_written_s: float | None) -> None:
        """The per-directory gauges of one managed directory after a pass (unix times)."""
        nan = math.nan
        self._dir_loaded.labels(stream=stream).set(nan if loaded is None else loaded)
        self._dir_newest.labels(stream=stream).set(nan if newest is None else newest)
        lag = nan if loaded is None or newest is None else max(0, newest - loaded)
        self._dir_lag.labels(stream=stream).set(lag)
        # The age is computed at each scrape, not at the pass: a stall in which trainer and
        # consumers all stop sends no event and runs no pass, and must still show.
        written = marker_written_s
        self._dir_marker_age.labels(stream=stream).set_function(
            (lambda: nan) if written is None else (lambda: max(0.0, time.time() - written)))

    def drop_directory(self, stream: str) -> None:
        """A directory no longer held: its series go."""
        for gauge in self._per_directory:
            with contextlib.suppress(KeyError):
                gauge.remove(stream)

    def set_directory_bytes(self, stream: str, bytes_: int) -> None:
        """What a managed directory's steps hold (daemon.footprint)."""
        self._dir_bytes.labels(stream=stream).set(bytes_)

    def set_directory_trash_bytes(self, stream: str, bytes_: int) -> None:
        """What waits in a managed directory's trash."""
        self._dir_trash.labels(stream=stream).set(bytes_)

    def set_directory_pressure(self, stream: str, over_bytes: int) -> None:
        """Bytes over --max-bytes of one managed directory."""
        self._dir_over.labels(stream=stream).set(over_bytes)

    def set_filesystem_pressure(self, mountpoint: str, short_bytes: int) -> None:
        """Bytes a filesystem is short of --min-free."""
        self._fs_short.labels(mountpoint=mountpoint).set(short_bytes)

    def set_filesystem_forecast(self, mountpoint: str, seconds: float) -> None:
        """Predicted seconds to full from the recent rate."""
        self._fs_eta.labels(mountpoint=mountpoint).set(seconds)

    def set_standby(self, directories: int) -> None:
        """How many managed directories wait for another janitor's lock (--standby)."""
        self._standby.set(directories)

    def set_trash_pending_bytes(self, bytes_: int) -> None:
        """Bytes renamed into trash and not yet reclaimed, over all managed directories."""
        self._trash_pending.set(bytes_)

    def set_filesystems(self, sizes: Mapping[str, tuple[int, int]]) -> None:
        """(available, total) bytes of each filesystem holding a managed directory, by its mount
        point; a filesystem no longer holding one loses its series. The deprecated minimum is
        kept one release."""
        for gone in self._mountpoints - set(sizes):
            self._avail.remove(gone)
            self._size.remove(gone)
            for gauge in (self._fs_short, self._fs_eta):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._mountpoints = set(sizes)
        for mountpoint, (avail, total) in sizes.items():
            self._avail.labels(mountpoint=mountpoint).set(avail)
            self._size.labels(mountpoint=mountpoint).set(total)
        self._free.set(min((a for a, _ in sizes.values()), default=math.nan))

    def set_watching(self, directories_by_mode: Mapping[str, int], watches: int) -> None:
        """How many managed directories each mode ("inotify", "poll") covers; inotify watches held.

        Modes left out are set to 0, so a directory that moved from inotify to polling shows up.
        """
        for mode in {*WATCH_MODES, *directories_by_mode}:
            count = directories_by_mode.get(mode, 0)
            self._watched.labels(mode=mode).set(count)
            self._watch_mode.labels(mode=mode).set(count)
        self._watches.set(watches)

    def render(self, accept: str | None = None,
               accept_encoding: str | None = None) -> tuple[bytes, str, str | None]:
        """The exposition for a scrape's Accept and Accept-Encoding headers: (body, content type,
        content encoding). OpenMetrics when asked for (prometheus_client's own negotiation),
        else the classic text format; gzip when the scraper accepts it."""
        encoder, content_type = choose_encoder(accept or "")
        body = encoder(self._exposed)
        if accept_encoding and "gzip" in accept_encoding.lower():
            return gzip.compress(body), content_type, "gzip"
        return body, content_type, None
