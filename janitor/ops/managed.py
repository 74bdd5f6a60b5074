"""One managed directory held open: scan, plan and execute against the same directory fd.

This is the single executor both `janitor sweep` and the daemon use. With dry_run it plans exactly
as the real run does and then stops: no lock, no trash directory, no rename.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from janitor import protocol
from janitor.fs import lock, mounts, reaper, reserved
from janitor.fs.detect import detect
from janitor.fs.scan import deepen, open_directory, scan
from janitor.layouts import AUTO
from janitor.model import ScanOptions, Snapshot
from janitor.ops.audit import AuditLog, deletion_record
from janitor.policy import Plan, Policy, Progress, for_layout, plan


@dataclass(slots=True)
class PassResult:
    """What one reconcile pass over one directory saw, decided and did."""

    path: str
    snapshot: Snapshot
    plan: Plan
    trashed: list[reaper.Trashed] = field(default_factory=list)
    skipped: list[reaper.Skipped] = field(default_factory=list)


class ManagedDirectory:
    """An open managed directory. Holds its lock unless dry_run; close() releases everything."""

    def __init__(self, path: str, *, dry_run: bool, policy: Policy, options: ScanOptions,
                 audit: AuditLog | None = None) -> None:
        self.path = path
        self.audit = audit
        self.dry_run = dry_run
        self.policy = policy
        self.options = options
        self.fd = open_directory(path)
        st = os.fstat(self.fd)
        self.dev, self.ino = st.st_dev, st.st_ino
        # The mount every reserved object must share (a bind mount has its own, st_dev does not).
        self.mount_id = reserved.mount_id(self.fd)
        self._lock: lock.DirectoryLock | None = None
        self._trash_fd: int | None = None
        # With --layout auto: why no layout could be chosen here (then nothing is deleted, and
        # no lock is taken: this janitor does not manage the directory).
        self.refusal: str | None = None
        try:
            if options.layout.name == AUTO:
                self._detect()
            if not dry_run and self.refusal is None:
                self._lock = lock.acquire(self.fd, path, self.holder_record())
        except BaseException:
            os.close(self.fd)
            raise

    def _detect(self) -> None:
        found = detect(self.fd)
        if isinstance(found, str):
            self.refusal = f"layout auto: {found}"
            return
        progress = None if self.options.progress_from_layout else self.policy.progress
        self.options, self.policy = for_layout(found, self.options, self.policy,
                                               progress=progress)

    def holder_record(self) -> dict[str, object]:
        """What the lock file records of this janitor's policy: enough for `janitor status` to
        show the plan the running janitor executes, not one made with its own defaults."""
        return {**self.policy.describe(), "complete_markers": list(self.options.complete_markers),
                "layout": self.options.layout.name,
                "text": str(self.policy)}  # the one line status and the `ready` log print

    def close(self) -> None:
        if self._trash_fd is not None:
            os.close(self._trash_fd)
            self._trash_fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ManagedDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def still_same(self) -> bool:
        """False once the path names another directory than the open one (replaced, unmounted)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def look(self) -> tuple[Snapshot, Plan]:
        """A fresh scan and its plan; no change on disk.

        The scan is shallow; the steps it would delete are then read in depth (`deepen`) and the
        plan made again, which can only keep more. So a pass costs one listing per candidate,
        not one per step.
        """
        snapshot = scan(self.fd, self.path, self.options)
        if self.refusal is not None:  # no layout: every entry is foreign to it; decide nothing
            return snapshot, Plan((), Progress(None, None, self.refusal), None)
        decided = plan(snapshot, self.policy)
        if decided.doomed:
            names = frozenset(d.entry.name for d in decided.doomed)
            snapshot = deepen(self.fd, snapshot, names, self.options)
            decided = plan(snapshot, self.policy)
        return snapshot, decided

    def reconcile(self, stop: Callable[[], bool] | None = None, *,
                  sync: bool = True) -> PassResult:
        """Scan, plan and (unless dry_run) move every doomed entry into the trash.

        `stop` is asked before each rename: a stop request finishes at most the rename in hand.
        With `sync` the renames are fsynced here; the daemon passes False and has its reclaim
        worker fsync both directories before it frees any byte.
        """
        snapshot, decided = self.look()
        return self.execute(snapshot, decided, stop=stop, sync=sync)

    def execute(self, snapshot: Snapshot, decided: Plan, *,
                stop: Callable[[], bool] | None = None, sync: bool = True) -> PassResult:
        """Move every entry `decided` dooms into the trash (unless dry_run): audit record first,
        the lock checked and each step verified through its fd right before its rename. The
        one executor: sweep plans with `look`, the daemon from its index."""
        result = PassResult(self.path, snapshot, decided)
        if self.dry_run or not decided.doomed:
            return result
        trash_fd = self.trash_fd(create=True)
        assert trash_fd is not None
        points = mounts.mount_points()
        for decision in decided.doomed:
            if stop is not None and stop():
                break
            self._keep_lock()
            if self.audit is not None:
                try:  # write-ahead: the record exists before the step is gone
                    self.audit.append(deletion_record(snapshot, decided, self.policy, decision))
                except OSError as exc:
                    result.skipped.append(reaper.Skipped(
                        decision.entry, f"audit log unwritable ({exc.strerror}): not deleted",
                        failed=True))
                    continue
            outcome = reaper.move_to_trash(self.fd, self.path, trash_fd, decision.entry, points)
            if isinstance(outcome, reaper.Skipped) and outcome.trash_gone:
                trash_fd = self.trash_fd(create=True)  # heals: checks, re-creates, verifies
                assert trash_fd is not None
                outcome = reaper.move_to_trash(self.fd, self.path, trash_fd, decision.entry,
                                               points)
            if isinstance(outcome, reaper.Trashed):
                result.trashed.append(outcome)
            else:
                result.skipped.append(outcome)
                self._audit_skip(snapshot, outcome)
        if result.trashed and sync:
            reaper.sync_directories(self.fd, trash_fd)
        return result

    def _keep_lock(self) -> None:
        """Before every rename: the lock file must still be the one this janitor holds. If it
        was removed or replaced, take the lock again (LockHeldError when another janitor got
        it meanwhile: then this one stops deleting here, invariant 8)."""
        assert self._lock is not None
        if self._lock.still_held(self.fd):
            return
        self._lock.release()
        self._lock = None
        self._lock = lock.acquire(self.fd, self.path, self.holder_record())

    def _audit_skip(self, snapshot: Snapshot, skipped: reaper.Skipped) -> None:
        """The delete record above was an intent: say it did not happen (best effort; the step
        is whole either way, and `audit verify` counts it as not deleted)."""
        if self.audit is None:
            return
        with contextlib.suppress(OSError):
            self.audit.append({"event": "skipped", "directory": os.path.abspath(snapshot.path),
                               "name": protocol.printable(skipped.entry.name),
                               "step": skipped.entry.number, "why": skipped.why})

    def trash_fd(self, *, create: bool) -> int | None:
        """The open trash directory (created on first need unless dry_run), checked before every
        use: a trash removed or replaced by hand since it was opened is dropped, then opened or
        re-created and verified again, so renames never go into a deleted directory."""
        held = self._trash_fd
        if held is not None and not reserved.still_named(self.fd, protocol.TRASH_DIR, held):
            os.close(held)
            self._trash_fd = None
        if self._trash_fd is None:
            create = create and not self.dry_run
            self._trash_fd = reaper.open_trash(self.fd, self.mount_id, create=create)
        return self._trash_fd

    def reclaim(self, names: list[str] | None = None, workers: int = 1) -> reaper.ReclaimStats:
        """Free the bytes of what is in the trash (leftovers of a killed run included)."""
        if self.dry_run:
            return reaper.ReclaimStats()
        trash_fd = self.trash_fd(create=False)
        if trash_fd is None:
            return reaper.ReclaimStats()
        return reaper.reclaim(trash_fd, names, workers=workers)
