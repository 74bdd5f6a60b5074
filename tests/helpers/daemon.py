"""Daemons for the tests: real `janitor run` processes on real trees in tmp dirs.

`Janitor` starts the daemon with stderr on a pipe and parses every line as JSON on a reader
thread, so tests wait on structured events (with deadlines) instead of sleeping; `Daemon` is the
safety suite's variant (no JANITOR_* of the test's, JSON logs). `NotifySocket` is a real AF_UNIX
datagram socket standing in for systemd. `publish_marker` renames a LOADED_STEP marker into place
(no fsync) and says when, for the latency tests; trees themselves are built by helpers.tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.run import JANITOR, clean_env
from helpers.tree import after_every_step

REPO = Path(__file__).resolve().parents[2]


def janitor_argv() -> list[str]:
    """The installed console script next to this interpreter, else `python -m janitor`."""
    if Path(JANITOR).exists():
        return [JANITOR]
    return [sys.executable, "-m", "janitor"]


# ---- markers, the way the daemon tests publish them -------------------------------------------

def publish_marker(directory: Path, step: int, consumer: str | None = None) -> float:
    """Publish LOADED_STEP[.consumer] atomically; returns time.monotonic() at the rename."""
    name = "LOADED_STEP" + (f".{consumer}" if consumer else "")
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    # No fsync: durability is trainer_hooks' business (tested there); the daemon only needs to
    # see the rename, and an fsync on a busy disk can stall for seconds.
    temporary.write_bytes(f"{step}\n".encode())
    after_every_step(directory, temporary)
    renamed_at = time.monotonic()
    temporary.rename(directory / name)
    return renamed_at


def write_marker_in_place(directory: Path, step: int, consumer: str | None = None) -> None:
    """Rewrite the marker file itself (open, truncate, write): the non-atomic way some use."""
    name = "LOADED_STEP" + (f".{consumer}" if consumer else "")
    probe = directory.parent / f".clock-probe-{os.getpid()}"
    probe.touch()
    try:
        after_every_step(directory, probe)
    finally:
        probe.unlink()
    with (directory / name).open("r+b" if (directory / name).exists() else "wb") as f:
        f.truncate(0)
        f.write(f"{step}\n".encode())


# ---- the daemon --------------------------------------------------------------------------------

class Janitor:
    """A `janitor run` child process whose stderr is parsed as JSON lines by a reader thread."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None,
                 command: str = "run", base_env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> None:
        """`env` is added to `base_env` (default: this process's environment)."""
        self.started_at = time.monotonic()
        base = dict(os.environ) if base_env is None else base_env
        self.proc = subprocess.Popen([*janitor_argv(), command, *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**base, **(env or {})}, cwd=cwd)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.not_json: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    self.not_json.append(line)
                else:
                    if isinstance(event, dict):
                        event["_seen"] = time.monotonic()
                        self.events.append(event)
                    else:
                        self.not_json.append(line)
                self._cond.notify_all()

    def named(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name
                    and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, name: str, timeout_s: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first event `name` whose fields equal `match`, waiting for it up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == name
                         and all(e.get(k) == v for k, v in match.items())]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {name} {match} event within {timeout_s} s; "
                                         f"log so far:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.1))

    def port(self) -> int:
        return int(self.wait_event("http_listening")["port"])

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample from /metrics, or None if it is absent."""
        _, body = self.http("/metrics")
        return parse_metric(body, name, labels)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 10.0) -> tuple[int, float]:
        """Send `signum`; returns (exit code, seconds from the signal to the exit)."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout_s)
        took = time.monotonic() - sent
        self._reader.join(5)
        return code, took

    def wait(self, timeout_s: float = 10.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class Daemon(Janitor):
    """A `janitor run` process (a Janitor) without the test's own JANITOR_* variables, logging
    JSON, run from /; stop() returns the exit code alone."""

    def __init__(self, args: list[str | Path], env: dict[str, str] | None = None) -> None:
        super().__init__(["--log-format", "json", *(str(a) for a in args)],
                         base_env=clean_env(env), cwd=Path("/"))

    def wait_event(self, name: str, timeout_s: float = 20.0, **match: Any) -> dict[str, Any]:
        return super().wait_event(name, timeout_s, **match)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)

    def stop(self, timeout_s: float = 30.0) -> int:  # type: ignore[override]
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code


# The `spawn` fixture (conftest.py): start a daemon; it is closed at teardown.
Spawn = Callable[..., Janitor]


def parse_metric(body: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, rest = sample.partition("{")
        if metric != name:
            continue
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if got == want:
            return float(value)
    return None


def inotify_watches(pid: int) -> int:
    """How many inotify watches process `pid` holds (the `inotify wd:` lines of its fdinfo)."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{name}") as f:
            count += sum(1 for line in f if line.startswith("inotify wd:"))
    return count


def inotify_instances(pid: int) -> int:
    """How many inotify file descriptors process `pid` has open."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:inotify":
                count += 1
    return count


class NotifySocket:
    """A stand-in for systemd's NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout_s: float) -> str | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        text = data.decode()
        self.messages.append((time.monotonic(), text))
        return text

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, what: str,
                 on_message: Callable[[str], None] | None = None) -> str:
        deadline = time.monotonic() + timeout_s
        for _, text in self.messages:
            if predicate(text):
                return text
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} notification within {timeout_s} s; got "
                                     f"{[m for _, m in self.messages]}")
            text = self.receive(left)
            if text is None:
                continue
            if on_message is not None:
                on_message(text)
            if predicate(text):
                return text

    def close(self) -> None:
        self.sock.close()
