"""The reclaim worker: frees the bytes of trashed steps off the reconcile loop.

Renames into the trash happen on the loop (fast, and the step leaves the listing at once); the
slow part, unlinking hundreds of GB, happens here on one background thread, so a huge reclaim never
delays the next reaction. That thread, and the workers of --reclaim-workers, run at idle CPU and
I/O priority (janitor.fs.priority): never in the trainer's way. Each job owns a dup of the trash fd,
so the loop may close a directory while a job on it is still running. Reclaim is resumable: a
killed process leaves entries in the trash and the next start reclaims them.

A trash entry that fails (permission, a swapped tree, no fd left) is retried with exponential
backoff per (directory, trash name), not at every rescan, and logged once per failure episode:
a step that can never be reclaimed costs a walk every ten minutes, not one every pass, and the
daemon's open fds stay flat (at most one queued leftover job per directory).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from janitor import protocol
from janitor.fs import priority, reaper
from janitor.fs.sizes import tree_size

log = structlog.get_logger("janitor.reclaim")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 600.0


@dataclass(frozen=True, slots=True)
class Item:
    """One trash entry to reclaim and what it was (for the deletion event)."""

    trash_name: str
    step: int | None
    reason: str


@dataclass(slots=True)
class Job:
    directory: str
    trash_fd: int  # owned by the job: closed when done
    items: list[Item] | None  # None: everything in the trash (leftovers, retries)
    done: threading.Event = field(default_factory=threading.Event)
    # Directory fds (owned, dup'ed) whose renames must be durable before any byte is freed.
    sync_fds: tuple[int, ...] = ()
    # For a leftover job: the trash entries there when it was queued. A step the loop renames
    # into the trash after that is reclaimed by the explicit job the loop queues for it; were the
    # leftover job to take it (between that rename and that job), it would be "leftover".
    present_at_submit: frozenset[str] | None = None


Deleted = Callable[[str, Item, reaper.ReclaimStats], None]
# Trash bytes not yet reclaimed: (directory, its bytes, every directory's bytes).
Pending = Callable[[str, int, int], None]


@dataclass(slots=True)
class _Retry:
    """A trash entry in a failure episode: when to try it again."""

    delay_s: float
    next_at: float
    failures: int = 1


class Reclaimer:
    """One background thread working through reclaim jobs in order."""

    def __init__(self, on_deleted: Deleted, on_pending_bytes: Pending | None,
                 workers: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if workers < 1:
            raise ValueError(f"reclaim workers must be >= 1, got {workers}")
        # >1: each trash entry's subdirectories are unlinked concurrently (network filesystems).
        self._workers = workers
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._on_deleted = on_deleted
        self._on_pending_bytes = on_pending_bytes
        self._pending_bytes: dict[str, int] = {}  # by directory
        # (directory, trash name) of every item queued in an explicit job: a leftover job ("all
        # of the trash", queued by a rescan) skips them, or a step trashed after the leftover job
        # was queued would be reclaimed and reported twice (once as "leftover").
        self._claimed: set[tuple[str, str]] = set()
        self._claimed_lock = threading.Lock()
        # Directories with a leftover job queued and not yet started: a rescan every 0.1 s must
        # not pile up jobs (each holds a dup'ed trash fd) behind a slow one.
        self._leftover_queued: set[str] = set()
        # Failing entries and their backoff; touched only by the worker thread.
        self._retries: dict[tuple[str, str], _Retry] = {}
        self._clock = clock
        self._thread = threading.Thread(target=self._run, name="janitor-reclaim", daemon=True)
        self._thread.start()

    def submit(self, directory: str, trash_fd: int, items: list[Item] | None,
               sync_fds: tuple[int, ...] = ()) -> Job:
        """Queue a reclaim; `trash_fd` and `sync_fds` are dup'ed, the caller keeps its own.

        `sync_fds` are fsynced before anything is unlinked: the renames into the trash become
        durable here, off the reconcile loop, so a slow disk never delays the next reaction.
        """
        with self._claimed_lock:
            leftover = items is None and not sync_fds
            if leftover and directory in self._leftover_queued:
                return _already_queued(directory)
            job = Job(directory, -1, items, sync_fds=(),
                      present_at_submit=_listing(trash_fd) if items is None else None)
            _dup_into(job, trash_fd, sync_fds)  # OSError (EMFILE): nothing queued, no state
            if leftover:
                self._leftover_queued.add(directory)
            if items is not None:
                self._claimed.update((directory, item.trash_name) for item in items)
        self._jobs.put(job)
        return job

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued job is done (for --once and --exit-with-pid)."""
        with self._jobs.all_tasks_done:
            return self._jobs.all_tasks_done.wait_for(
                lambda: self._jobs.unfinished_tasks == 0, timeout_s)

    def _run(self) -> None:
        # Unlinking can wait, the trainer and the loop's reactions cannot: this thread (and the
        # pool it starts) runs at idle CPU and I/O priority, the rest of the daemon at normal.
        priority.idle_this_thread()
        priority.label_this_thread()  # after: a labelled thread is an idle one
        while True:
            job = self._jobs.get()
            try:
                self._work(job)
            except Exception:  # the worker must survive anything one job does
                log.exception("reclaim_job_crashed", directory=job.directory)
            finally:
                if job.items is not None:
                    with self._claimed_lock:
                        self._claimed.difference_update(
                            (job.directory, item.trash_name) for item in job.items)
                os.close(job.trash_fd)
                for fd in job.sync_fds:
                    os.close(fd)
                job.done.set()
                self._jobs.task_done()

    def _work(self, job: Job) -> None:
        reaper.sync_directories(*job.sync_fds)
        items = job.items
        if items is None:
            with self._claimed_lock:
                self._leftover_queued.discard(job.directory)
                claimed = {name for directory, name in self._claimed if directory == job.directory}
            present = reaper.trash_entries(job.trash_fd)
            self._forget_gone(job.directory, set(present))
            if job.present_at_submit is not None:
                present = [name for name in present if name in job.present_at_submit]
            now = self._clock()
            items = [Item(name, reaper.trash_step(name), "leftover") for name in present
                     if name not in claimed and self._due(job.directory, name, now)]
        sizes = self._measure(job, items)
        for item in items:
            stats = reaper.reclaim(job.trash_fd, [item.trash_name], workers=self._workers,
                                   idle=True)
            self._add_pending(job.directory, -sizes.get(item.trash_name, 0))
            if stats.pending or stats.problems:
                self._failed(job.directory, item, stats)
            else:
                self._succeeded(job.directory, item)
                self._on_deleted(job.directory, item, stats)

    def _due(self, directory: str, name: str, now: float) -> bool:
        retry = self._retries.get((directory, name))
        return retry is None or now >= retry.next_at

    def _failed(self, directory: str, item: Item, stats: reaper.ReclaimStats) -> None:
        """Back off this entry; log only the first failure of an episode."""
        key = (directory, item.trash_name)
        retry = self._retries.get(key)
        now = self._clock()
        if retry is None:
            retry = self._retries[key] = _Retry(RETRY_FIRST_S, now + RETRY_FIRST_S)
            name = protocol.printable(item.trash_name)
            log.warning("reclaim_failed", directory=directory, entry=name, step=item.step,
                        why=stats.failed.get(name, "busy (open files on NFS?)"),
                        problems=stats.problems[:5], freed_bytes=stats.bytes,
                        action=f"left in the trash; retried with backoff from "
                               f"{RETRY_FIRST_S:g} s up to {RETRY_MAX_S:g} s")
            return
        retry.failures += 1
        retry.delay_s = min(retry.delay_s * 2, RETRY_MAX_S)
        retry.next_at = now + retry.delay_s

    def _succeeded(self, directory: str, item: Item) -> None:
        retry = self._retries.pop((directory, item.trash_name), None)
        if retry is not None:
            log.info("reclaim_recovered", directory=directory,
                     entry=protocol.printable(item.trash_name), step=item.step,
                     failed_attempts=retry.failures)

    def _forget_gone(self, directory: str, present: set[str]) -> None:
        """Entries no longer in the trash (removed by hand) end their episode."""
        for key in [k for k in self._retries if k[0] == directory and k[1] not in present]:
            del self._retries[key]

    def _measure(self, job: Job, items: list[Item]) -> dict[str, int]:
        """Sizes for the trash-pending gauge; only measured when someone exports it."""
        if self._on_pending_bytes is None:
            return {}
        sizes = {item.trash_name: tree_size(job.trash_fd, item.trash_name) for item in items}
        self._add_pending(job.directory, sum(sizes.values()))
        return sizes

    def _add_pending(self, directory: str, delta: int) -> None:
        if self._on_pending_bytes is not None and delta:
            pending = self._pending_bytes
            pending[directory] = max(0, pending.get(directory, 0) + delta)
            self._on_pending_bytes(directory, pending[directory], sum(pending.values()))


def _dup_into(job: Job, trash_fd: int, sync_fds: tuple[int, ...]) -> None:
    """Give `job` its own dups of the fds, or none at all: when fds run out (EMFILE) the
    ones made are closed again and the OSError goes to the caller, whose steps stay in the
    trash for the next leftover job."""
    made: list[int] = []
    try:
        made.append(os.dup(trash_fd))
        for fd in sync_fds:
            made.append(os.dup(fd))
    except OSError:
        for fd in made:
            os.close(fd)
        raise
    job.trash_fd, job.sync_fds = made[0], tuple(made[1:])


def _listing(trash_fd: int) -> frozenset[str] | None:
    """The trash's entries now, or None (no limit) when it cannot be listed."""
    try:
        return frozenset(reaper.trash_entries(trash_fd))
    except OSError:
        return None


def _already_queued(directory: str) -> Job:
    """What submit returns for a leftover job already waiting: a finished no-op (no fd)."""
    job = Job(directory, -1, None)
    job.done.set()
    return job
