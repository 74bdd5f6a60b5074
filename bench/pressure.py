"""A disk 20 steps big, a writer at 10 steps/s, a consumer that stalls (issue 14, point 5).

On a size-limited tmpfs (real ENOSPC) holding room for --room steps of --step-bytes each, a
writer publishes a step every 1/--rate s (trainer_hooks.staged_step) while a consumer loads the
newest complete step, then stalls for a Pareto-distributed time (scale --stall-scale s, shape
--stall-alpha, capped at --stall-max s), then marks it loaded (trainer_hooks.mark_loaded). The
real daemon (`janitor run`, --keep-last 1, rescan 1 s) deletes below the loaded step.

Two runs of --seconds each, the same seed:
- the baseline: the writer saves blindly and counts ENOSPC (each a save that died half-written,
  cleaned up by staged_step);
- with back-pressure: the writer calls trainer_hooks.wait_for_headroom before each save (need one
  step, reserve one step) and counts how often it waited and for how long.

Reported: steps written, ENOSPC, waits (count, total, p50/p99/max), the free-space low point (in
bytes and steps), and protected steps lost (a consumer that could not read the step it had
chosen: must be 0). Free space over time is plotted with --plot.

    .venv/bin/python bench/pressure.py [--seconds 30] [--plot docs/img/pressure_free_space.png]
        [--out bench/results/pressure.json]

Needs root (mount). Nothing here is asserted: it prints ratios and figures.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import percentile

from trainer_hooks import (
    mark_loaded,
    newest_complete_step,
    staged_step,
    wait_for_headroom,
)
from trainer_hooks.headroom import HeadroomTimeout


class Run:
    """One run's writer, consumer and sampler against one daemon."""

    def __init__(self, root: Path, args: argparse.Namespace, back_pressure: bool) -> None:
        self.root, self.args, self.back_pressure = root, args, back_pressure
        self.tree = root / "run"
        self.tree.mkdir()
        self.stop = threading.Event()
        self.written = self.enospc = self.lost = self.loads = 0
        self.waits: list[float] = []
        self.samples: list[tuple[float, int, int]] = []  # (t, free bytes, loaded step)
        self.loaded = -1

    def writer(self) -> None:
        args, step = self.args, 0
        period = 1.0 / args.rate
        payload = os.urandom(args.step_bytes)
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.back_pressure:
                started = time.monotonic()
                try:
                    wait_for_headroom(self.tree, args.step_bytes, reserve_bytes=args.step_bytes,
                                      timeout=args.seconds, poll_s=0.02)
                except HeadroomTimeout:
                    continue
                waited = time.monotonic() - started
                if waited > 0.025:
                    self.waits.append(waited)
            try:
                with staged_step(self.tree, step) as staging:
                    (staging / "weights.bin").write_bytes(payload)
                self.written += 1
                step += 1
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                self.enospc += 1
            next_at += period
            with contextlib.suppress(ValueError):
                time.sleep(max(0.0, next_at - time.monotonic()))

    def consumer(self) -> None:
        rng, args = random.Random(args_seed(self.args)), self.args
        while not self.stop.is_set():
            step = newest_complete_step(self.tree)
            if step is None or step <= self.loaded:
                time.sleep(0.01)
                continue
            try:
                (self.tree / f"step_{step}" / "weights.bin").read_bytes()
            except FileNotFoundError:
                self.lost += 1  # a step it had chosen went: never must happen
                continue
            self.loads += 1
            stall = min(args.stall_max, args.stall_scale * rng.paretovariate(args.stall_alpha))
            self.stop.wait(stall)
            mark_loaded(self.tree, step)
            self.loaded = step

    def sampler(self, started: float) -> None:
        while not self.stop.is_set():
            st = os.statvfs(self.tree)
            self.samples.append((time.monotonic() - started, st.f_bavail * st.f_frsize,
                                 self.loaded))
            self.stop.wait(0.05)

    def go(self) -> dict[str, Any]:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "janitor", "run", str(self.root), "--rescan-interval", "1",
             "--audit-log", "off", "--log-format", "json", "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent)
        started = time.monotonic()
        threads = [threading.Thread(target=self.writer), threading.Thread(target=self.consumer),
                   threading.Thread(target=self.sampler, args=(started,))]
        try:
            for thread in threads:
                thread.start()
            self.stop.wait(self.args.seconds)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(60)
            daemon.terminate()
            daemon.wait(30)
        low = min(free for _, free, _ in self.samples)
        return {"back_pressure": self.back_pressure, "written": self.written,
                "enospc": self.enospc, "lost": self.lost, "loads": self.loads,
                "waits": len(self.waits), "wait_total_s": round(sum(self.waits), 2),
                "wait_p50_s": round(percentile(self.waits, 50), 3) if self.waits else 0.0,
                "wait_p99_s": round(percentile(self.waits, 99), 3) if self.waits else 0.0,
                "wait_max_s": round(max(self.waits, default=0.0), 3),
                "free_low_bytes": low, "free_low_steps": round(low / self.args.step_bytes, 2),
                "samples": self.samples}


