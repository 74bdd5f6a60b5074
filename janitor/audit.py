"""The audit trail: one fsynced JSON line per deletion, written before the step is renamed away.

Each record carries what licensed the deletion (the policy, every consumer marker's value and time,
the step's change time, the newest complete step), so `janitor audit verify` can replay the log
against the invariants long after the fact. The log lives outside the managed directories, rotates
by size, and is fail-closed: if a record cannot be written, the step is not deleted.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from janitor.policy import Decision, Plan, Policy
from janitor.scan import Snapshot

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 5
FORMAT_VERSION = 1


def default_path() -> Path:
    """systemd's StateDirectory when set, else the XDG state directory of the user."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "audit.jsonl"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return Path(xdg) / "ckpt-janitor" / "audit.jsonl"


class AuditLog:
    """Append-only JSON lines with fsync per record and size-based rotation (path.1 ... path.N)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS, *, lazy: bool = False) -> None:
        """Open (creating its directory) now, or with `lazy` at the first record: a run that
        deletes nothing then leaves no trace on disk."""
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        self._fd = -1 if lazy else self._open()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably; raises OSError if it could not be (then do not delete)."""
        line = json.dumps({"v": FORMAT_VERSION, "time_ns": time.time_ns(), "host": self._host,
                           "pid": os.getpid(), **record}, sort_keys=True) + "\n"
        data = line.encode("utf-8", "backslashreplace")
        with self._lock:
            if self._fd < 0:
                self._fd = self._open()
            if os.fstat(self._fd).st_size + len(data) > self.max_bytes:
                self._rotate()
            os.write(self._fd, data)
            os.fsync(self._fd)

    def _rotate(self) -> None:
        os.close(self._fd)
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open()
        parent = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)


def deletion_record(snapshot: Snapshot, plan: Plan, policy: Policy,
                    decision: Decision) -> dict[str, Any]:
    """Everything that licensed deleting one entry, as plain data."""
    entry = decision.entry
    return {
        "event": "delete",
        "directory": os.path.abspath(snapshot.path),
        "name": entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
        "step": entry.number,
        "reason": decision.reason.value,
        "complete": entry.complete,
        "step_changed_ns": entry.changed_ns,
        "dev": entry.dev,
        "ino": entry.ino,
        "loaded_step": plan.progress.loaded_step,
        "marker_ns": plan.progress.marker_ns,
        "newest_complete": plan.newest_complete,
        "consumers": [{"file": c.filename, "step": c.step, "mtime_ns": c.mtime_ns,
                       "problem": c.problem} for c in snapshot.consumers],
        "policy": policy.describe(),
        "scanned_ns": snapshot.scanned_ns,
    }


def read_records(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """Every record of the log and its rotated siblings, oldest first: (file, line, record).

    A line that does not parse yields None (a torn last line after a crash, or tampering).
    """
    rotated = sorted(path.parent.glob(f"{path.name}.*"),
                     key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for file in [*[p for p in rotated if p.suffix[1:].isdigit()], path]:
        if not file.exists():
            continue
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    yield file.name, number, None
                    continue
                yield file.name, number, record if isinstance(record, dict) else None
