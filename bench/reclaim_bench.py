"""Reclaim throughput: janitor's reaper (rename into trash, then reclaim) vs `rm -rf` on an
identical copy, on a step of many small files and on a step of a few large files; and the
parallel reclaim (workers=4) vs the serial one.

Each repetition builds every copy the same way (same writer, same sizes), calls sync(2) once so
no copy has dirty pages waiting for writeback, and then deletes them in a rotating order. The page
cache is not dropped (that needs root and would slow other people's work on this machine): every
contender starts with its inodes and dentries cached, which is the janitor's real case (it has
just scanned the step). Figures are medians over the repetitions; the ratio is janitor
throughput / rm -rf throughput (1.0 = as fast as rm -rf).

    .venv/bin/python bench/reclaim_bench.py [--quick] --out results.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import machine, run_rm_rf, scratch, write_json

from janitor.fs import reaper, reserved
from janitor.fs.scan import open_directory, scan
from janitor.model import ScanOptions

CHUNK = os.urandom(1 << 20)


def build_small(step: Path, subdirs: int, files: int, size: int) -> None:
    step.mkdir()
    payload = CHUNK[:size]
    for d in range(subdirs):
        sub = step / f"shard{d:02d}"
        sub.mkdir()
        for f in range(files):
            fd = os.open(sub / f"f{f:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
    (step / "STABLE").touch()


def build_large(step: Path, files: int, size: int) -> None:
    step.mkdir()
    for f in range(files):
        with open(step / f"model-{f:05d}.safetensors", "wb") as out:
            left = size
            while left:
                n = min(left, len(CHUNK))
                out.write(CHUNK[:n])
                left -= n
    (step / "STABLE").touch()


def janitor_reclaim(managed: Path, workers: int) -> tuple[float, reaper.ReclaimStats]:
    """Seconds to delete managed/step_1 the janitor way: rename into trash (fsynced), reclaim."""
    dir_fd = open_directory(str(managed))
    try:
        entry = scan(dir_fd, str(managed), ScanOptions()).steps[0]
        started = time.perf_counter()
        trash_fd = reaper.open_trash(dir_fd, reserved.mount_id(dir_fd), create=True)
        assert trash_fd is not None
        try:
            moved = reaper.move_to_trash(dir_fd, str(managed), trash_fd, entry, ())
            assert isinstance(moved, reaper.Trashed), moved
            reaper.sync_directories(dir_fd, trash_fd)
            stats = reaper.reclaim(trash_fd, [moved.trash_name], workers=workers)
        finally:
            os.close(trash_fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(dir_fd)
    assert not stats.pending and not stats.problems, stats
    return elapsed, stats


def measure(kind: str, reps: int, build: Any, contenders: list[str]) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    files = 0
    total_bytes = 0
    with scratch(f"reclaim-{kind}") as root:
        for rep in range(reps):
            paths = {}
            for name in contenders:
                managed = root / f"{name}-{rep}"
                managed.mkdir()
                build(managed / "step_1")
                paths[name] = managed
            os.sync()
            order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
            for name in order:
                if name == "rm -rf":
                    times[name].append(run_rm_rf(paths[name] / "step_1"))
                else:
                    workers = int(name.rsplit("=", 1)[1])
                    elapsed, stats = janitor_reclaim(paths[name], workers)
                    times[name].append(elapsed)
                    files, total_bytes = stats.files, stats.bytes
            print(f"  {kind} rep {rep + 1}/{reps}: " + ", ".join(
                f"{n} {times[n][-1] * 1e3:.0f} ms" for n in contenders), flush=True)
    result: dict[str, Any] = {"files": files, "bytes": total_bytes, "repetitions": reps,
                              "contenders": {}}
    for name, samples in times.items():
        median = statistics.median(samples)
        result["contenders"][name] = {
            "seconds": samples, "median_s": median,
            "files_per_s": files / median, "bytes_per_s": total_bytes / median,
        }
    base = result["contenders"]["rm -rf"]["median_s"]
    for entry in result["contenders"].values():
        entry["throughput_ratio_vs_rm"] = base / entry["median_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller files")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    # This machine's disk takes 1-3 ms per unlink: 10,000 files is about 25 s per contender.
    reps_small, reps_large = (2, 2) if args.quick else (5, 3)
    subdirs, per_dir, small_size = (10, 200, 4096) if args.quick else (10, 1000, 4096)
    large_files, large_size = (4, 64 << 20) if args.quick else (4, 256 << 20)
    contenders = ["rm -rf", "janitor workers=1", "janitor workers=4"]
    print(f"small: {subdirs} x {per_dir} files of {small_size} B, {reps_small} reps", flush=True)
    small = measure("small", reps_small,
                    lambda step: build_small(step, subdirs, per_dir, small_size), contenders)
    print(f"large: {large_files} files of {large_size >> 20} MiB, {reps_large} reps", flush=True)
    large = measure("large", reps_large, lambda step: build_large(step, large_files, large_size),
                    contenders)
    write_json(args.out, {
        "benchmark": "reclaim",
        "machine": machine(),
        "quick": args.quick,
        "small": {"layout": f"{subdirs} subdirs x {per_dir} files x {small_size} B", **small},
        "large": {"layout": f"{large_files} files x {large_size >> 20} MiB", **large},
        "notes": [
            "page cache not dropped; sync(2) before each round so no copy has dirty pages",
            "rm -rf time includes starting the rm process (about 1 ms)",
            "janitor time includes the rename into .janitor-trash and its two fsyncs",
        ],
    })


if __name__ == "__main__":
    main()
