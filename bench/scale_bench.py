"""Scale: one reconcile pass over 1,000 / 10,000 / 100,000 step directories (each holding STABLE),
its time and memory, and the inotify watches a daemon holds on that tree; how each grows.

Contenders, all on the same tree in the same run:
- `dry-run pass`: ManagedDirectory(dry_run=True).reconcile(), i.e. a fresh scan and the plan;
- `real pass`: the same with deletions on: every doomed step renamed into the trash, fsynced
  (LOADED_STEP is the newest step, so all older steps are doomed: a catch-up pass, the worst
  case; the reclaim of their bytes happens off the loop and is not timed);
- baselines: `os.listdir` of the managed directory, and `find DIR -maxdepth 2 -name STABLE`
  (which, like the scan, looks inside every step).

The tree is built on tmpfs by default: this machine's disk takes 1-3 ms per create or unlink,
so building and removing 200,000 inodes there would take most of an hour. The pass itself reads
only cached metadata (stat calls on a warm dentry cache), which is close to what it costs on a
disk filesystem once the tree is cached; `--on-disk` runs it on the bench filesystem instead.

    .venv/bin/python bench/scale_bench.py [--quick] [--on-disk] --out results.json
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from _common import filesystem_of, janitor_command, machine, stop_process, write_json

from janitor.model import ScanOptions
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy


def build_tree(managed: Path, steps: int) -> None:
    managed.mkdir()

    def make(chunk: range) -> None:
        for n in chunk:
            name = f"step_{n}"
            os.mkdir(managed / name)
            os.close(os.open(managed / name / "STABLE", os.O_WRONLY | os.O_CREAT, 0o644))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, [range(i, steps, 4) for i in range(4)]))
    past = time.time() - 3600  # steps written an hour ago, the marker now (invariant 4 holds)
    for n in range(steps):
        os.utime(managed / f"step_{n}", (past, past))
    (managed / "LOADED_STEP").write_text(f"{steps - 1}\n")


def remove_tree(path: Path) -> None:
    from janitor.fs import reaper
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reaper.reclaim(parent, [path.name], workers=8)
    finally:
        os.close(parent)


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (for `find`)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], object], reps: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each of `reps` calls; CPU seconds appended to `cpu` (other engineers'
    tests share this machine, so wall time includes waiting for a core)."""
    samples = []
    for _ in range(reps):
        gc.collect()
        cpu0 = cpu_now()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(cpu_now() - cpu0)
    return samples


def one_pass(managed: Path, *, dry_run: bool, policy: Policy | None = None) -> int:
    policy = policy or Policy()
    with ManagedDirectory(str(managed), dry_run=dry_run, policy=policy,
                          options=ScanOptions()) as directory:
        result = directory.reconcile()
        return len(result.plan.doomed) if dry_run else len(result.trashed)


def peak_memory(fn: Callable[[], object]) -> dict[str, int]:
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"tracemalloc_peak_bytes": peak,
            "rss_delta_bytes": psutil.Process().memory_info().rss - rss_before}


def daemon_watches(root: Path, timeout_s: float) -> dict[str, Any]:
    """Start `janitor run --dry-run` on the tree; time to its `ready` event and watches held."""
    cmd = [*janitor_command(), "run", str(root), "--dry-run", "--watch", "inotify",
           "--log-format", "json", "--audit-log", "off"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready_s = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if '"event": "ready"' in line or '"event":"ready"' in line:
                ready_s = time.perf_counter() - started
                break
        watches = 0
        fdinfo = Path(f"/proc/{proc.pid}/fdinfo")
        for entry in fdinfo.iterdir():
            try:
                watches += entry.read_text().count("inotify wd:")
            except OSError:
                continue
        rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        stop_process(proc)
    return {"start_to_ready_s": ready_s, "inotify_watches": watches, "daemon_rss_bytes": rss}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): 1.0 is linear growth."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-12)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    den = sum((a - mx) ** 2 for a in lx)
    return num / den


