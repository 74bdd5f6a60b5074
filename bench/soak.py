"""Soak: a trainer at 20 steps/s, three lagging and stalling consumers, the janitor daemon, and an
independent checker, for --minutes (issue 6, part 6).

The trainer publishes steps with trainer_hooks.staged_step (a manifest and shards, STABLE last);
consumers `LOADED_STEP`, `LOADED_STEP.eval` and `LOADED_STEP.upload` each pick the newest complete
step, load it file by file with random lags and occasional stalls, check every byte against the
manifest, then mark it loaded. The daemon (`janitor run`, a real process) reconciles with
--audit-log. The checker lists the tree every few milliseconds and reports:

- violations: `janitor audit verify` on the audit log, plus its own checks (a step vanished while
  not below every consumer's published marker, an interval multiple or a kept step gone, a step
  present but not whole, trash left after the final pass);
- load failures: a consumer found a file of the step it was loading gone (must be 0);
- disk high-water mark of the tree (trash included), daemon RSS and open fds over time; the daemon
  runs under RLIMIT_NOFILE=256 and its open fds (/proc/<pid>/fd, sampled every second) must stay
  flat: an error if they grow by more than FD_SLACK;
- reaction latency: effective marker published -> every step it dooms gone (percentiles).

Run: python bench/soak.py --minutes 10. Results go to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import trainer_hooks  # noqa: E402
from janitor import protocol  # noqa: E402

JANITOR = str(Path(sys.executable).with_name("janitor"))
CONSUMERS = ("", "eval", "upload")
INTERVAL_TO_KEEP = 1000
MANIFEST = "manifest.json"
# The daemon runs with few fds, as under systemd's LimitNOFILE: a leak shows as EMFILE, not only as
# a growing count. Its open fds may move by a few (a reclaim job's dup'ed trash fd, an inotify
# read in flight), never grow with the number of steps.
DAEMON_NOFILE = 256
FD_SLACK = 6
FD_PEAK_SLACK = 48  # well under DAEMON_NOFILE


@dataclass
class Shared:
    """What the trainer, consumers and checker tell each other (under `lock`)."""

    directory: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    published: dict[str, int] = field(default_factory=dict)  # consumer -> last marker value
    effective: int = -1  # min over all consumers once each has published
    # What each consumer is about to write into its marker, set just before the write: the
    # janitor may act on a marker the moment it exists, before `published` hears of it, so the
    # checker judges deletions against this bound (audit verify checks the exact values).
    publishing: dict[str, int] = field(default_factory=dict)
    bound: int = -1
    pending: list[tuple[float, int]] = field(default_factory=list)  # (publish time, effective)
    latencies: list[float] = field(default_factory=list)
    load_failures: list[str] = field(default_factory=list)
    loads: int = 0
    steps_written: int = 0
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def trainer(shared: Shared, rate: float, rng: random.Random) -> None:
    step, period = 0, 1.0 / rate
    next_at = time.monotonic()
    try:
        while not shared.stop.is_set():
            step += 1
            with trainer_hooks.staged_step(shared.directory, step) as staging:
                listing = {}
                for index in range(4):
                    data = rng.randbytes(rng.randint(1024, 16384))
                    (staging / f"shard_{index}.bin").write_bytes(data)
                    listing[f"shard_{index}.bin"] = len(data)
                (staging / MANIFEST).write_text(json.dumps(listing))
            with shared.lock:
                shared.steps_written = step
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                shared.stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up
    except Exception as exc:
        shared.errors.append(f"trainer: {exc!r}")
        shared.stop.set()


def consumer(shared: Shared, name: str, rng: random.Random) -> None:
    last = -1
    try:
        while not shared.stop.is_set():
            newest = trainer_hooks.newest_complete_step(shared.directory)
            if newest is None or newest <= last:
                shared.stop.wait(0.01)  # the consumer's own poll interval
                continue
            _load(shared, name, newest, rng)
            if rng.random() < 0.01:  # a stall: the event loop hangs for seconds
                shared.stop.wait(rng.uniform(1.0, 5.0))
            _publishing(shared, name, newest)
            trainer_hooks.mark_loaded(shared.directory, newest, name or None)
            _published(shared, name, newest)
            last = newest
    except Exception as exc:
        shared.errors.append(f"consumer {name!r}: {exc!r}")
        shared.stop.set()


def _load(shared: Shared, name: str, step: int, rng: random.Random) -> None:
    """Read the step file by file with lags between files; a missing file is a load failure."""
    step_dir = shared.directory / protocol.step_name(step)
    try:
        listing = json.loads((step_dir / MANIFEST).read_text())
        for rel, size in listing.items():
            shared.stop.wait(rng.uniform(0.0, 0.05))
            got = len((step_dir / rel).read_bytes())
            if got != size:
                with shared.lock:
                    shared.load_failures.append(f"{name or 'main'} step {step}: {rel} has "
                                                f"{got} bytes, not {size}")
                return
    except OSError as exc:
        with shared.lock:
            shared.load_failures.append(f"{name or 'main'} step {step}: {exc}")
        return
    with shared.lock:
        shared.loads += 1


def _publishing(shared: Shared, name: str, step: int) -> None:
    with shared.lock:
        shared.publishing[name] = step
        if len(shared.publishing) == len(CONSUMERS):
            shared.bound = max(shared.bound, min(shared.publishing.values()))


def _published(shared: Shared, name: str, step: int) -> None:
    with shared.lock:
        shared.published[name] = step
        if len(shared.published) == len(CONSUMERS):
            effective = min(shared.published.values())
            if effective > shared.effective:
                shared.effective = effective
                shared.pending.append((time.monotonic(), effective))


def kept_by_policy(number: int) -> bool:
    return number % INTERVAL_TO_KEEP == 0


def checker(shared: Shared, samples: list[dict[str, Any]], pid: int) -> None:
    previous: set[int] = set()
    next_sample = time.monotonic()
    while not shared.stop.is_set():
        present = set(_step_numbers(shared.directory))
        now = time.monotonic()
        with shared.lock:
            # Read after the listing: a step gone from it went on a marker written before now,
            # so within this bound (see Shared.publishing).
            effective = max(shared.effective, shared.bound)
            gone = previous - present
            newest = max(present | previous, default=-1)
            for number in sorted(gone):
                if number >= effective or kept_by_policy(number) or number == newest:
                    shared.violations.append(f"step {number} vanished while the effective "
                                             f"loaded step was at most {effective}")
            still = [(t, value) for t, value in shared.pending
                     if any(n < value and not kept_by_policy(n) for n in present)]
            shared.latencies.extend(now - t for t, value in shared.pending
                                    if (t, value) not in still)
            shared.pending = still
        previous = present
        if now >= next_sample:
            samples.append(_sample(shared.directory, pid, now))
            next_sample = now + 1.0
        time.sleep(0.005)  # the checker's own poll interval


def _step_numbers(directory: Path) -> list[int]:
    numbers = []
    with os.scandir(directory) as listing:
        for entry in listing:
            number = protocol.parse_step_name(entry.name)
            if isinstance(number, int) and entry.is_dir(follow_symlinks=False):
                numbers.append(number)
    return numbers


def _sample(directory: Path, pid: int, now: float) -> dict[str, Any]:
    size = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, name)).st_blocks * 512
    rss = fds = -1
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"t": now, "tree_bytes": size, "rss": rss, "fds": fds}


def final_checks(shared: Shared, audit: Path) -> None:
    directory = shared.directory
    present = set(_step_numbers(directory))
    for number in sorted(present):
        step_dir = directory / protocol.step_name(number)
        try:
            listing = json.loads((step_dir / MANIFEST).read_text())
            for rel, size in listing.items():
                if (step_dir / rel).stat().st_size != size:
                    shared.violations.append(f"step {number}: {rel} has the wrong size")
        except (OSError, ValueError) as exc:
            shared.violations.append(f"step {number} is not whole: {exc}")
    for number in range(INTERVAL_TO_KEEP, shared.steps_written + 1, INTERVAL_TO_KEEP):
        if number not in present:
            shared.violations.append(f"interval multiple step {number} is gone")
    for number in range(max(shared.effective, 1), shared.steps_written + 1):
        if number not in present:
            shared.violations.append(f"step {number} at or above the loaded step is gone")
    with contextlib.suppress(FileNotFoundError):
        leftover = os.listdir(directory / protocol.TRASH_DIR)
        if leftover:
            shared.violations.append(f"trash not reclaimed: {len(leftover)} entries")
    verify = subprocess.run([JANITOR, "audit", "verify", str(audit)], capture_output=True,
                            text=True, check=False)
    if verify.returncode != 0:
        shared.violations.extend(f"audit verify: {line}" for line in verify.stdout.splitlines()
                                 if line.startswith("violation"))
    shared.errors.extend([] if verify.returncode in (0, 1) else [verify.stderr.strip()])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def soak(minutes: float, base: Path, seed: int = 0, rate: float = 20.0) -> dict[str, Any]:
    """Run the soak; returns the figures (violations and load failures must be empty)."""
    directory = base / "broadcasts"
    directory.mkdir(parents=True)
    audit = base / "audit" / "audit.jsonl"
    rng = random.Random(seed)
    daemon = subprocess.Popen(
        [JANITOR, "run", str(directory), "--audit-log", str(audit), "--log-format", "json",
         "--interval-to-keep", str(INTERVAL_TO_KEEP), "--rescan-interval", "5"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")},
        preexec_fn=_few_fds)  # noqa: PLW1509 (no thread is running yet)
    nofile = _open_files_limit(daemon.pid)
    shared = Shared(directory)
    samples: list[dict[str, Any]] = []
    threads = [threading.Thread(target=trainer, args=(shared, rate, random.Random(rng.random())))]
    threads += [threading.Thread(target=consumer, args=(shared, name, random.Random(rng.random())))
                for name in CONSUMERS]
    threads.append(threading.Thread(target=checker, args=(shared, samples, daemon.pid)))
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        shared.stop.wait(minutes * 60)
    finally:
        shared.stop.set()
        for thread in threads:
            thread.join(60)
        if daemon.poll() is not None:
            shared.errors.append(f"the daemon exited early with {daemon.returncode}")
        once = _final_pass(daemon, directory, audit)
    if once != 0:
        shared.errors.append(f"final janitor run --once exited {once}")
    final_checks(shared, audit)
    figures = _figures(shared, samples, audit, time.monotonic() - started, minutes)
    figures["daemon_nofile"] = nofile
    if nofile != DAEMON_NOFILE:
        shared.errors.append(f"the daemon's RLIMIT_NOFILE is {nofile}, not {DAEMON_NOFILE}")
    # A leak shows at the end; a peak is reclaim jobs queued at that moment (each holds dup'ed
    # fds until it runs, more of them on a loaded machine), bounded far below the limit.
    first, last, peak = figures["fds_first"], figures["fds_settled"], figures["fds_max"]
    if first is not None and last - first > FD_SLACK:
        shared.errors.append(f"the daemon's open fds grew from {first} to {last} at the end "
                             f"(more than {FD_SLACK})")
    if first is not None and peak - first > FD_PEAK_SLACK:
        shared.errors.append(f"the daemon's open fds peaked at {peak}, {peak - first} above "
                             f"the start (more than {FD_PEAK_SLACK})")
    return figures


def _few_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))


def _open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of process `pid`, from /proc/<pid>/limits."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def _final_pass(daemon: subprocess.Popen[bytes], directory: Path, audit: Path) -> int:
    """Stop the daemon, then one `run --once`: whatever is in the trash is reclaimed."""
    daemon.terminate()
    try:
        daemon.wait(60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    return subprocess.run([JANITOR, "run", "--once", str(directory), "--audit-log", str(audit),
                           "--interval-to-keep", str(INTERVAL_TO_KEEP)],
                          capture_output=True, check=False).returncode


def _figures(shared: Shared, samples: list[dict[str, Any]], audit: Path, elapsed: float,
             minutes: float) -> dict[str, Any]:
    warm = [s for s in samples if s["t"] - samples[0]["t"] >= min(30.0, minutes * 60 / 4)] \
        if samples else []
    fds = [s["fds"] for s in warm if s["fds"] >= 0]
    rss = [s["rss"] for s in warm if s["rss"] >= 0]
    deletions = sum(1 for line in audit.read_text().splitlines() if line.strip()) \
        if audit.exists() else 0
    return {
        "minutes": minutes,
        "elapsed_s": round(elapsed, 1),
        "steps_written": shared.steps_written,
        "loads": shared.loads,
        "deletions_audited": deletions,
        "violations": shared.violations,
        "load_failures": shared.load_failures,
        "errors": shared.errors,
        "disk_high_water_bytes": max((s["tree_bytes"] for s in samples), default=0),
        "fds_first": fds[0] if fds else None,
        "fds_max": max(fds) if fds else None,
        "fds_last": fds[-1] if fds else None,
        # The fewest over the last five samples: what stays open once queued jobs have run.
        "fds_settled": min(fds[-5:]) if fds else None,
        "rss_first": rss[0] if rss else None,
        "rss_max": max(rss) if rss else None,
        "rss_last": rss[-1] if rss else None,
        "latency_s": {f"p{int(q * 100)}": percentile(shared.latencies, q)
                      for q in (0.5, 0.9, 0.99)} | {"max": max(shared.latencies, default=None),
                                                     "count": len(shared.latencies)},
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=20.0, help="steps per second")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the tree (default: a fresh dir in /dev/shm or /tmp)")
    args = parser.parse_args()
    parent = args.dir or Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix="janitor-soak-", dir=parent))
    try:
        figures = soak(args.minutes, base, args.seed, args.rate)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(figures, indent=2))
    lat = figures["latency_s"]
    print(f"soak: {figures['minutes']} min, {figures['steps_written']} steps written, "
          f"{figures['loads']} loads, {figures['deletions_audited']} deletions audited")
    print(f"violations: {len(figures['violations'])}   load failures: "
          f"{len(figures['load_failures'])}   errors: {len(figures['errors'])}")
    for line in (figures["violations"] + figures["load_failures"] + figures["errors"])[:20]:
        print(f"  {line}")
    print(f"disk high-water: {figures['disk_high_water_bytes'] / 2**20:.1f} MiB")
    print(f"daemon fds: first {figures['fds_first']} max {figures['fds_max']} "
          f"last {figures['fds_last']} (RLIMIT_NOFILE {figures['daemon_nofile']})")
    rss = {k: (figures[f"rss_{k}"] or 0) / 2**20 for k in ("first", "max", "last")}
    print(f"daemon RSS MiB: first {rss['first']:.1f} max {rss['max']:.1f} last {rss['last']:.1f}")
    print("reaction latency (marker -> doomed steps gone): " + "  ".join(
        f"{k} {v * 1000:.0f} ms" if isinstance(v, float) else f"{k} {v}" for k, v in lat.items()))
    print(f"results: {out.relative_to(REPO)}")
    sys.exit(1 if figures["violations"] or figures["load_failures"] or figures["errors"] else 0)


if __name__ == "__main__":
    main()
