"""The daemon's reaction latency, idle cost and start-up time, each against a baseline measured in
the same run.

1. Reaction latency: from the rename that publishes LOADED_STEP to the doomed step leaving the
   listing. Detected on the bench side with its own inotify watch on the managed directory (the
   IN_MOVED_FROM the daemon's rename into trash causes), timestamped when the bench's blocking
   read returns; both ends are time.perf_counter() in the bench process. Modes:
   - `janitor run --watch inotify`;
   - `janitor run --watch poll --poll-interval 0.1` (the default 2 s would make 200 publishes take
     minutes; 0.1 s shows the mechanism, the latency scales with the interval);
   - baseline: watchdog's own PollingObserver at the same 0.1 s, in this process, whose handler
     runs the same ManagedDirectory.reconcile on the same kind of tree.
   Each publish dooms exactly one step; publishes are spaced by a random 5-105 ms gap, so they
   fall at random phases of a poll interval (a fixed short gap would always publish just after
   the tick that handled the previous one, and measure almost a full interval).
2. Idle cost: `janitor run` watching 10 managed directories of 100 steps each (nothing to delete)
   over 60 s (`--quick`: 15 s): CPU time as a percentage of one core (psutil cpu_times before and
   after), RSS at the end, and inotify watches (the `inotify wd:` lines of /proc/PID/fdinfo/*).
   Baseline over the same window: `python -c 'import time; time.sleep(...)'`.
3. Start to READY: spawn with NOTIFY_SOCKET pointing at a datagram socket of the bench, until
   READY=1 arrives (after the first reconcile of the 10x100 tree), 10 runs. Baselines: spawn to
   exit of `python -c pass` and of `janitor --version`.

    .venv/bin/python bench/daemon_bench.py [--quick] [--out bench/results/daemon_bench.json]

Prints a table and writes JSON. Targets (from the daemon issue): inotify p99 < 20 ms, idle CPU
< 0.2 % of a core, RSS < 40 MB, start to READY < 0.5 s. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from _common import REPO, janitor_command, machine, scratch, summary, write_json

from janitor.model import ScanOptions
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy

IN_MOVED_FROM = 0x40
IN_DELETE = 0x200
_EVENT = struct.Struct("iIII")
POLL_INTERVAL_S = 0.1


# ---- the bench's own inotify ------------------------------------------------------------------

class Inotify:
    """A minimal inotify reader (ctypes): which names left one directory, and when."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, str(directory).encode(), IN_MOVED_FROM | IN_DELETE) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def wait_gone(self, name: str, timeout_s: float) -> float | None:
        """perf_counter() when `name` leaves the directory, or None after `timeout_s`."""
        deadline = time.perf_counter() + timeout_s
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            data = os.read(self.fd, 65536)
            seen = time.perf_counter()
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if raw.rstrip(b"\0").decode() == name:
                    return seen

    def close(self) -> None:
        os.close(self.fd)


# ---- trees and markers ------------------------------------------------------------------------

def make_steps(directory: Path, numbers: range) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        (directory / f"step_{number}").mkdir()
        (directory / f"step_{number}" / "STABLE").touch()


def newest_change_ns(directory: Path) -> int:
    newest = 0
    for entry in os.scandir(directory):
        if entry.name.startswith("step_"):
            for st in (entry.stat(follow_symlinks=False),
                       os.stat(Path(entry.path) / "STABLE")):
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def publish(directory: Path, step: int, newest_ns: int) -> float:
    """Write LOADED_STEP atomically (its mtime past every step's change); perf_counter at rename."""
    temporary = directory / ".LOADED_STEP.bench.tmp"
    temporary.write_bytes(f"{step}\n".encode())
    while temporary.stat().st_mtime_ns <= newest_ns:  # coarse filesystem clocks: see invariant 4
        os.utime(temporary)
    started = time.perf_counter()
    os.rename(temporary, directory / "LOADED_STEP")
    return started


def latency_tree(base: Path, publishes: int) -> tuple[Path, Path, int]:
    root = base / "root"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, publishes + 3))
    newest = newest_change_ns(managed)
    publish(managed, 1, newest)
    return root, managed, newest


