"""The reclaim worker: frees the bytes of trashed steps off the reconcile loop.

Renames into the trash happen on the loop (fast, and the step leaves the listing at once); the
slow part, unlinking hundreds of GB, happens here on one background thread, so a huge reclaim never
delays the next reaction. Each job owns a dup of the trash fd, so the loop may close a directory
while a job on it is still running. Reclaim is resumable: a killed process leaves entries in the
trash and the next start reclaims them.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from janitor import reaper
from janitor.sizes import tree_size

log = structlog.get_logger("janitor.reclaim")


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


Deleted = Callable[[str, Item, reaper.ReclaimStats], None]


class Reclaimer:
    """One background thread working through reclaim jobs in order."""

    def __init__(self, on_deleted: Deleted, on_pending_bytes: Callable[[int], None] | None,
                 workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"reclaim workers must be >= 1, got {workers}")
        # >1: each trash entry's subdirectories are unlinked concurrently (network filesystems).
        self._workers = workers
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._on_deleted = on_deleted
        self._on_pending_bytes = on_pending_bytes
        self._pending_bytes = 0
        # (directory, trash name) of every item queued in an explicit job: a leftover job ("all
        # of the trash", queued by a rescan) skips them, or a step trashed after the leftover job
        # was queued would be reclaimed and reported twice (once as "leftover").
        self._claimed: set[tuple[str, str]] = set()
        self._claimed_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="janitor-reclaim", daemon=True)
        self._thread.start()

    def submit(self, directory: str, trash_fd: int, items: list[Item] | None,
               sync_fds: tuple[int, ...] = ()) -> Job:
        """Queue a reclaim; `trash_fd` and `sync_fds` are dup'ed, the caller keeps its own.

        `sync_fds` are fsynced before anything is unlinked: the renames into the trash become
        durable here, off the reconcile loop, so a slow disk never delays the next reaction.
        """
        job = Job(directory, os.dup(trash_fd), items, sync_fds=tuple(os.dup(fd) for fd in sync_fds))
        if items is not None:
            with self._claimed_lock:
                self._claimed.update((directory, item.trash_name) for item in items)
        self._jobs.put(job)
        return job

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued job is done (for --once and --exit-with-pid)."""
        with self._jobs.all_tasks_done:
            return self._jobs.all_tasks_done.wait_for(
                lambda: self._jobs.unfinished_tasks == 0, timeout_s)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._work(job)
            except Exception:  # the worker must survive anything one job does
                log.exception("reclaim_failed", directory=job.directory)
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
                claimed = {name for directory, name in self._claimed if directory == job.directory}
            items = [Item(name, _step_of(name), "leftover")
                     for name in reaper.trash_entries(job.trash_fd) if name not in claimed]
        sizes = self._measure(job, items)
        for item in items:
            stats = reaper.reclaim(job.trash_fd, [item.trash_name], workers=self._workers)
            self._add_pending(-sizes.get(item.trash_name, 0))
            if stats.pending or stats.problems:
                log.warning("reclaim_incomplete", directory=job.directory,
                            entry=item.trash_name, pending=bool(stats.pending),
                            problems=stats.problems[:5], retry="next rescan")
            if stats.files or stats.directories or not (stats.pending or stats.problems):
                self._on_deleted(job.directory, item, stats)

    def _measure(self, job: Job, items: list[Item]) -> dict[str, int]:
        """Sizes for the trash-pending gauge; only measured when someone exports it."""
        if self._on_pending_bytes is None:
            return {}
        sizes = {item.trash_name: tree_size(job.trash_fd, item.trash_name) for item in items}
        self._add_pending(sum(sizes.values()))
        return sizes

    def _add_pending(self, delta: int) -> None:
        if self._on_pending_bytes is not None and delta:
            self._pending_bytes = max(0, self._pending_bytes + delta)
            self._on_pending_bytes(self._pending_bytes)


def _step_of(trash_name: str) -> int | None:
    head = trash_name.split(".", 1)[0]
    return int(head) if head.isdigit() and head.isascii() else None
