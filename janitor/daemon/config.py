"""What `janitor run` was asked to do (DaemonConfig), and the one way it fails to start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from janitor.budget import NO_BUDGET, Budget
from janitor.model import ScanOptions
from janitor.ops.audit import AuditLog
from janitor.policy import Policy

WatchMode = Literal["auto", "inotify", "poll"]
Mode = Literal["inotify", "poll"]


class StartupError(Exception):
    """The daemon cannot start; `code` is the exit code, the message one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    roots: tuple[str, ...]
    policy: Policy
    options: ScanOptions
    dry_run: bool = False
    max_depth: int = 3
    watch: WatchMode = "auto"
    poll_interval_s: float = 2.0
    rescan_interval_s: float = 30.0
    metrics_addr: tuple[str, int] | None = None
    once: bool = False
    exit_with_pid: int | None = None
    audit: AuditLog | None = None
    reclaim_workers: int = 1
    # Wait for a directory another janitor holds instead of refusing it (several pods, one tree).
    standby: bool = False
    # --max-bytes and --min-free (alert mode): watched, never a reason to delete.
    budget: Budget = NO_BUDGET
