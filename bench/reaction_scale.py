"""Reaction to a LOADED_STEP publish as the kept steps grow: 100 / 1,000 / 10,000 / 100,000 steps
the janitor must keep forever (multiples of --interval-to-keep), with a trainer writing live steps
above them; the daemon's CPU per publish; start to READY on the largest tree; and the longest
reaction while the rescan timer runs.

The tree, per size K (tmpfs, /dev/shm): `root/run/broadcasts/step_{I}`, `step_{2I}`, ...,
`step_{K*I}` (I = --interval-to-keep, 1000 by default), each holding STABLE, made with os.mkdir and
os.open/close (no fsync); then two live steps and LOADED_STEP naming the lower one (written after
the kept steps: the janitor orders markers and steps by their times). Nothing is deletable at
start. The default interval is large so that no live step of the run is itself a multiple: then
every publish makes exactly one step deletable (with I = 10 every tenth publish would doom
nothing, and the pass it causes would leak into the next sample).

One publish, measured in this process with time.perf_counter():
1. the daemon is idle (its threads' CPU time, /proc/PID/task/*/schedstat, grew by less than 1 ms
   over the last 100 ms; `--back-to-back` skips this wait and publishes at once);
2. the "trainer" publishes step N the way trainer_hooks.staged_step does: a hidden
   `.janitor-staging.N.*` directory, a small file written and fsynced, STABLE written last and
   fsynced, the directory's mtime set and fsynced, renamed to `step_N`, the parent fsynced;
3. the "consumer" publishes LOADED_STEP = N-1 the way trainer_hooks.mark_loaded does (hidden
   temporary, fsync, rename, fsync of the directory); its mtime is made newer than step N-2's
   last change first (invariant 4 on a coarse filesystem clock);
4. reaction = from just before that rename to the first os.path.lexists(step_{N-2}) that says
   False, polled in a tight loop (no sleep) with a deadline.
The trainer and consumer are written out here rather than imported from trainer_hooks, so the
load is byte-for-byte the same whichever checkout's daemon is measured (--janitor-path).
A few warm-up publishes are dropped. Daemon CPU per publish: utime+stime of the daemon
(/proc/PID/stat fields 14 and 15, clock ticks) over the measured publishes, the reclaim thread
included, and per thread (/proc/PID/task/TID/stat; the reclaim threads label themselves
`janitor-reclaim`) to give the figure without the reclaim.

Start to READY: spawn of `python -m janitor run` (PYTHONPATH = the checkout measured, cwd there)
to the READY=1 datagram on NOTIFY_SOCKET; baseline on the same tree: os.listdir plus one os.stat
per entry, and spawn to exit of `python -m janitor --version` (interpreter and imports).

The timer: on the largest tree, a daemon with `--rescan-interval 1` (--rescan-interval-s) and
publishes at random phases of the interval (a random 0..interval sleep before each, no idle wait):
p50/p99/max against the same size's reactions without the timer.

The daemon runs with `--watch inotify --rescan-interval 3600 --audit-log off --log-format json
--log-level warning` and no --metrics-addr (off; `--metrics` serves it on a free port, which also
turns on the per-step sizing behind `ckpt_janitor_directory_bytes`).

    .venv/bin/python bench/reaction_scale.py [--quick] [--sizes 100,1000,10000,100000]
        [--janitor-path DIR] [--out results.json] [--plot docs/img/reaction_vs_kept_steps.png]
        [--before old.json] [--repeat 2]

Targets: reaction p99 <= 10 ms at 10,000 kept steps and p50 there within 2x of p50 at 100; daemon
CPU <= 1 ms per publish at any size; start to READY < 2 s at 100,000; no reaction blocked more
than 50 ms by a timer pass. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import REPO, machine, percentile, write_json

MARKER = "LOADED_STEP"
COMPLETE = "STABLE"
STAGING_PREFIX = ".janitor-staging."
RECLAIM_THREAD = "janitor-reclai"  # the kernel keeps 15 bytes of "janitor-reclaim(-N)"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAYLOAD = os.urandom(4096)
QUIET_WINDOW_S = 0.1
QUIET_CPU_NS = 1_000_000


# ---- the tree, the trainer and the consumer -----------------------------------------------------

def build_kept(managed: Path, kept: int, interval: int) -> None:
    """`step_{interval}` .. `step_{kept * interval}`, each with STABLE: mkdir + open/close."""
    managed.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    for i in range(1, kept + 1):
        step = os.path.join(managed, f"step_{i * interval}")
        os.mkdir(step)
        os.close(os.open(os.path.join(step, COMPLETE), flags, 0o644))


def _newest_change_ns(*paths: str) -> int:
    newest = 0
    for path in paths:
        st = os.lstat(path)
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


class Trainer:
    """Publishes steps as trainer_hooks.staged_step does; remembers each step's last change."""

    def __init__(self, managed: Path) -> None:
        self.managed = managed
        self.changed_ns: dict[int, int] = {}

    def save(self, number: int) -> None:
        parent = os.open(self.managed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            staging = f"{STAGING_PREFIX}{number}.{secrets.token_hex(8)}"
            os.mkdir(staging, 0o777, dir_fd=parent)
            fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
            try:
                for name, data in (("model.pt", PAYLOAD), (COMPLETE, b"")):
                    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                  0o644, dir_fd=fd)
                    try:
                        os.write(out, data)
                        os.fsync(out)
                    finally:
                        os.close(out)
                os.utime(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            target = f"step_{number}"
            os.rename(staging, target, src_dir_fd=parent, dst_dir_fd=parent)
            os.fsync(parent)
        finally:
            os.close(parent)
        step = os.path.join(self.managed, target)
        self.changed_ns[number] = _newest_change_ns(
            step, os.path.join(step, "model.pt"), os.path.join(step, COMPLETE))


def publish_loaded(managed: Path, step: int, newer_than_ns: int) -> float:
    """LOADED_STEP = step as trainer_hooks.mark_loaded writes it; perf_counter() just before the
    rename. Its mtime and ctime are made later than `newer_than_ns` first (coarse clocks)."""
    temporary = os.path.join(managed, f".{MARKER}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{step}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.lstat(temporary)
    while min(st.st_mtime_ns, st.st_ctime_ns) <= newer_than_ns:
        os.utime(temporary)
        st = os.lstat(temporary)
    started = time.perf_counter()
    os.rename(temporary, os.path.join(managed, MARKER))
    parent = os.open(managed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)
    return started


def wait_gone(path: str, deadline: float) -> float | None:
    """perf_counter() at the first lexists(path) == False; None past the deadline. No sleep."""
    lexists, now = os.path.lexists, time.perf_counter
    while lexists(path):
        if now() > deadline:
            return None
    return now()


# ---- the daemon ----------------------------------------------------------------------------------

class NotifySocket:
    """The datagram socket the daemon's sd_notify READY=1 goes to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
        deadline = time.perf_counter() + timeout_s
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no READY=1 from the daemon within {timeout_s:g} s")
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {proc.returncode} before READY")
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if b"READY=1" in data:
                return time.perf_counter()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def daemon_env(janitor_path: Path) -> dict[str, str]:
    """This environment without JANITOR_* settings, importing the janitor from `janitor_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}
    env["PYTHONPATH"] = str(janitor_path)
    return env


# Flags added to every daemon started (--metrics: serve /metrics, which turns on step sizing).
DAEMON_EXTRA: list[str] = []


class Daemon:
    """`python -m janitor run ROOT ...` of the checkout measured, started until READY=1."""

    def __init__(self, janitor_path: Path, root: Path, base: Path, interval: int,
                 rescan_s: float) -> None:
        self.args = [sys.executable, "-m", "janitor", "run", str(root), "--watch", "inotify",
                     "--interval-to-keep", str(interval), "--rescan-interval", f"{rescan_s:g}",
                     "--audit-log", "off", "--log-format", "json", "--log-level", "warning",
                     *DAEMON_EXTRA]
        self.janitor_path = janitor_path
        token = secrets.token_hex(4)
        self.log_path = base / f"daemon-{token}.log"
        # Open until the daemon stops: it also sends STATUS and STOPPING there (a few datagrams).
        self.notify = NotifySocket(base / f"notify-{token}.sock")
        try:
            with self.log_path.open("ab") as log:
                started = time.perf_counter()
                # cwd: `python -m` puts it first on sys.path, so it must be the checkout measured.
                self.proc = subprocess.Popen(
                    self.args, stdout=subprocess.DEVNULL, stderr=log, cwd=janitor_path,
                    env={**daemon_env(janitor_path), "NOTIFY_SOCKET": str(self.notify.path)})
            try:
                self.ready_s = self.notify.wait_ready(self.proc, 900.0) - started
            except BaseException:
                self.proc.kill()
                self.proc.wait()
                raise
        except BaseException:
            self.notify.close()
            raise
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self.notify.close()


def _stat_fields(path: str) -> tuple[str, list[str]]:
    """(comm, fields from field 3 on) of a /proc .../stat line; comm may hold spaces."""
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.read()
    comm = line[line.index("(") + 1: line.rindex(")")]
    return comm, line[line.rindex(")") + 2:].split()


def process_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (every thread, living or exited), in seconds."""
    _, fields = _stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15


def threads_cpu(pid: int) -> dict[int, tuple[str, float, int]]:
    """tid -> (comm, utime + stime in seconds, on-CPU ns from schedstat) of each living thread."""
    out: dict[int, tuple[str, float, int]] = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            comm, fields = _stat_fields(f"/proc/{pid}/task/{name}/stat")
            with open(f"/proc/{pid}/task/{name}/schedstat", encoding="ascii") as f:
                run_ns = int(f.read().split()[0])
            out[int(name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK, run_ns)
    return out


def on_cpu_ns(pid: int) -> int:
    return sum(ns for _, _, ns in threads_cpu(pid).values())


def wait_quiet(pid: int, timeout_s: float) -> float:
    """Wait until the daemon's threads used < 1 ms of CPU over the last 100 ms (a pass finished
    and nothing is queued). Returns the seconds waited. Polls /proc, 100 times a second: this
    readies the daemon for a publish, it does not time one."""
    started = time.perf_counter()
    history: list[tuple[float, int]] = []
    while time.perf_counter() - started < timeout_s:
        now, ns = time.perf_counter(), on_cpu_ns(pid)
        history.append((now, ns))
        while len(history) > 1 and now - history[1][0] >= QUIET_WINDOW_S:
            history.pop(0)
        if now - history[0][0] >= QUIET_WINDOW_S and ns - history[0][1] < QUIET_CPU_NS:
            return now - started
        time.sleep(0.01)
    return time.perf_counter() - started


def cpu_delta(pid: int, before: dict[int, tuple[str, float, int]],
              after: dict[int, tuple[str, float, int]], total_s: float) -> dict[str, float]:
    """CPU seconds by kind of thread: the loop (the main thread), reclaim, the rest (watchdog's
    inotify threads); `unattributed_s` is the process total minus the living threads' sum
    (threads that exited in between, and per-thread rounding to clock ticks)."""
    kinds = {"loop_s": 0.0, "reclaim_s": 0.0, "other_threads_s": 0.0}
    ns = {"loop_s": 0, "reclaim_s": 0, "other_threads_s": 0}
    for tid, (comm, cpu, run_ns) in after.items():
        _, cpu0, run0 = before.get(tid, (comm, 0.0, 0))
        kind = ("loop_s" if tid == pid else
                "reclaim_s" if comm.startswith(RECLAIM_THREAD) else "other_threads_s")
        kinds[kind] += cpu - cpu0
        ns[kind] += run_ns - run0
    kinds["unattributed_s"] = total_s - sum(kinds.values())
    kinds.update({f"{k[:-2]}_schedstat_s": v / 1e9 for k, v in ns.items()})
    return kinds


# ---- baselines -----------------------------------------------------------------------------------

def listdir_stat_s(managed: Path) -> float:
    """os.listdir of the managed directory and one os.stat per entry."""
    started = time.perf_counter()
    for name in os.listdir(managed):
        os.stat(os.path.join(managed, name))
    return time.perf_counter() - started


def version_spawn_s(janitor_path: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "janitor", "--version"], cwd=janitor_path,
                   env=daemon_env(janitor_path), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


# ---- one size ------------------------------------------------------------------------------------

def ms_summary(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50": statistics.median(ms), "p99": percentile(ms, 99),
            "mean": statistics.fmean(ms), "min": min(ms), "max": max(ms)}


class Tree:
    """The managed directory of one size and the live steps above its kept ones."""

    def __init__(self, base: Path, kept: int, interval: int) -> None:
        self.root = base / f"k{kept}"
        self.managed = self.root / "run" / "broadcasts"
        self.kept = kept
        self.interval = interval
        started = time.perf_counter()
        build_kept(self.managed, kept, interval)
        self.trainer = Trainer(self.managed)
        self.next = kept * interval + 1
        for _ in range(2):
            self.trainer.save(self.next)
            self.next += 1
        publish_loaded(self.managed, self.next - 2,
                       max(self.trainer.changed_ns.values()))
        self.build_s = time.perf_counter() - started

    def publish(self) -> tuple[int, float]:
        """The trainer saves step N, the consumer marks N-1 loaded. Returns the step that became
        deletable, N-2 (0 if it is an interval multiple: nothing did), and the rename's time."""
        number = self.next
        self.next += 1
        self.trainer.save(number)
        doomed = number - 2
        started = publish_loaded(self.managed, number - 1, self.trainer.changed_ns[doomed])
        self.trainer.changed_ns.pop(doomed - 1, None)
        return (0 if doomed % self.interval == 0 else doomed), started

    def step_path(self, number: int) -> str:
        return os.path.join(self.managed, f"step_{number}")


def run_publishes(tree: Tree, pid: int, publishes: int, *, quiet: bool, timeout_s: float,
                  gap_s: float = 0.0, budget_s: float = float("inf")) -> dict[str, Any]:
    """`publishes` publishes, each timed (see the module doc); stops early past `budget_s`."""
    reactions: list[float] = []
    missed = nothing_doomed = 0
    started = time.perf_counter()
    for _ in range(publishes):
        if time.perf_counter() - started > budget_s:
            break
        if gap_s:
            time.sleep(random.uniform(0.0, gap_s))  # a random phase of the rescan timer
        if quiet:
            wait_quiet(pid, timeout_s)
        doomed, renamed = tree.publish()
        if not doomed:
            nothing_doomed += 1
            continue
        gone = wait_gone(tree.step_path(doomed), renamed + timeout_s)
        if gone is None:
            missed += 1
        else:
            reactions.append(gone - renamed)
    return {"reactions_s": reactions, "missed": missed, "nothing_doomed": nothing_doomed,
            "published": len(reactions) + missed + nothing_doomed,
            "wall_s": time.perf_counter() - started}


def log_problems(log_path: Path) -> list[str]:
    """The daemon's warning-or-worse events (it runs at --log-level warning), first 20."""
    lines: list[str] = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                lines.append(f"{event.get('level')}: {event.get('event')}")
                continue
            lines.append(line[:200])
    return lines[:20]


def measure_size(base: Path, kept: int, repeat: int, args: argparse.Namespace,
                 tree: Tree | None) -> tuple[dict[str, Any], Tree]:
    if tree is None:
        tree = Tree(base, kept, args.interval_to_keep)
        print(f"  built {kept} kept steps in {tree.build_s:.1f} s", file=sys.stderr, flush=True)
    big = kept >= 100_000
    publishes = min(args.publishes, args.publishes_100k) if big else args.publishes
    warmup = max(1, min(args.warmup, publishes // 10))
    row: dict[str, Any] = {"kept": kept, "repeat": repeat, "interval_to_keep": tree.interval,
                           "loadavg_before": os.getloadavg()}
    starts = args.ready_runs if kept == args.ready_size and repeat == 0 else 1
    if starts > 1 or repeat == 0:
        row["listdir_stat_s"] = [listdir_stat_s(tree.managed) for _ in range(max(3, starts))]
    ready: list[float] = []
    for _ in range(starts - 1):
        daemon = Daemon(args.janitor_path, tree.root, base, tree.interval, 3600)
        ready.append(daemon.ready_s)
        daemon.stop()
    daemon = Daemon(args.janitor_path, tree.root, base, tree.interval, 3600)
    ready.append(daemon.ready_s)
    row["ready_s"] = ready
    timeout = args.timeout_s
    try:
        wait_quiet(daemon.pid, timeout)
        warm = run_publishes(tree, daemon.pid, warmup, quiet=not args.back_to_back,
                             timeout_s=timeout)
        wait_quiet(daemon.pid, timeout)
        threads0, cpu0 = threads_cpu(daemon.pid), process_cpu_s(daemon.pid)
        sched0 = on_cpu_ns(daemon.pid)
        result = run_publishes(tree, daemon.pid, publishes, quiet=not args.back_to_back,
                               timeout_s=timeout, budget_s=args.budget_s)
        settle = wait_quiet(daemon.pid, timeout)  # the passes a publish caused count towards it
        threads1, cpu1 = threads_cpu(daemon.pid), process_cpu_s(daemon.pid)
        sched1 = on_cpu_ns(daemon.pid)
        if args.profile_dir and repeat == 0:
            row["py_spy"] = profile(daemon.pid, tree, args)
    finally:
        daemon.stop()
    count = result["published"]
    total = cpu1 - cpu0
    parts = cpu_delta(daemon.pid, threads0, threads1, total)
    row.update({
        "publishes": count, "warmup_dropped": warm["published"], "missed": result["missed"],
        "warmup_missed": warm["missed"], "nothing_doomed": result["nothing_doomed"],
        "mode": "back-to-back" if args.back_to_back else "idle daemon before each publish",
        "reaction_ms": ms_summary(result["reactions_s"]),
        "samples_ms": [round(s * 1000, 3) for s in result["reactions_s"]],
        "publish_wall_s": result["wall_s"], "settle_after_s": settle,
        "cpu": {"total_s": total, "schedstat_total_s": (sched1 - sched0) / 1e9, **parts,
                "per_publish_ms": 1000 * total / max(1, count),
                "per_publish_excl_reclaim_ms": 1000 * (total - parts["reclaim_s"]) / max(1, count),
                "per_publish_schedstat_ms": (sched1 - sched0) / 1e6 / max(1, count)},
        "loadavg_after": os.getloadavg(),
        "daemon_log": log_problems(daemon.log_path),
    })
    r = row["reaction_ms"]
    print(f"  {kept:>7} kept (run {repeat + 1}): p50 {r.get('p50', float('nan')):8.2f} ms  p99 "
          f"{r.get('p99', float('nan')):8.2f} ms  max {r.get('max', float('nan')):8.2f} ms  "
          f"n={r['n']} missed={row['missed']}  cpu/publish {row['cpu']['per_publish_ms']:.2f} ms"
          f"  READY {statistics.median(ready):.2f} s  load {row['loadavg_after'][0]:.2f}",
          file=sys.stderr, flush=True)
    return row, tree


def profile(pid: int, tree: Tree, args: argparse.Namespace) -> str | None:
    """py-spy record of the daemon over a few more publishes (--profile-dir); the file's path."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return None
    out = Path(args.profile_dir) / f"reaction_k{tree.kept}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--threads", "--idle",
                                 "--format", "raw", "--rate", "500", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # py-spy attaching
        run_publishes(tree, pid, 20 if tree.kept < 100_000 else 3, quiet=False,
                      timeout_s=args.timeout_s)
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    return str(out)


def measure_rescan(base: Path, tree: Tree, args: argparse.Namespace) -> dict[str, Any]:
    """Publishes at random phases of a short --rescan-interval on the largest tree."""
    interval = args.rescan_interval_s
    daemon = Daemon(args.janitor_path, tree.root, base, tree.interval, interval)
    try:
        cpu0, t0 = process_cpu_s(daemon.pid), time.perf_counter()
        warm = run_publishes(tree, daemon.pid, 1, quiet=False, timeout_s=args.timeout_s,
                             gap_s=interval)
        result = run_publishes(tree, daemon.pid, args.rescan_publishes, quiet=False,
                               timeout_s=args.timeout_s, gap_s=interval, budget_s=args.budget_s)
        cpu1, t1 = process_cpu_s(daemon.pid), time.perf_counter()
    finally:
        daemon.stop()
    return {"kept": tree.kept, "rescan_interval_s": interval,
            "publishes": result["published"], "warmup_dropped": warm["published"],
            "missed": result["missed"], "reaction_ms": ms_summary(result["reactions_s"]),
            "samples_ms": [round(s * 1000, 3) for s in result["reactions_s"]],
            "wall_s": t1 - t0, "timer_intervals": int((t1 - t0) / interval),
            "daemon_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "loadavg_after": os.getloadavg(), "daemon_log": log_problems(daemon.log_path)}


# ---- report --------------------------------------------------------------------------------------

def pooled(rows: list[dict[str, Any]], kept: int) -> dict[str, Any]:
    """Every repeat of one size together: reactions pooled, CPU and READY as medians, and the
    spread of the repeats' p50 and p99."""
    mine = [r for r in rows if r["kept"] == kept]
    samples = [s / 1000 for r in mine for s in r["samples_ms"]]
    ready = [s for r in mine for s in r["ready_s"]]
    listdir = [s for r in mine for s in r.get("listdir_stat_s", [])]
    return {
        "kept": kept, "repeats": len(mine), "reaction_ms": ms_summary(samples),
        "repeat_p50_ms": [r["reaction_ms"].get("p50") for r in mine],
        "repeat_p99_ms": [r["reaction_ms"].get("p99") for r in mine],
        "missed": sum(r["missed"] for r in mine),
        "cpu_per_publish_ms": statistics.median(r["cpu"]["per_publish_ms"] for r in mine),
        "cpu_per_publish_excl_reclaim_ms": statistics.median(
            r["cpu"]["per_publish_excl_reclaim_ms"] for r in mine),
        "cpu_per_publish_schedstat_ms": statistics.median(
            r["cpu"]["per_publish_schedstat_ms"] for r in mine),
        "ready_s": statistics.median(ready), "ready_runs_s": ready,
        "listdir_stat_s": statistics.median(listdir) if listdir else None,
    }


def report(doc: dict[str, Any]) -> list[str]:
    table = doc["summary"]
    base = table[0]["reaction_ms"].get("p50") if table else None
    lines = [f"janitor {doc['janitor']['path']} @ {doc['janitor']['commit']}"
             f"{' (dirty)' if doc['janitor']['dirty'] else ''}; interval-to-keep "
             f"{doc['interval_to_keep']}; {doc['mode']}",
             f"{'kept':>8} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
             f"{'p50/p50(' + str(table[0]['kept']) + ')':>14} {'cpu/pub ms':>10} "
             f"{'excl recl':>9} {'READY s':>8}  repeats p50 / p99"]
    for row in table:
        r = row["reaction_ms"]
        ratio = r.get("p50", float("nan")) / base if base else float("nan")
        spread = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in
                           zip(row["repeat_p50_ms"], row["repeat_p99_ms"], strict=True)
                           if a is not None and b is not None)
        lines.append(f"{row['kept']:>8} {r['n']:>4} {r.get('p50', float('nan')):>9.2f} "
                     f"{r.get('p99', float('nan')):>9.2f} {r.get('max', float('nan')):>9.2f} "
                     f"{ratio:>14.2f} {row['cpu_per_publish_ms']:>10.2f} "
                     f"{row['cpu_per_publish_excl_reclaim_ms']:>9.2f} {row['ready_s']:>8.2f}  "
                     f"{spread}" + (f"  missed {row['missed']}" if row["missed"] else ""))
    ready = doc.get("ready")
    if ready:
        lines.append(f"start to READY at {ready['kept']} kept: p50 {ready['ready_s']:.2f} s "
                     f"(runs {', '.join(f'{s:.2f}' for s in ready['ready_runs_s'])}); baseline "
                     f"os.listdir + os.stat per entry {ready['listdir_stat_s'] * 1000:.1f} ms "
                     f"(READY {ready['ratio_to_listdir_stat']:.0f}x), `python -m janitor "
                     f"--version` {ready['version_spawn_s'] * 1000:.0f} ms")
    rescan = doc.get("rescan")
    if rescan and rescan["reaction_ms"]["n"]:
        r = rescan["reaction_ms"]
        lines.append(f"rescan timer {rescan['rescan_interval_s']:g} s at {rescan['kept']} kept: "
                     f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms over "
                     f"{r['n']} publishes in {rescan['wall_s']:.0f} s "
                     f"({rescan['timer_intervals']} intervals); without "
                     f"the timer p50 {rescan['no_timer_p50_ms']:.1f} ms: longest blocked "
                     f"~{rescan['blocked_ms']:.1f} ms; daemon CPU "
                     f"{rescan['daemon_cpu_percent']:.0f} % of a core")
    return lines


def plot(doc: dict[str, Any], out: str, before: dict[str, Any] | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [(doc, "", "-")] + ([(before, "before ", "--")] if before else [])
    for data, prefix, style in series:
        rows = [r for r in data["summary"] if r["reaction_ms"]["n"]]
        xs = [r["kept"] for r in rows]
        label = f"{prefix}{data['janitor']['commit']}"
        ax.plot(xs, [r["reaction_ms"]["p50"] for r in rows], style, marker="o",
                color="tab:blue", label=f"{label} p50")
        ax.plot(xs, [r["reaction_ms"]["p99"] for r in rows], style, marker="s",
                color="tab:red", label=f"{label} p99")
    ax.axhline(10, color="grey", linestyle=":", label="target p99 10 ms (at 10,000)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("kept steps in the managed directory")
    ax.set_ylabel("LOADED_STEP rename -> step N-2 gone (ms)")
    ax.set_title("janitor reaction to a publish vs kept steps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}", file=sys.stderr)


def git_state(path: Path) -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *argv], capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else ""
    return {"path": str(path), "commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


@contextlib.contextmanager
def tmpfs_base() -> Iterator[Path]:
    where = "/dev/shm" if Path("/dev/shm").is_dir() else None
    base = Path(tempfile.mkdtemp(prefix="ckpt-janitor-reaction-", dir=where))
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", "--", str(base)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", action="store_true",
                        help="daemons serve /metrics on a free port (and so size every step for "
                             "the per-directory bytes gauge, off the reaction path)")
    parser.add_argument("--quick", action="store_true",
                        help="sizes 100,1000,10000; 50 publishes a size; 10 under the timer")
    parser.add_argument("--sizes", default=None, help="kept steps, comma-separated "
                        "(default 100,1000,10000,100000)")
    parser.add_argument("--publishes", type=int, default=None, help="per size (default 200)")
    parser.add_argument("--publishes-100k", type=int, default=30,
                        help="cap at 100,000 kept steps and above (a slow daemon takes seconds)")
    parser.add_argument("--warmup", type=int, default=5, help="publishes dropped per size")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each size (the spread)")
    parser.add_argument("--interval-to-keep", type=int, default=1000)
    parser.add_argument("--back-to-back", action="store_true",
                        help="publish as soon as the previous reaction is seen, not once the "
                             "daemon is idle")
    parser.add_argument("--ready-size", type=int, default=None,
                        help="size whose start to READY is repeated (default: the largest)")
    parser.add_argument("--ready-runs", type=int, default=None, help="default 3 (--quick 1)")
    parser.add_argument("--rescan-interval-s", type=float, default=1.0)
    parser.add_argument("--rescan-publishes", type=int, default=None,
                        help="publishes under the timer (default 30; --quick 10; 0: skip)")
    parser.add_argument("--timeout-s", type=float, default=60.0,
                        help="a reaction longer than this is counted as missed")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="stop a size's publishes after this long")
    parser.add_argument("--janitor-path", type=Path, default=REPO,
                        help="checkout whose daemon is measured (PYTHONPATH and cwd of it)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "reaction_scale.json"))
    parser.add_argument("--plot", default=None, help="PNG: p50 and p99 against kept steps")
    parser.add_argument("--before", default=None, help="an earlier --out JSON to plot beside")
    parser.add_argument("--profile-dir", default=None,
                        help="py-spy record (raw, --threads --idle) of the daemon at each size")
    args = parser.parse_args()
    if args.metrics:
        DAEMON_EXTRA.extend(["--metrics-addr", "127.0.0.1:0"])
    args.janitor_path = args.janitor_path.resolve()
    if not (args.janitor_path / "janitor" / "__main__.py").exists():
        parser.error(f"--janitor-path {args.janitor_path}: no janitor/__main__.py there")
    sizes = [int(s) for s in (args.sizes or ("100,1000,10000" if args.quick
                                             else "100,1000,10000,100000")).split(",")]
    if args.publishes is None:
        args.publishes = 50 if args.quick else 200
    if args.ready_runs is None:
        args.ready_runs = 1 if args.quick else 3
    if args.rescan_publishes is None:
        args.rescan_publishes = 10 if args.quick else 30
    if args.ready_size is None:
        args.ready_size = max(sizes)
    elif args.ready_size not in sizes:
        parser.error(f"--ready-size {args.ready_size} is not one of --sizes {sizes}: the start to "
                     "READY is measured on a tree the run builds")
    if args.interval_to_keep * (max(sizes) + 1) > 10**18:
        parser.error("--interval-to-keep too large for these sizes")
    try:
        facts = machine()
    except Exception as exc:  # the checkout running the bench may be mid-refactor
        facts = {"nproc": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                 "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "machine_error": repr(exc)}
    doc: dict[str, Any] = {"benchmark": "reaction_scale", "machine": facts,
                           "janitor": git_state(args.janitor_path), "quick": args.quick,
                           "interval_to_keep": args.interval_to_keep,
                           "mode": "back-to-back publishes" if args.back_to_back
                           else "daemon idle before each publish", "sizes": []}
    print(f"measuring {doc['janitor']['path']} @ {doc['janitor']['commit']}", file=sys.stderr)
    with tmpfs_base() as base:
        doc["tree_filesystem"] = subprocess.run(["stat", "-f", "-c", "%T", str(base)],
                                                capture_output=True, text=True,
                                                check=False).stdout.strip()
        last: Tree | None = None
        for kept in sizes:
            tree: Tree | None = None
            for repeat in range(args.repeat):
                row, tree = measure_size(base, kept, repeat, args, tree)
                doc["sizes"].append(row)
            if last is not None:  # keep only the largest tree (for the timer runs)
                subprocess.run(["rm", "-rf", "--", str(last.root)], check=False)
            last = tree
        doc["summary"] = [pooled(doc["sizes"], k) for k in sizes]
        ready_row = next(r for r in doc["summary"] if r["kept"] == args.ready_size)
        doc["ready"] = {**ready_row, "kept": args.ready_size,
                        "ratio_to_listdir_stat": ready_row["ready_s"]
                        / ready_row["listdir_stat_s"],
                        "version_spawn_s": statistics.median(
                            version_spawn_s(args.janitor_path) for _ in range(3))}
        if args.rescan_publishes and last is not None:
            print(f"  timer: --rescan-interval {args.rescan_interval_s:g} at {last.kept} kept",
                  file=sys.stderr, flush=True)
            rescan = measure_rescan(base, last, args)
            no_timer = next(r for r in doc["summary"] if r["kept"] == last.kept)["reaction_ms"]
            rescan["no_timer_p50_ms"] = no_timer.get("p50", float("nan"))
            rescan["no_timer_max_ms"] = no_timer.get("max", float("nan"))
            rescan["blocked_ms"] = (rescan["reaction_ms"].get("max", float("nan"))
                                    - rescan["no_timer_p50_ms"])
            doc["rescan"] = rescan
    doc["loadavg_at_end"] = os.getloadavg()
    for line in report(doc):
        print(line)
    write_json(args.out, doc)
    if args.plot:
        before = json.loads(Path(args.before).read_text()) if args.before else None
        plot(doc, args.plot, before)


if __name__ == "__main__":
    main()