def measure_publishes(managed: Path, newest: int, publishes: int) -> dict[str, Any]:
    """Publish LOADED_STEP = i+1 for i = 1..publishes; each dooms step_i."""
    watch = Inotify(managed)
    latencies: list[float] = []
    missed = 0
    try:
        for i in range(1, publishes + 1):
            # A random phase within a poll interval: publishing right after the previous
            # deletion would always land just after a poll tick and measure ~one full interval.
            time.sleep(random.uniform(0.005, 0.005 + POLL_INTERVAL_S))
            started = publish(managed, i + 1, newest)
            gone = watch.wait_gone(f"step_{i}", timeout_s=5.0)
            if gone is None:
                missed += 1
            else:
                latencies.append(gone - started)
    finally:
        watch.close()
    result: dict[str, Any] = {"missed": missed,
                              "samples_ms": [round(v * 1000, 3) for v in latencies]}
    if latencies:
        result.update({k: v * 1000 if k != "n" else v for k, v in summary(latencies).items()})
    return result


# ---- the daemon -------------------------------------------------------------------------------

class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_ready(self, timeout_s: float) -> float:
        deadline = time.perf_counter() + timeout_s
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("no READY=1 from the daemon")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if b"READY=1" in data:
                return time.perf_counter()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def start_daemon(root: Path, base: Path, args: list[str]) -> tuple[subprocess.Popen[bytes], float]:
    """Start `janitor run`; returns the process and seconds from spawn to READY=1."""
    notify = NotifySocket(base / f"notify-{random.getrandbits(32)}.sock")
    log = (base / "daemon.log").open("ab")
    try:
        started = time.perf_counter()
        proc = subprocess.Popen([*janitor_command(), "run", str(root), *args],
                                stdout=subprocess.DEVNULL, stderr=log, cwd=REPO,
                                env={**os.environ, "NOTIFY_SOCKET": str(notify.path)})
        try:
            ready = notify.wait_ready(30.0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc, ready - started
    finally:
        notify.close()
        log.close()


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def inotify_watches(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                count += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def bench_daemon_latency(mode: str, publishes: int) -> dict[str, Any]:
    with scratch(f"latency-{mode}") as base:
        root, managed, newest = latency_tree(base, publishes)
        args = ["--watch", mode, "--rescan-interval", "3600"]
        if mode == "poll":
            args += ["--poll-interval", str(POLL_INTERVAL_S)]
        proc, _ = start_daemon(root, base, args)
        try:
            return measure_publishes(managed, newest, publishes)
        finally:
            stop_daemon(proc)


def bench_polling_observer_latency(publishes: int) -> dict[str, Any]:
    """Baseline: watchdog's PollingObserver at the same interval driving the same reconcile."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers.polling import PollingObserver

    with scratch("latency-pollingobserver") as base:
        _root, managed, newest = latency_tree(base, publishes)
        directory = ManagedDirectory(str(managed), dry_run=False, policy=Policy(),
                                     options=ScanOptions())
        lock = threading.Lock()

        class Reconcile(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                with lock:
                    directory.reconcile()

        observer = PollingObserver(timeout=POLL_INTERVAL_S)
        observer.schedule(Reconcile(), str(managed), recursive=False)
        observer.start()
        try:
            return measure_publishes(managed, newest, publishes)
        finally:
            observer.stop()
            observer.join()
            directory.close()


# ---- idle cost and start-up -------------------------------------------------------------------

def idle_tree(base: Path) -> Path:
    root = base / "root"
    for run in range(10):
        managed = root / f"run{run}" / "broadcasts"
        make_steps(managed, range(1, 101))
        publish(managed, 1, newest_change_ns(managed))
    return root


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def bench_idle(seconds: float) -> dict[str, Any]:
    with scratch("idle") as base:
        root = idle_tree(base)
        daemon, _ = start_daemon(root, base, [])
        sleeper = subprocess.Popen([sys.executable, "-c",
                                    f"import time; time.sleep({seconds + 30})"])
        try:
            time.sleep(1.0)  # let both settle (imports done, first pass finished)
            watched = psutil.Process(daemon.pid)
            baseline = psutil.Process(sleeper.pid)
            cpu0, base0, t0 = cpu_seconds(watched), cpu_seconds(baseline), time.perf_counter()
            time.sleep(seconds)
            cpu1, base1, t1 = cpu_seconds(watched), cpu_seconds(baseline), time.perf_counter()
            wall = t1 - t0
            return {
                "seconds": round(wall, 2),
                "directories": 10, "steps_per_directory": 100,
                "janitor_cpu_percent": 100 * (cpu1 - cpu0) / wall,
                "janitor_rss_mb": watched.memory_info().rss / 2**20,
                "janitor_inotify_watches": inotify_watches(daemon.pid),
                "sleeper_cpu_percent": 100 * (base1 - base0) / wall,
                "sleeper_rss_mb": baseline.memory_info().rss / 2**20,
            }
        finally:
            sleeper.kill()
            sleeper.wait()
            stop_daemon(daemon)


def spawn_to_exit(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def bench_startup(runs: int) -> dict[str, Any]:
    with scratch("startup") as base:
        root = idle_tree(base)
        ready: list[float] = []
        for _ in range(runs):
            proc, took = start_daemon(root, base, [])
            ready.append(took)
            stop_daemon(proc)
        python_pass = [spawn_to_exit([sys.executable, "-c", "pass"]) for _ in range(runs)]
        version = [spawn_to_exit([*janitor_command(), "--version"]) for _ in range(runs)]

    def ms(values: list[float]) -> dict[str, float]:
        return {k: v * 1000 if k != "n" else v for k, v in summary(values).items()}

    return {"spawn_to_ready_ms": ms(ready), "python_pass_ms": ms(python_pass),
            "janitor_version_ms": ms(version)}


# ---- report -----------------------------------------------------------------------------------

def table(results: dict[str, Any]) -> list[str]:
    lines = ["reaction latency, LOADED_STEP rename -> doomed step gone (ms)",
             f"  {'mode':<34} {'n':>4} {'p50':>8} {'p99':>8} {'max':>8} {'missed':>6}"]
    for label, key in (("janitor --watch inotify", "inotify"),
                       (f"janitor --watch poll ({POLL_INTERVAL_S} s)", "poll"),
                       (f"watchdog PollingObserver ({POLL_INTERVAL_S} s)", "polling_observer")):
        r = results["latency"][key]
        lines.append(f"  {label:<34} {r.get('n', 0):>4} {r.get('p50', float('nan')):>8.2f} "
                     f"{r.get('p99', float('nan')):>8.2f} {r.get('max', float('nan')):>8.2f} "
                     f"{r['missed']:>6}")
    poll, observer = results["latency"]["poll"], results["latency"]["polling_observer"]
    if "p50" in poll and "p50" in observer:
        lines.append(f"  poll / PollingObserver: p50 {poll['p50'] / observer['p50']:.2f}x, "
                     f"p99 {poll['p99'] / observer['p99']:.2f}x")
    idle = results["idle"]
    lines += [f"idle over {idle['seconds']} s, 10 directories x 100 steps",
              f"  janitor: CPU {idle['janitor_cpu_percent']:.3f} % of a core, "
              f"RSS {idle['janitor_rss_mb']:.1f} MB, {idle['janitor_inotify_watches']} "
              "inotify watches",
              f"  sleeping python: CPU {idle['sleeper_cpu_percent']:.3f} %, "
              f"RSS {idle['sleeper_rss_mb']:.1f} MB "
              f"(janitor RSS {idle['janitor_rss_mb'] / idle['sleeper_rss_mb']:.1f}x)"]
    start = results["startup"]
    lines.append("start-up (ms)            p50      p99      max")
    for label, key in (("spawn -> READY=1", "spawn_to_ready_ms"),
                       ("python -c pass", "python_pass_ms"),
                       ("janitor --version", "janitor_version_ms")):
        r = start[key]
        lines.append(f"  {label:<20} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}")
    ratio = start["spawn_to_ready_ms"]["p50"] / start["python_pass_ms"]["p50"]
    lines.append(f"  READY / python -c pass: {ratio:.1f}x (p50)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 publishes, 15 s idle, 5 starts")
    parser.add_argument("--publishes", type=int, default=None,
                        help="publishes per latency mode (default 500; 50 with --quick)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "daemon_bench.json"))
    options = parser.parse_args()
    publishes, idle_s, runs = (50, 15.0, 5) if options.quick else (500, 60.0, 10)
    if options.publishes is not None:
        publishes = options.publishes
    run: Callable[[str], None] = lambda what: print(f"... {what}", file=sys.stderr)  # noqa: E731
    results: dict[str, Any] = {"machine": machine(), "quick": options.quick,
                               "poll_interval_s": POLL_INTERVAL_S, "latency": {}}
    run(f"latency, inotify, {publishes} publishes")
    results["latency"]["inotify"] = bench_daemon_latency("inotify", publishes)
    run(f"latency, poll {POLL_INTERVAL_S} s")
    results["latency"]["poll"] = bench_daemon_latency("poll", publishes)
    run(f"latency, PollingObserver {POLL_INTERVAL_S} s")
    results["latency"]["polling_observer"] = bench_polling_observer_latency(publishes)
    run(f"idle, {idle_s:g} s")
    results["idle"] = bench_idle(idle_s)
    run(f"start-up, {runs} runs")
    results["startup"] = bench_startup(runs)
    results["loadavg_at_end"] = os.getloadavg()
    for line in table(results):
        print(line)
    write_json(options.out, results)


if __name__ == "__main__":
    main()
