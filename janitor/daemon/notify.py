"""Tell systemd the truth about the daemon: READY, STATUS, WATCHDOG and STOPPING over NOTIFY_SOCKET.

Hand-written sd_notify (the PyPI packages are unmaintained or need C headers): one AF_UNIX datagram
per message, nothing at all when NOTIFY_SOCKET is unset. The watchdog is fed only by the loop that
does the work (`maybe_watchdog` after a successful pass), never by a free-running thread, so a hung
loop is what systemd sees and restarts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify messages; every method is a no-op when the service manager did not ask.

    Not thread-safe, on purpose: only the reconcile loop speaks for the daemon.
    """

    def __init__(self, address: str | None, watchdog_interval_s: float | None) -> None:
        """`address` is NOTIFY_SOCKET as given ('@name' abstract or an absolute path), or None."""
        self._address = address
        self._watchdog_interval_s = watchdog_interval_s
        self._last_ping: float | None = None
        self._sock: socket.socket | None = None
        self._error_logged = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, pid: int | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID; leave the environment untouched."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("@", "/")):
            # systemd also knows vsock: addresses; we never run inside a VM's guest manager.
            log.warning("notify_socket_unsupported", address=address)
            address = None
        return cls(address, _watchdog_interval(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        """True when a service manager listens on NOTIFY_SOCKET."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between pings: half of WATCHDOG_USEC, or None when no watchdog is ours."""
        return self._watchdog_interval_s

    def ready(self, status: str) -> None:
        """Announce that the first full reconcile finished and the daemon is serving."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """Replace the one-line summary `systemctl status` shows."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Ping the watchdog now; prefer `maybe_watchdog`, which paces the pings."""
        self._send("WATCHDOG=1")

    def maybe_watchdog(self, now: float) -> bool:
        """Ping if `watchdog_interval_s` passed since the last ping (monotonic `now`); True if sent.

        Cheap enough to call after every successful reconcile pass.
        """
        interval = self._watchdog_interval_s
        if self._address is None or interval is None:
            return False
        if self._last_ping is not None and now - self._last_ping < interval:
            return False
        self._last_ping = now
        self.watchdog()
        return True

    def stopping(self) -> None:
        """Announce an orderly shutdown, so systemd does not count it as a failure."""
        self._send("STOPPING=1")

    def close(self) -> None:
        """Close the datagram socket; later messages open a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        # A leading '@' names a Linux abstract socket, whose real name starts with a NUL byte.
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), target)
        except OSError as exc:
            # Notification is advisory: a vanished manager must never take the janitor down.
            if not self._error_logged:
                self._error_logged = True
                log.warning("notify_failed", address=self._address, error=str(exc))


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of WATCHDOG_USEC in seconds, if set, valid and (per WATCHDOG_PID) meant for `pid`."""
    usec, watchdog_pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if watchdog_pid and watchdog_pid != str(pid):
        return None  # the watchdog belongs to another process (e.g. the shell that exec'd us)
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("watchdog_usec_invalid", value=usec)
        return None
    return value / 2 / 1_000_000


def _one_line(text: str) -> str:
    """Newlines separate sd_notify assignments, so a status must not hold one."""
    return " ".join(text.splitlines())
