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
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from janitor import protocol
from janitor.fs import reserved
from janitor.model import Snapshot
from janitor.policy import Decision, Plan, Policy

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
        """Open for appending, verified after opening like every file the janitor writes: a
        regular file of its own, never through a symlink, never blocking on a FIFO (a FIFO with
        no reader would hang the first deletion; a hard link would append to another file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        action = "give the path of a plain file, or 'off'"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
        except OSError as exc:
            raise reserved.open_error(exc, str(self.path), action) from None
        try:
            reserved.check_plain_file(fd, str(self.path), action=action)
        except BaseException:
            os.close(fd)
            raise
        return fd

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


# A record is under a kilobyte; a longer line is not a record and is never held in memory whole.
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of an audit log: its record, or why it is none. Line 0: the whole file."""

    file: str  # the file's name, printable
    line: int
    record: dict[str, Any] | None
    problem: str | None = None


class _ConstantError(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, no JSON writer (nor the janitor)
    writes them."""


def _no_constant(name: str) -> Any:
    raise _ConstantError(name)


def read_log(path: Path) -> Iterator[LogLine]:
    """Every line of the log and its rotated siblings (`path.N`, oldest first), read in binary
    and decoded line by line; never raises for what it finds on disk.

    A sibling that is not a regular file (a directory, a FIFO, a device, a symlink, never
    followed) is one problem line and is not opened; `path` itself is followed, the user named it.
    A missing `path` yields nothing (the caller decides whether that is an error).
    """
    directory = path.parent
    prefix = f"{path.name}."
    try:
        names = os.listdir(directory)
    except OSError as exc:
        names = []
        yield LogLine(protocol.printable(str(directory)), 0, None,
                      f"cannot list the directory for rotated logs: {exc.strerror or exc}")
    rotated = sorted(((int(n[len(prefix):]), n) for n in names if n.startswith(prefix)
                      and n[len(prefix):].isascii() and n[len(prefix):].isdigit()), reverse=True)
    for _, name in rotated:
        yield from _read_file(directory / name, follow=False)
    yield from _read_file(path, follow=True)


def _read_file(path: Path, *, follow: bool) -> Iterator[LogLine]:
    name = protocol.printable(path.name)
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        if not follow:
            yield LogLine(name, 0, None, "vanished while reading (rotated meanwhile?)")
        return
    except OSError as exc:
        yield LogLine(name, 0, None, f"cannot read: {exc.strerror or exc}")
        return
    if not stat.S_ISREG(st.st_mode):
        yield LogLine(name, 0, None, f"not a regular file ({reserved.kind(st.st_mode)}); not read")
        return
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        yield LogLine(name, 0, None, f"cannot read: {exc.strerror or exc}")
        return
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between lstat and open
            yield LogLine(name, 0, None, "not a regular file (replaced while opening); not read")
            return
        number = 0
        while True:
            try:
                raw = handle.readline(MAX_LINE_BYTES + 1)
                too_long = len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n")
                while too_long and raw and not raw.endswith(b"\n"):
                    raw = handle.readline(MAX_LINE_BYTES)
            except OSError as exc:
                yield LogLine(name, number + 1, None, f"cannot read: {exc.strerror or exc}")
                return
            if not raw and not too_long:
                return
            number += 1
            if too_long:
                yield LogLine(name, number, None, f"a line longer than {MAX_LINE_BYTES} bytes, "
                                                  "not a record")
                continue
            yield _parse_line(name, number, raw)


def _parse_line(name: str, number: int, raw: bytes) -> LogLine:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LogLine(name, number, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                           f"{exc.start}): not a record")
    try:
        record = json.loads(text, parse_constant=_no_constant)
    except _ConstantError as exc:
        return LogLine(name, number, None, f"not a JSON record (non-standard constant {exc})")
    except RecursionError:
        return LogLine(name, number, None, "not a JSON record (nested too deeply)")
    except json.JSONDecodeError:
        return LogLine(name, number, None, "not a JSON record (torn or edited line)")
    except Exception as exc:  # noqa: BLE001 (e.g. a number beyond int's digit limit)
        why = protocol.printable(str(exc))[:120]
        return LogLine(name, number, None, f"not a JSON record ({type(exc).__name__}: {why})")
    if not isinstance(record, dict):
        return LogLine(name, number, None, f"not a JSON object ({json_kind(record)})")
    return LogLine(name, number, record)


def json_kind(value: object) -> str:
    """What a JSON value is, in words: 'a string', 'an object', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, words in ((int, "an integer"), (float, "a number"), (str, "a string"),
                        (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return words
    return type(value).__name__


def read_records(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """Every record of the log and its rotated siblings, oldest first: (file, line, record).

    A line that is not a record yields None (a torn last line after a crash, or tampering); a
    file that cannot be read yields (file, 0, None). read_log says why.
    """
    for item in read_log(path):
        yield item.file, item.line, item.record
