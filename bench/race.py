"""The race the janitor exists to end: who deletes a step while the consumer still needs it?

    python bench/race.py [--steps 1000] [--quick] [--cleaners a,b,c] [--out FILE]

One producer/consumer pair (the roles of demo/live.py) runs three times on identical
seeds, each time under another cleaner:

  a  inline-n2     the trainer deletes step N-2 after writing N (shutil.rmtree), keeping multiples
                   of interval_to_keep: the rule trainers use today;
  b  inline-gated  the trainer deletes every step below LOADED_STEP after writing a step, keeping
                   multiples: the fix done inside the trainer;
  c  janitor       `janitor run` beside them; the trainer deletes nothing. At the end, once the
                   consumer has loaded the last step, the daemon is stopped and `janitor sweep`
                   makes a final pass.

The consumer loads each newest complete step whole (model.pt and every shard file, checked
against the step's manifest) and stalls on a heavy-tailed schedule: with some chance per load it
stalls for scale x Pareto(alpha) seconds (capped), at a random point of the load. A step that
vanished before or during its load is a load failure.

Reported per cleaner: load failures, trainer seconds spent on cleanup per step (mean, p99), the
trainer's busy time per step, peak bytes on disk (tree_size of the managed directory, trash
included, sampled at a fixed rate), steps on disk at the end, and steps leaked: steps still on
disk that the cleaner's own rule should have deleted by the end (a: N-2 and older; b, c: below
the final LOADED_STEP; multiples of interval_to_keep and, for c, the newest complete step are
always kept). A markdown table goes to stdout, the JSON to bench/results/ (or --out).

The machine's load changes the absolute numbers; compare cleaners within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the demo's roles: demo/live.py

from demo.live import janitor_command, json_records, role_command
from janitor import protocol
from janitor.fs.sizes import path_size
from janitor.ops.report import human_bytes

CLEANERS = {"a": "inline-n2", "b": "inline-gated", "c": "janitor"}
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    steps: int = 1000
    step_interval: float = 0.1
    files_per_step: int = 100
    step_bytes: int = 10_000_000
    width: int = 64
    seed: int = 7
    interval_to_keep: int = 100
    stall_chance: float = 0.05
    stall_scale: float = 0.3  # the shortest stall: 3 step times at the default step interval
    stall_alpha: float = 1.5
    stall_cap: float = 10.0
    forced_stalls: list[str] = field(default_factory=list)
    sample_interval: float = 0.1
    cleaners: list[str] = field(default_factory=lambda: list(CLEANERS))


@dataclass
class Events:
    published: list[dict[str, Any]] = field(default_factory=list)
    loaded: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    janitor_deleted: int = 0
    janitor_errors: list[str] = field(default_factory=list)
    trainer_done: bool = False
    consumer_ready: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handled(self) -> int:
        """The newest step the consumer loaded or failed to load (0 if none)."""
        steps = [int(r["step"]) for r in (*self.loaded, *self.failed)]
        return max(steps, default=0)


def _follow(stream: TextIO, events: Events) -> None:
    for record in json_records(stream):
        with events.lock:
            event, role = record.get("event"), record.get("role")
            if role == "trainer" and event == "published":
                events.published.append(record)
            elif role == "trainer" and event == "done":
                events.trainer_done = True
            elif role == "consumer" and event == "ready":
                events.consumer_ready = True
            elif role == "consumer" and event == "loaded":
                events.loaded.append(record)
            elif role == "consumer" and event == "load_failed":
                events.failed.append(record)
            elif role == "consumer" and event == "stall":
                events.stalls.append(record["seconds"])
            elif event == "deleted":
                events.janitor_deleted += 1
            elif record.get("level") in ("error", "critical"):
                events.janitor_errors.append(json.dumps(record)[:300])


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps_on_disk(directory: Path) -> list[int]:
    numbers = (protocol.parse_step_name(name) for name in os.listdir(directory))
    return sorted(n for n in numbers if isinstance(n, int))


def _loaded_step(directory: Path) -> int | None:
    try:
        value = protocol.parse_marker((directory / protocol.LOADED_MARKER).read_bytes())
    except OSError:
        return None
    return value if isinstance(value, int) else None


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"mean": sum(ordered) / len(ordered), "p99": p99, "max": ordered[-1]}


def _sample(directory: Path, interval: float, stop: threading.Event, out: dict[str, int]) -> None:
    """Peak bytes and steps on disk, at a fixed rate until stopped."""
    while not stop.wait(interval):
        try:
            size, steps = path_size(directory), len(_steps_on_disk(directory))
        except OSError:
            continue
        out["peak_bytes"] = max(out.get("peak_bytes", 0), size)
        out["peak_steps"] = max(out.get("peak_steps", 0), steps)
        out["samples"] = out.get("samples", 0) + 1


def _wait_until(predicate: Any, deadline: float, what: str) -> None:
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"race: {what} did not happen before its deadline")
        time.sleep(0.05)


def run_one(cfg: Config, key: str, base: Path) -> dict[str, Any]:
    """One cleaner: trainer, consumer (and janitor), sampled; returns the result row."""
    cleaner = CLEANERS[key]
    root = base / cleaner / "run"
    directory = root / "broadcasts"
    directory.mkdir(parents=True)
    me = role_command()
    events = Events()
    procs: dict[str, subprocess.Popen[str]] = {}
    started = time.monotonic()
    # Generous: the machine may be loaded; a step may take several times its nominal interval.
    deadline = started + 120 + cfg.steps * max(cfg.step_interval, 0.05) * 8
    if cleaner == "janitor":
        procs["janitor"] = _spawn([*janitor_command(), "run", str(root), "--log-format", "json",
                                   "--interval-to-keep", str(cfg.interval_to_keep)])
    procs["consumer"] = _spawn([
        *me, "consumer", str(directory), "--seed", str(cfg.seed), "--stall-dist", "pareto",
        "--stall-chance", str(cfg.stall_chance), "--stall-scale", str(cfg.stall_scale),
        "--stall-alpha", str(cfg.stall_alpha), "--stall-cap", str(cfg.stall_cap),
        "--idle-timeout", "3600",
        *[arg for forced in cfg.forced_stalls for arg in ("--forced-stall", forced)]])
    readers = [threading.Thread(target=_follow, args=(stream, events), daemon=True)
               for stream in (procs["consumer"].stdout,
                              procs["janitor"].stderr if "janitor" in procs else None)
               if stream is not None]
    for reader in readers:
        reader.start()
    # The trainer starts once the consumer has imported torch and can load: on a busy machine
    # the consumer's start alone could otherwise outlast a short run, and no marker would come.
    _wait_until(lambda: events.consumer_ready or procs["consumer"].poll() is not None,
                deadline, "the consumer's start")
    started = time.monotonic()  # the trainer's time, from its start
    procs["trainer"] = _spawn([
        *me, "trainer", str(directory), "--seconds", "1e9", "--steps", str(cfg.steps),
        "--step-interval", str(cfg.step_interval), "--width", str(cfg.width),
        "--seed", str(cfg.seed), "--files-per-step", str(cfg.files_per_step),
        "--step-bytes", str(cfg.step_bytes), "--interval-to-keep", str(cfg.interval_to_keep),
        "--cleaner", "none" if cleaner == "janitor" else cleaner])
    trainer_reader = threading.Thread(target=_follow, args=(procs["trainer"].stdout, events),
                                      daemon=True)
    trainer_reader.start()
    readers.insert(0, trainer_reader)
    sampled: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(directory, cfg.sample_interval, stop,
                                                     sampled), daemon=True)
    sampler.start()
    final_pass: dict[str, Any] = {}
    janitor_code = None
    try:
        _wait_until(lambda: procs["trainer"].poll() is not None, deadline, "the trainer's end")
        trainer_s = time.monotonic() - started
        trainer = procs["trainer"]
        if trainer.returncode != 0:
            stderr = trainer.stderr.read() if trainer.stderr else ""
            raise RuntimeError(f"race: trainer exited {trainer.returncode}: {stderr[-2000:]}")
        for reader in readers[:1]:
            reader.join(timeout=10)
        last = max((r["step"] for r in events.published), default=0)
        # The consumer may be in its longest stall; it must get to the last step.
        _wait_until(lambda: events.handled() >= last, time.monotonic() + 60 + cfg.stall_cap * 2,
                    "the consumer's last load")
        procs["consumer"].send_signal(signal.SIGTERM)
        procs["consumer"].wait(timeout=30)
        if "janitor" in procs:
            procs["janitor"].send_signal(signal.SIGTERM)
            janitor_code = procs["janitor"].wait(timeout=60)
            sweep = subprocess.run([*janitor_command(), "sweep", str(directory), "--json",
                                    "--interval-to-keep", str(cfg.interval_to_keep)],
                                   capture_output=True, text=True, check=False, timeout=120)
            final_pass = {"exit_code": sweep.returncode,
                          "deleted": _swept(sweep.stdout)}
    finally:
        stop.set()
        sampler.join(timeout=30)
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for reader in readers:
        reader.join(timeout=10)
    return _row(cfg, key, directory, events, sampled, trainer_s, last, janitor_code, final_pass)


def _swept(stdout: str) -> list[int]:
    try:
        document = json.loads(stdout)
    except ValueError:
        return []
    return [d["step"] for directory in document.get("directories", [])
            for d in directory.get("decisions", [])
            if d.get("action") == "delete" and d.get("step") is not None]


def _row(cfg: Config, key: str, directory: Path, events: Events, sampled: dict[str, int],
         trainer_s: float, last: int, janitor_code: int | None,
         final_pass: dict[str, Any]) -> dict[str, Any]:
    cleaner = CLEANERS[key]
    on_disk = _steps_on_disk(directory)
    loaded = _loaded_step(directory)
    k = cfg.interval_to_keep

    def rule_keeps(n: int) -> bool:
        if k > 0 and n % k == 0:
            return True
        if cleaner == "inline-n2":
            return n > last - 2
        if loaded is None:
            return True
        return n >= loaded or (cleaner == "janitor" and n == last)

    cleanup = [r["cleanup_s"] for r in events.published]
    busy = [r["busy_s"] for r in events.published]
    deleted_by_trainer = sum(len(r["deleted"]) for r in events.published)
    return {
        "key": key,
        "cleaner": cleaner,
        "steps_written": last,
        "loads_ok": len(events.loaded),
        "load_failures": len(events.failed),
        "failure_examples": [f"step {r['step']}: {r['error']}" for r in events.failed[:3]],
        "stalls": len(events.stalls),
        "stall_seconds": _stats(events.stalls),
        "cleanup_s": _stats(cleanup),
        "cleanup_s_total": sum(cleanup),
        "busy_s": _stats(busy),
        "trainer_wall_s": trainer_s,
        "trainer_s_per_step": trainer_s / max(1, last),
        "deleted_by_trainer": deleted_by_trainer,
        # Steps the janitor took out of the tree: every step written that neither the trainer
        # deleted nor is left. Its `deleted` events come only once the bytes are freed, at idle
        # priority, and a SIGTERM leaves the rest in the trash for the next start: on a loaded
        # machine they would undercount what consumers could no longer see.
        "deleted_by_janitor": (0 if cleaner != "janitor" else
                               last - deleted_by_trainer - len(on_disk)),
        "janitor_reclaimed_before_stop": events.janitor_deleted,
        "janitor_final_pass": final_pass,
        "janitor_exit_code": janitor_code,
        "janitor_errors": events.janitor_errors[:5],
        "peak_bytes": sampled.get("peak_bytes", 0),
        "peak_steps": sampled.get("peak_steps", 0),
        "samples": sampled.get("samples", 0),
        "final_loaded_step": loaded,
        "steps_on_disk_at_end": on_disk,
        "bytes_on_disk_at_end": path_size(directory),
        "leaked_steps": [n for n in on_disk if not rule_keeps(n)],
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| cleaner | steps | loads ok | load failures | cleanup s/step mean | cleanup p99 "
            "| trainer busy s/step mean | busy p99 | trainer wall s/step | peak on disk "
            "| steps on disk at end | leaked |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['key']}: {r['cleaner']} | {r['steps_written']} | {r['loads_ok']} "
            f"| {r['load_failures']} | {r['cleanup_s']['mean']:.4f} | {r['cleanup_s']['p99']:.4f} "
            f"| {r['busy_s']['mean']:.4f} | {r['busy_s']['p99']:.4f} "
            f"| {r['trainer_s_per_step']:.4f} | {human_bytes(r['peak_bytes'])} "
            f"({r['peak_steps']} steps) | {len(r['steps_on_disk_at_end'])} "
            f"| {len(r['leaked_steps'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/race.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    parser.add_argument("--steps", type=int, default=None, help=f"per cleaner (default {d.steps})")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 120 steps, small steps, step interval 0.05 s")
    parser.add_argument("--step-interval", type=float, default=None)
    parser.add_argument("--files-per-step", type=int, default=None)
    parser.add_argument("--step-bytes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--interval-to-keep", type=int, default=d.interval_to_keep)
    parser.add_argument("--stall-chance", type=float, default=d.stall_chance)
    parser.add_argument("--stall-scale", type=float, default=None,
                        help="shortest stall in seconds (default: 3 step intervals)")
    parser.add_argument("--stall-alpha", type=float, default=d.stall_alpha)
    parser.add_argument("--stall-cap", type=float, default=None,
                        help="longest stall in seconds (default: 100 step intervals)")
    parser.add_argument("--forced-stall", action="append", default=[], metavar="LOAD:SECONDS",
                        help="the consumer stalls before its LOAD-th load (repeatable)")
    parser.add_argument("--sample-interval", type=float, default=d.sample_interval)
    parser.add_argument("--cleaners", default="a,b,c", help="which of a,b,c to run, in order")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the trees (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result file (default: bench/results/race-<time>.json)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the roles and remove the trees.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    cfg = Config(
        steps=args.steps or (120 if quick else d.steps),
        step_interval=args.step_interval or (0.05 if quick else d.step_interval),
        files_per_step=(args.files_per_step if args.files_per_step is not None
                        else (20 if quick else d.files_per_step)),
        step_bytes=(args.step_bytes if args.step_bytes is not None
                    else (1_000_000 if quick else d.step_bytes)),
        seed=args.seed, interval_to_keep=args.interval_to_keep, stall_chance=args.stall_chance,
        stall_alpha=args.stall_alpha, forced_stalls=args.forced_stall,
        sample_interval=args.sample_interval,
        cleaners=[c.strip() for c in args.cleaners.split(",") if c.strip()])
    cfg.stall_scale = args.stall_scale or 3 * cfg.step_interval
    cfg.stall_cap = args.stall_cap or 100 * cfg.step_interval
    unknown = [c for c in cfg.cleaners if c not in CLEANERS]
    if unknown or not cfg.cleaners:
        parser.error(f"--cleaners takes a comma list of a, b, c; got {args.cleaners!r}")
    base = args.dir or Path(tempfile.mkdtemp(prefix="ckpt-janitor-race-"))
    print(f"race: {cfg.steps} steps per cleaner, {cfg.files_per_step} files / "
          f"{human_bytes(cfg.step_bytes)} per step, step interval {cfg.step_interval:g} s, "
          f"stalls: chance {cfg.stall_chance:g}, {cfg.stall_scale:g} s x Pareto("
          f"{cfg.stall_alpha:g}) capped at {cfg.stall_cap:g} s, interval_to_keep "
          f"{cfg.interval_to_keep}, seed {cfg.seed}", flush=True)
    rows = []
    try:
        for key in cfg.cleaners:
            t0 = time.monotonic()
            row = run_one(cfg, key, base)
            rows.append(row)
            print(f"  {key}: {row['cleaner']}: {row['load_failures']} load failures, "
                  f"{row['stalls']} stalls, peak {human_bytes(row['peak_bytes'])}, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
            for example in row["failure_examples"]:
                print(f"      {example}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(rows))
    out = args.out or RESULTS / f"race-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = asdict(cfg)
    out.write_text(json.dumps({"config": config, "argv": sys.argv[1:], "results": rows},
                              indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
