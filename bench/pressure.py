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
  step, reserve one step) and counts how often it waited and for how long (a wait is a call that
  found too little room at its first look: wait_for_headroom says so through its `log`).

Reported: steps written, ENOSPC, waits (count, total, p50/p99/max), the free-space low point (in
bytes and steps), and protected steps lost (a consumer that could not read the step it had
chosen: must be 0). Free space over time is plotted with --plot. The JSON (--out) holds the
figures, the free-space samples and the run's facts, so `--from RESULT.json` prints the table and
draws the plot again without running; `bench/figures.py --record pressure RESULT.json` records it.

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
import platform
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
        self.stalls: list[float] = []
        # (t, free bytes, loaded step, newest complete step; -1 for none yet)
        self.samples: list[tuple[float, int, int, int]] = []
        self.loaded = -1

    def writer(self) -> None:
        args, step = self.args, 0
        period = 1.0 / args.rate
        payload = os.urandom(args.step_bytes)
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.back_pressure:
                said: list[str] = []  # wait_for_headroom logs only when it has to wait
                started = time.monotonic()
                try:
                    wait_for_headroom(self.tree, args.step_bytes, reserve_bytes=args.step_bytes,
                                      timeout=args.seconds, poll_s=0.02, log=said.append)
                except HeadroomTimeout:
                    continue
                if said:
                    self.waits.append(time.monotonic() - started)
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
            self.stalls.append(stall)
            self.stop.wait(stall)
            mark_loaded(self.tree, step)
            self.loaded = step

    def sampler(self, started: float) -> None:
        while not self.stop.is_set():
            st = os.statvfs(self.tree)
            newest = newest_complete_step(self.tree)
            self.samples.append((time.monotonic() - started, st.f_bavail * st.f_frsize,
                                 self.loaded, -1 if newest is None else newest))
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
        low = min(sample[1] for sample in self.samples)
        # The lag the janitor sees: newest complete step minus LOADED_STEP, once both exist.
        lags = [newest - loaded for _, _, loaded, newest in self.samples if loaded >= 0]
        return {"back_pressure": self.back_pressure,
                "name": "wait_for_headroom" if self.back_pressure else "baseline",
                "written": self.written,
                "enospc": self.enospc, "lost": self.lost, "loads": self.loads,
                "waits": len(self.waits), "wait_total_s": round(sum(self.waits), 2),
                "wait_p50_s": round(percentile(self.waits, 50), 3) if self.waits else 0.0,
                "wait_p99_s": round(percentile(self.waits, 99), 3) if self.waits else 0.0,
                "wait_max_s": round(max(self.waits, default=0.0), 3),
                "free_low_bytes": low, "free_low_steps": round(low / self.args.step_bytes, 2),
                "lag_p50_steps": round(percentile(lags, 50), 1) if lags else 0.0,
                "lag_p99_steps": round(percentile(lags, 99), 1) if lags else 0.0,
                "lag_max_steps": max(lags, default=0),
                "stalls": len(self.stalls),
                "stall_p50_s": round(percentile(self.stalls, 50), 3) if self.stalls else 0.0,
                "stall_p99_s": round(percentile(self.stalls, 99), 3) if self.stalls else 0.0,
                "stall_max_s": round(max(self.stalls, default=0.0), 3),
                "samples": [(round(sample[0], 3), *sample[1:]) for sample in self.samples]}


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


def plot(results: list[dict[str, Any]], args: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = args["step_bytes"]
    fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    for result in results:
        label = "wait_for_headroom" if result["back_pressure"] else "baseline (no wait)"
        ax.plot([sample[0] for sample in result["samples"]],
                [sample[1] / step for sample in result["samples"]], label=label, linewidth=1)
    ax.axhline(2, color="grey", linewidth=0.8, linestyle="--",
               label="the writer waits below this (1 step needed + 1 step reserve)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("seconds")
    ax.set_ylabel("free space (steps)")
    ax.set_ylim(bottom=-0.5)
    ax.set_title(f"{args['rate']:g} steps/s into room for {args['room']} steps, consumer with "
                 f"Pareto stalls (scale {args['stall_scale']:g} s, alpha "
                 f"{args['stall_alpha']:g}, at most {args['stall_max']:g} s)")
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    fig.savefig(path, dpi=110)


def report(document: dict[str, Any]) -> None:
    args, results = document["args"], document["runs"]
    print(f"{args['rate']:g} steps/s of {args['step_bytes'] >> 20} MiB into a tmpfs of "
          f"{args['room']} steps, {args['seconds']:g} s each, consumer stalls Pareto(alpha "
          f"{args['stall_alpha']:g}, scale {args['stall_scale']:g} s, max "
          f"{args['stall_max']:g} s)")
    print(f"{'run':<20}{'written':>8}{'ENOSPC':>8}{'waits':>7}{'wait s':>8}{'p50 s':>7}"
          f"{'p99 s':>7}{'max s':>7}{'low (steps)':>12}{'lag p50/p99/max':>17}{'lost':>6}")
    for r in results:
        lag = f"{r['lag_p50_steps']:g}/{r['lag_p99_steps']:g}/{r['lag_max_steps']:g}"
        print(f"{r['name']:<20}{r['written']:>8}{r['enospc']:>8}{r['waits']:>7}"
              f"{r['wait_total_s']:>8}{r['wait_p50_s']:>7}{r['wait_p99_s']:>7}"
              f"{r['wait_max_s']:>7}{r['free_low_steps']:>12}{lag:>17}{r['lost']:>6}")
        print(f"{'':<20}consumer: {r['loads']} loads, {r['stalls']} stalls, p50 "
              f"{r['stall_p50_s']} s, p99 {r['stall_p99_s']} s, max {r['stall_max_s']} s")
    base, back = results
    if base["written"]:
        print(f"ratio written (with / baseline): {back['written'] / base['written']:.2f}; "
              f"ENOSPC {base['enospc']} -> {back['enospc']}")


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
    parser.add_argument("--from", dest="source", default=None, metavar="RESULT_JSON",
                        help="print and plot a recorded run (its --out) instead of running")
    args = parser.parse_args()
    if args.source:
        document = json.loads(Path(args.source).read_text(encoding="utf-8"))
    else:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False, cwd=Path(__file__).resolve().parent)
        facts = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "commit": commit.stdout.strip(),
                 "loadavg_at_start": os.getloadavg(), "nproc": os.cpu_count(),
                 "kernel": platform.release(), "python": platform.python_version()}
        results = [run_once(args, back_pressure=False), run_once(args, back_pressure=True)]
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "plot", "source")}
        document = {"args": settings, "argv": sys.argv[1:], "machine": facts, "runs": results}
    report(document)
    if args.plot:
        plot(document["runs"], document["args"], args.plot)
    if args.out and not args.source:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