def args_seed(args: argparse.Namespace) -> int:
    return int(args.seed)


def run_once(args: argparse.Namespace, back_pressure: bool) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="janitor-pressure-"))
    mount = base / "disk"
    mount.mkdir()
    size = args.room * args.step_bytes
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                   check=True)
    try:
        return Run(mount, args, back_pressure).go()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()
            base.rmdir()


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for result in results:
        label = "wait_for_headroom" if result["back_pressure"] else "baseline (no wait)"
        ax.plot([t for t, _, _ in result["samples"]],
                [free / args.step_bytes for _, free, _ in result["samples"]], label=label)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("seconds")
    ax.set_ylabel("free space (steps)")
    ax.set_title(f"{args.rate:g} steps/s into room for {args.room} steps, consumer with "
                 f"Pareto stalls (alpha {args.stall_alpha:g})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10.0, help="steps per second")
    parser.add_argument("--room", type=int, default=20, help="the disk, in step sizes")
    parser.add_argument("--step-bytes", type=int, default=1 << 20)
    parser.add_argument("--stall-scale", type=float, default=0.05)
    parser.add_argument("--stall-alpha", type=float, default=1.2)
    parser.add_argument("--stall-max", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    results = [run_once(args, back_pressure=False), run_once(args, back_pressure=True)]
    print(f"{args.rate:g} steps/s of {args.step_bytes >> 20} MiB into a tmpfs of {args.room} "
          f"steps, {args.seconds:g} s each, consumer stalls Pareto(alpha {args.stall_alpha:g}, "
          f"scale {args.stall_scale:g} s, max {args.stall_max:g} s)")
    print(f"{'run':<20}{'written':>8}{'ENOSPC':>8}{'waits':>7}{'wait s':>8}{'p50 s':>7}"
          f"{'p99 s':>7}{'max s':>7}{'low (steps)':>12}{'lost':>6}")
    for r in results:
        name = "wait_for_headroom" if r["back_pressure"] else "baseline"
        print(f"{name:<20}{r['written']:>8}{r['enospc']:>8}{r['waits']:>7}"
              f"{r['wait_total_s']:>8}{r['wait_p50_s']:>7}{r['wait_p99_s']:>7}"
              f"{r['wait_max_s']:>7}{r['free_low_steps']:>12}{r['lost']:>6}")
    base, back = results
    if base["written"]:
        print(f"ratio written (with / baseline): {back['written'] / base['written']:.2f}; "
              f"ENOSPC {base['enospc']} -> {back['enospc']}")
    if args.plot:
        plot(results, args, args.plot)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": [
            {k: v for k, v in r.items() if k != "samples"} for r in results]}, indent=2))


if __name__ == "__main__":
    main()
