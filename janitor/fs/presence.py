"""Who watches a managed directory without holding its lock: a dry-run or standby daemon.

A dry run writes nothing to the tree and a standby janitor does not hold the lock, so neither is
seen in `.janitor.lock`; yet `janitor status` must say they run. Each daemon announces itself on
an abstract Unix socket (`@ckpt-janitor/<pid>.<token>`): nothing on disk, any user of the same
network namespace (a pod's containers share one) can read it, and the kernel removes it when the
process dies, so a killed daemon leaves no stale record. Connecting returns one JSON document, the
daemon's latest record (directories by device and inode, each with its role and watch mode).

What a peer says is shown, never acted on: status only reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time

PREFIX = "ckpt-janitor/"
# Bounds on what status spends on peers: a hostile local user may create many such sockets.
MAX_PEERS = 64
MAX_RECORD_BYTES = 1 << 20
TOTAL_WAIT_S = 2.0


class Announcer:
    """A daemon's socket: serves the latest `publish`ed record to every connection."""

    def __init__(self) -> None:
        self.name = f"{PREFIX}{os.getpid()}.{secrets.token_hex(4)}"
        self._record = b"{}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind("\0" + self.name)
            self._sock.listen(16)
        except OSError:
            self._sock.close()
            raise
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="janitor-presence", daemon=True)
        self._thread.start()

    def publish(self, record: dict[str, object]) -> None:
        self._record = json.dumps(record, sort_keys=True).encode()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(1.0)  # a peer that never reads cannot hold this thread
                with contextlib.suppress(OSError):
                    conn.sendall(self._record)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def peers(table: str = "/proc/net/unix") -> list[dict[str, object]]:
    """The records of every announcing daemon in this network namespace (at most MAX_PEERS,
    within TOTAL_WAIT_S altogether); a peer that does not answer or answers garbage is left out."""
    try:
        with open(table, encoding="ascii", errors="replace") as lines:
            names = sorted({line.split()[-1][1:] for line in lines
                            if line.split() and line.split()[-1].startswith("@" + PREFIX)})
    except OSError:
        return []
    deadline = time.monotonic() + TOTAL_WAIT_S
    found: list[dict[str, object]] = []
    for name in names[:MAX_PEERS]:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        record = _ask(name, min(left, 0.5))
        if record is not None:
            found.append(record)
    return found


def _ask(name: str, timeout_s: float) -> dict[str, object] | None:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError:  # out of fds: the peers are not shown, the rest of status is
        return None
    try:
        sock.settimeout(timeout_s)
        sock.connect("\0" + name)
        data = b""
        while len(data) <= MAX_RECORD_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        record = json.loads(data)
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    return record if isinstance(record, dict) else None


def roles_for(records: list[dict[str, object]], dev: int, ino: int) -> list[dict[str, object]]:
    """What each announcing daemon says of the directory (dev, ino): pid, host, role, watch."""
    said: list[dict[str, object]] = []
    for record in records:
        directories = record.get("directories")
        if not isinstance(directories, list):
            continue
        for directory in directories:
            if (isinstance(directory, dict) and directory.get("dev") == dev
                    and directory.get("ino") == ino):
                said.append({"pid": record.get("pid"), "host": record.get("host"),
                             "since": record.get("since"), "role": directory.get("role"),
                             "watch": directory.get("watch")})
    return said
