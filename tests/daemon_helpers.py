"""Helpers for the daemon tests: real `janitor run` processes on real trees in tmp dirs.

`Janitor` starts the daemon with stderr on a pipe and parses every line as JSON on a reader
thread, so tests wait on structured events (with deadlines) instead of sleeping. `NotifySocket` is
a real AF_UNIX datagram socket standing in for systemd. The tree helpers write steps and publish
LOADED_STEP markers the way trainer_hooks does (temporary, fsync, rename).
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import janitor_helpers
from janitor_helpers import wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_SCRIPT = Path(sys.executable).with_name("janitor")


def janitor_argv() -> list[str]:
    """The installed console script next to this interpreter, else `python -m janitor`."""
    if _SCRIPT.exists():
        return [str(_SCRIPT)]
    return [sys.executable, "-m", "janitor"]


# ---- trees -------------------------------------------------------------------------------------

def make_steps(directory: Path, numbers: Iterable[int], *, complete: bool = True,
               files: int = 0) -> None:
    """Create `step_N` directories (with `files` small shard files, then STABLE if complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        step = directory / f"step_{number}"
        step.mkdir()
        step_fd = os.open(step, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(files):
                fd = os.open(f"shard_{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                             dir_fd=step_fd)
                os.write(fd, b"x")
                os.close(fd)
        finally:
            os.close(step_fd)
        if complete:
            (step / "STABLE").touch()


def step_numbers(directory: Path) -> set[int]:
    """janitor_helpers.step_numbers as a set, which the daemon tests compare against."""
    return set(janitor_helpers.step_numbers(directory))


def _newest_change_ns(directory: Path) -> int:
    newest = 0
    for name in os.listdir(directory):
        if not name.startswith("step_"):
            continue
        for path in (directory / name, directory / name / "STABLE"):
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def _after_every_step(directory: Path, path: Path) -> None:
    """Bump `path`'s mtime until the filesystem clock is past every step's change time.

    Invariant 4 keeps a step changed at or after the marker's mtime, and filesystem clocks tick
    coarsely: a marker written in the same tick as the last step would license nothing.
    """
    newest = _newest_change_ns(directory)

    def past() -> bool:
        os.utime(path)
        return path.stat().st_mtime_ns > newest

    wait_until(past, 5.0, "the filesystem clock to pass the newest step", interval_s=0.001)


def publish_marker(directory: Path, step: int, consumer: str | None = None) -> float:
    """Publish LOADED_STEP[.consumer] atomically; returns time.monotonic() at the rename."""
    name = "LOADED_STEP" + (f".{consumer}" if consumer else "")
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    # No fsync: durability is trainer_hooks' business (tested there); the daemon only needs to
    # see the rename, and an fsync on a busy disk can stall for seconds.
    temporary.write_bytes(f"{step}\n".encode())
    _after_every_step(directory, temporary)
    renamed_at = time.monotonic()
    temporary.rename(directory / name)
    return renamed_at


def write_marker_in_place(directory: Path, step: int, consumer: str | None = None) -> None:
    """Rewrite the marker file itself (open, truncate, write): the non-atomic way some use."""
    name = "LOADED_STEP" + (f".{consumer}" if consumer else "")
    probe = directory.parent / f".clock-probe-{os.getpid()}"
    probe.touch()
    try:
        _after_every_step(directory, probe)
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