def measure_size(base: Path, steps: int, reps: int) -> dict[str, Any]:
    managed = base / f"n{steps}" / "broadcasts"
    managed.parent.mkdir()
    t0 = time.perf_counter()
    build_tree(managed, steps)
    print(f"  built {steps} steps in {time.perf_counter() - t0:.1f} s", flush=True)
    find_cmd = ["find", str(managed), "-maxdepth", "2", "-name", "STABLE"]
    doomed = one_pass(managed, dry_run=True)
    assert doomed == steps - 1, doomed
    result: dict[str, Any] = {"steps": steps, "repetitions": reps}
    for key, fn in (("listdir", lambda: os.listdir(managed)),
                    ("find", lambda: subprocess.run(find_cmd, stdout=subprocess.DEVNULL,
                                                    check=True)),
                    ("dry_run_pass", lambda: one_pass(managed, dry_run=True)),
                    # The pass a daemon repeats on a large retained tree: every step kept
                    # (interval_to_keep=1), so no deletion candidate is read in depth.
                    ("steady_pass", lambda: one_pass(managed, dry_run=True,
                                                     policy=Policy(interval_to_keep=1)))):
        cpu: list[float] = []
        result[f"{key}_s"] = timed(fn, reps, cpu)
        result[f"{key}_cpu_s"] = cpu
    result["dry_run_memory"] = peak_memory(lambda: one_pass(managed, dry_run=True))
    result["daemon"] = daemon_watches(managed.parent, timeout_s=120)
    real: list[float] = []
    real_cpu: list[float] = []
    real_reps = max(1, reps // 3)
    for rep in range(real_reps):
        if rep:
            remove_tree(managed)
            build_tree(managed, steps)
        gc.collect()
        cpu0 = cpu_now()
        started = time.perf_counter()
        trashed = one_pass(managed, dry_run=False)
        real.append(time.perf_counter() - started)
        real_cpu.append(cpu_now() - cpu0)
        assert trashed == steps - 1, trashed
    result["real_pass_s"] = real
    result["real_pass_cpu_s"] = real_cpu
    remove_tree(managed.parent)
    for key in ("listdir", "find", "dry_run_pass", "steady_pass", "real_pass"):
        result[f"{key}_median_s"] = statistics.median(result[f"{key}_s"])
        result[f"{key}_cpu_median_s"] = statistics.median(result[f"{key}_cpu_s"])
    print(f"  {steps}: steady {result['steady_pass_median_s'] * 1e3:.1f} ms, "
          f"dry-run {result['dry_run_pass_median_s'] * 1e3:.1f} ms "
          f"(cpu {result['dry_run_pass_cpu_median_s'] * 1e3:.1f} ms), real "
          f"{result['real_pass_median_s'] * 1e3:.1f} ms, listdir "
          f"{result['listdir_median_s'] * 1e3:.2f} ms, find {result['find_median_s'] * 1e3:.1f} "
          f"ms, watches {result['daemon']['inotify_watches']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--on-disk", action="store_true",
                        help="build the trees on the bench filesystem, not tmpfs (slow here)")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = {1000: 9, 10000: 7, 100000: 3} if not args.quick else {1000: 5, 10000: 3, 100000: 1}
    where = None if args.on_disk or not Path("/dev/shm").is_dir() else "/dev/shm"
    base = Path(tempfile.mkdtemp(prefix="ckpt-janitor-scale-", dir=where))
    try:
        fstype = filesystem_of(base)
        print(f"scale trees on {fstype}", flush=True)
        rows = [measure_size(base, n, reps.get(n, 3)) for n in sizes]
    finally:
        subprocess.run(["rm", "-rf", "--", str(base)], check=False)
    growth = {}
    if len(rows) > 1:
        xs = [float(r["steps"]) for r in rows]
        for name in ("dry_run_pass", "real_pass", "listdir", "find"):
            for key in (f"{name}_median_s", f"{name}_cpu_median_s"):
                growth[key] = slope(xs, [r[key] for r in rows])
        growth["tracemalloc_peak_bytes"] = slope(
            xs, [float(r["dry_run_memory"]["tracemalloc_peak_bytes"]) for r in rows])
    write_json(args.out, {"benchmark": "scale", "machine": machine(), "quick": args.quick,
                          "tree_filesystem": fstype, "sizes": rows, "loglog_slope": growth,
                          "python": sys.version.split()[0]})


if __name__ == "__main__":
    main()
