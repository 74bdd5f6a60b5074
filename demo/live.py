"""The live demo: a trainer, a stalling consumer and the janitor daemon share one real tree.

    python -m demo [--seconds 30] [--dir DIR]      (from the repository's top directory)

The trainer trains a tiny torch model on the CPU and publishes one step per iteration with
`save_step`; the consumer loads the newest complete step with `torch.load`, sometimes stalls for
several steps, and marks it loaded; `janitor run` deletes below LOADED_STEP beside them. The demo
prints live progress and a summary: load failures (must be 0), the disk high-water mark, and the
steps kept with the reason for each. The roles (`trainer`, `consumer`) are also subcommands, so
bench/race.py can run the same pair under other cleaners. It lives beside the library, not in it:
trainer_hooks is what a trainer imports, and imports nothing of the janitor but its protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from janitor import protocol
from janitor.fs.sizes import path_size
from janitor.ops.report import human_bytes
from trainer_hooks.consume import load_step, wait_for_step_newer_than
from trainer_hooks.markers import mark_loaded
from trainer_hooks.publish import save_step, staged_step


def _emit(**fields: Any) -> None:
    """Roles report to the orchestrator as JSON lines on stdout."""
    print(json.dumps(fields), flush=True)


# ---- roles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepShape:
    """Extra payload per step, so that writing and deleting a step costs what it costs in practice.

    `files` shard files of `total_bytes` together, beside model.pt, listed in manifest.json so a
    consumer can tell a whole step from a half-missing one. files=0: model.pt only (the demo).
    """

    files: int = 0
    total_bytes: int = 0


MANIFEST = "manifest.json"
CLEANERS = ("none", "inline-n2", "inline-gated")


def run_trainer(directory: Path, seconds: float, step_interval_s: float, width: int,
                seed: int, *, max_steps: int = 0, shape: StepShape = StepShape(),
                cleaner: str = "none", interval_to_keep: int = 0) -> None:
    """Train a tiny MLP; publish its weights as a step after every optimizer step.

    Stops after `seconds` or, if max_steps > 0, after that many steps, whichever comes first.
    `cleaner` is the deletion the trainer does itself after publishing each step (bench/race.py):
    "none" (the janitor's job), "inline-n2" (delete step N-2, the rule trainers use today) or
    "inline-gated" (delete every step below LOADED_STEP); both inline rules keep multiples of
    interval_to_keep. Each `published` line reports the seconds the cleanup took.
    """
    import torch

    if cleaner not in CLEANERS:
        raise ValueError(f"cleaner must be one of {CLEANERS}, not {cleaner!r}")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    shard = os.urandom(shape.total_bytes // shape.files) if shape.files > 0 else b""
    deadline = time.monotonic() + seconds
    step = 0
    while time.monotonic() < deadline and (max_steps <= 0 or step < max_steps):
        started = time.monotonic()
        inputs = torch.randn(64, width)
        loss = (model(inputs) - inputs.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if shape.files > 0:
            _publish_sharded(directory, step, model.state_dict(), shard, shape.files)
        else:
            save_step(directory, step, model.state_dict())
        deleted: list[int] = []
        cleanup_s = 0.0  # cleaner "none": the trainer does no deletion at all
        if cleaner != "none":
            cleanup_started = time.monotonic()
            deleted = _inline_cleanup(directory, step, cleaner, interval_to_keep)
            cleanup_s = time.monotonic() - cleanup_started
        busy_s = time.monotonic() - started
        _emit(role="trainer", event="published", step=step,
              loss=round(float(loss.detach()), 4),
              cleanup_s=round(cleanup_s, 6), busy_s=round(busy_s, 6), deleted=deleted)
        time.sleep(max(0.0, step_interval_s - (time.monotonic() - started)))
    _emit(role="trainer", event="done", steps=step)


def _publish_sharded(directory: Path, step: int, state: dict[str, Any], shard: bytes,
                     files: int) -> None:
    """model.pt, `files` shard files and a manifest naming them; STABLE last (staged_step)."""
    import torch

    names = [f"shard-{i:05d}.bin" for i in range(files)]
    with staged_step(directory, step) as tmp:
        torch.save(state, tmp / "model.pt")
        for name in names:
            (tmp / name).write_bytes(shard)
        manifest = {"shards": [[name, len(shard)] for name in names]}
        (tmp / MANIFEST).write_text(json.dumps(manifest))


def _inline_cleanup(directory: Path, step: int, cleaner: str, interval_to_keep: int) -> list[int]:
    """The deletion a trainer does in its own loop; returns the steps it deleted."""
    def kept(number: int) -> bool:
        return interval_to_keep > 0 and number % interval_to_keep == 0

    if cleaner == "inline-n2":
        victims = [step - 2] if step - 2 >= 0 and not kept(step - 2) else []
    elif cleaner == "inline-gated":
        loaded = _read_loaded_step(directory)
        if loaded is None:
            return []
        victims = sorted(n for n in _step_numbers(directory) if n < loaded and not kept(n))
    else:
        return []
    deleted = []
    for number in victims:
        target = directory / protocol.step_name(number)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            deleted.append(number)
    return deleted


def _read_loaded_step(directory: Path) -> int | None:
    try:
        value = protocol.parse_marker((directory / protocol.LOADED_MARKER).read_bytes())
    except OSError:
        return None
    return value if isinstance(value, int) else None


def _step_numbers(directory: Path) -> list[int]:
    numbers = []
    for name in os.listdir(directory):
        number = protocol.parse_step_name(name)
        if isinstance(number, int):
            numbers.append(number)
    return numbers


@dataclass(frozen=True)
class StallSchedule:
    """When the consumer stalls: with probability `chance` per load, for a drawn time.

    "uniform": uniform in [low, high] seconds, before the load (the demo). "pareto": `scale` x a
    Pareto(alpha) draw capped at `cap` seconds (heavy-tailed: most short, a few very long), at a
    random point of the load (before it, or between two shard files). `forced` maps a load's
    index (1 = the first load) to a stall in seconds that happens before that load, whatever the
    draw says: a test's way to make sure a long stall happens.
    """

    chance: float = 0.08
    low: float = 0.8
    high: float = 2.5
    dist: str = "uniform"
    scale: float = 0.3
    alpha: float = 1.5
    cap: float = 10.0
    forced: dict[int, float] = field(default_factory=dict)

    def draw(self, rng: random.Random, index: int) -> tuple[float, float]:
        """(stall seconds, the fraction of the load done before the stall)."""
        if index in self.forced:
            return self.forced[index], 0.0
        if self.dist == "uniform":  # the demo's draws, in the demo's order
            if rng.random() < self.chance:
                return rng.uniform(self.low, self.high), 0.0
            return 0.0, 0.0
        stall, where = 0.0, rng.random()
        if rng.random() < self.chance:
            stall = min(self.cap, self.scale * rng.paretovariate(self.alpha))
        return stall, where


class HalfMissingStepError(Exception):
    """A step whose files do not match its manifest: part of it vanished (or was never there)."""


STARTUP_TIMEOUT_S = 120.0
LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, KeyError, HalfMissingStepError)


def run_consumer(directory: Path, seed: int, stall_chance: float, stall_s: tuple[float, float],
                 idle_timeout_s: float, schedule: StallSchedule | None = None,
                 poll_interval_s: float = 0.05) -> None:
    """Load each newest complete step, sometimes stalling first; mark it loaded afterwards.

    A step with a manifest is loaded whole: model.pt with torch.load, then every shard file, each
    checked against the manifest, so a step deleted under the consumer counts as a load failure.
    """
    import torch  # noqa: F401  (imported before `ready`: a consumer that can load at once)

    if schedule is None:
        schedule = StallSchedule(chance=stall_chance, low=stall_s[0], high=stall_s[1])
    _emit(role="consumer", event="ready")
    rng = random.Random(seed)  # noqa: S311 (a stall schedule, not a secret)
    last: int | None = None
    index = 0
    while True:
        try:
            # The first step may take a while: the trainer imports torch on a busy machine.
            timeout = idle_timeout_s if last is not None else max(idle_timeout_s,
                                                                  STARTUP_TIMEOUT_S)
            step = wait_for_step_newer_than(directory, last, timeout_s=timeout,
                                            poll_interval_s=poll_interval_s)
        except TimeoutError:
            break
        index += 1
        stall, where = schedule.draw(rng, index)
        started = time.monotonic()
        try:
            _load_whole(directory, step, stall, where)
        except LOAD_ERRORS as exc:
            _emit(role="consumer", event="load_failed", step=step,
                  error=f"{type(exc).__name__}: {exc}"[:200])
            last = step
            continue
        mark_loaded(directory, step)
        _emit(role="consumer", event="loaded", step=step,
              load_s=round(time.monotonic() - started - stall, 6))
        last = step
    _emit(role="consumer", event="done", last=last)


def _stall(step: int, seconds: float) -> None:
    _emit(role="consumer", event="stall", step=step, seconds=round(seconds, 3))
    time.sleep(seconds)  # the stalled event loop of a real orchestrator


def _load_whole(directory: Path, step: int, stall: float, where: float) -> None:
    """Load model.pt and, if the step has a manifest, every shard; stall at fraction `where`."""
    if stall > 0 and where <= 0:
        _stall(step, stall)
        stall = 0.0
    load_step(directory, step)
    step_dir = directory / protocol.step_name(step)
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())
    except FileNotFoundError:
        if step_dir.is_dir():
            return  # a step without a manifest (the demo's): model.pt is the whole step
        raise
    shards = manifest["shards"]
    stall_at = min(len(shards), int(where * len(shards)))
    for i, (name, size) in enumerate(shards):
        if stall > 0 and i == stall_at:
            _stall(step, stall)
        with (step_dir / name).open("rb") as f:
            got = len(f.read())
        if got != size:
            raise HalfMissingStepError(f"{step_dir / name}: {got} bytes, manifest says {size}")
    if stall > 0 and stall_at >= len(shards):
        _stall(step, stall)


# ---- orchestrator --------------------------------------------------------------------------


@dataclass
class Progress:
    written: int = 0
    loaded: int = 0
    deleted: int = 0
    failures: list[str] = field(default_factory=list)
    stalls: int = 0
    trainer_done: bool = False
    consumer_done: bool = False
    janitor_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def json_records(stream: TextIO) -> Iterator[dict[str, Any]]:
    """The JSON objects among a child's output lines (roles' reports, the janitor's log)."""
    for line in stream:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def _follow(stream: TextIO, progress: Progress) -> None:
    for record in json_records(stream):
        with progress.lock:
            _apply(record, progress)


def _apply(record: dict[str, Any], progress: Progress) -> None:
    event, role = record.get("event"), record.get("role")
    if role == "trainer" and event == "published":
        progress.written = record["step"]
    elif role == "trainer" and event == "done":
        progress.trainer_done = True
    elif role == "consumer" and event == "loaded":
        progress.loaded = record["step"]
    elif role == "consumer" and event == "stall":
        progress.stalls += 1
    elif role == "consumer" and event == "load_failed":
        progress.failures.append(f"step {record['step']}: {record['error']}")
    elif role == "consumer" and event == "done":
        progress.consumer_done = True
    elif event == "deleted":
        progress.deleted += 1
    elif record.get("level") in ("error", "critical"):
        progress.janitor_errors.append(str(record))


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def role_command() -> list[str]:
    """How to start a role (`trainer`, `consumer`) in a child: this file as a script, which needs
    neither the repository on sys.path nor a particular working directory."""
    return [sys.executable, str(Path(__file__).resolve())]


def janitor_command() -> list[str]:
    """How to start the `janitor` installed beside this Python."""
    found = shutil.which("janitor", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "janitor"]


def _steps_on_disk(directory: Path) -> int:
    try:
        return sum(1 for name in os.listdir(directory) if name.startswith("step_"))
    except FileNotFoundError:
        return 0


def _live_lines(progress: Progress, directory: Path, started: float,
                interactive: bool) -> Iterator[tuple[str, int]]:
    """Yield one progress line (and the bytes on disk) per tick until both roles are done."""
    while True:
        with progress.lock:
            # Done once the trainer stopped and the consumer loaded its last step.
            done = progress.trainer_done and (progress.consumer_done
                                              or progress.loaded >= progress.written)
            line = (f"t={time.monotonic() - started:5.1f}s  written {progress.written:4d}  "
                    f"loaded {progress.loaded:4d} (lag {progress.written - progress.loaded:3d})"
                    f"  stalls {progress.stalls:2d}  deleted {progress.deleted:4d}  ")
        on_disk = path_size(directory)
        line += f"on disk: {_steps_on_disk(directory):3d} steps, {human_bytes(on_disk):>10}"
        yield line, on_disk
        if done:
            return
        time.sleep(0.25 if interactive else 2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the trainer runs")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the tree (default: a fresh temporary directory)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval-to-keep", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    trainer = sub.add_parser("trainer")
    trainer.add_argument("directory", type=Path)
    trainer.add_argument("--seconds", type=float, default=30.0)
    trainer.add_argument("--steps", type=int, default=0,
                         help="stop after this many steps (0: only --seconds limits)")
    trainer.add_argument("--step-interval", type=float, default=0.2)
    trainer.add_argument("--width", type=int, default=512)
    trainer.add_argument("--seed", type=int, default=7)
    trainer.add_argument("--files-per-step", type=int, default=0,
                         help="shard files per step beside model.pt, with a manifest")
    trainer.add_argument("--step-bytes", type=int, default=0,
                         help="bytes of shard files per step (split evenly)")
    trainer.add_argument("--cleaner", choices=CLEANERS, default="none",
                         help="deletion the trainer does itself after each step")
    trainer.add_argument("--interval-to-keep", type=int, default=0,
                         help="inline cleaners keep multiples of this (0: none)")
    consumer = sub.add_parser("consumer")
    consumer.add_argument("directory", type=Path)
    consumer.add_argument("--seed", type=int, default=7)
    consumer.add_argument("--stall-chance", type=float, default=0.08)
    consumer.add_argument("--stall-min", type=float, default=0.8)
    consumer.add_argument("--stall-max", type=float, default=2.5)
    consumer.add_argument("--stall-dist", choices=("uniform", "pareto"), default="uniform")
    consumer.add_argument("--stall-scale", type=float, default=0.3,
                          help="pareto: the smallest stall in seconds")
    consumer.add_argument("--stall-alpha", type=float, default=1.5, help="pareto: tail index")
    consumer.add_argument("--stall-cap", type=float, default=10.0,
                          help="pareto: the longest stall in seconds")
    consumer.add_argument("--forced-stall", action="append", default=[], metavar="LOAD:SECONDS",
                          help="stall before the LOAD-th load (1 = first) for SECONDS")
    consumer.add_argument("--poll-interval", type=float, default=0.05)
    consumer.add_argument("--idle-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.role == "trainer":
        if args.files_per_step < 0 or args.step_bytes < 0:
            parser.error("--files-per-step and --step-bytes must be >= 0")
        run_trainer(args.directory, args.seconds, args.step_interval, args.width, args.seed,
                    max_steps=args.steps, shape=StepShape(args.files_per_step, args.step_bytes),
                    cleaner=args.cleaner, interval_to_keep=args.interval_to_keep)
        return 0
    if args.role == "consumer":
        try:
            forced = {int(k): float(v) for k, v in
                      (item.split(":", 1) for item in args.forced_stall)}
        except ValueError:
            parser.error("--forced-stall takes LOAD:SECONDS, e.g. 5:2.5")
        schedule = StallSchedule(args.stall_chance, args.stall_min, args.stall_max,
                                 args.stall_dist, args.stall_scale, args.stall_alpha,
                                 args.stall_cap, forced)
        run_consumer(args.directory, args.seed, args.stall_chance,
                     (args.stall_min, args.stall_max), args.idle_timeout, schedule,
                     args.poll_interval)
        return 0
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    """Run trainer, consumer and janitor side by side; print progress and the summary."""
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ckpt-janitor-demo-"))
    directory = base / "run" / "broadcasts"
    directory.mkdir(parents=True, exist_ok=True)
    me = role_command()
    print(f"demo tree: {directory}\n"
          f"trainer: one step every 0.2 s for {args.seconds:g} s; consumer stalls now and then; "
          f"janitor keeps every multiple of {args.interval_to_keep}\n", flush=True)
    progress = Progress()
    janitor = _spawn([*janitor_command(), "run", str(base / "run"), "--log-format", "json",
                      "--interval-to-keep", str(args.interval_to_keep)])
    trainer = _spawn([*me, "trainer", str(directory), "--seconds", str(args.seconds),
                      "--seed", str(args.seed)])
    consumer = _spawn([*me, "consumer", str(directory), "--seed", str(args.seed)])
    readers = [threading.Thread(target=_follow, args=(stream, progress), daemon=True)
               for stream in (trainer.stdout, consumer.stdout, janitor.stderr)
               if stream is not None]
    for reader in readers:
        reader.start()
    interactive = sys.stdout.isatty()
    started, peak = time.monotonic(), 0
    try:
        for line, on_disk in _live_lines(progress, directory, started, interactive):
            peak = max(peak, on_disk)
            print(("\r" + line) if interactive else line, end="" if interactive else "\n",
                  flush=True)
        if interactive:
            print()
        trainer.wait(timeout=30)
        consumer.terminate()
        consumer.wait(timeout=30)
    finally:
        for process in (trainer, consumer):
            if process.poll() is None:
                process.kill()
        janitor.send_signal(signal.SIGTERM)
        janitor_code = janitor.wait(timeout=10)
    return _summary(args, base, directory, progress, peak, janitor_code)


def _summary(args: argparse.Namespace, base: Path, directory: Path, progress: Progress,
             peak: int, janitor_code: int) -> int:
    plan = subprocess.run([*janitor_command(), "sweep", str(directory), "--dry-run", "--json",
                           "--interval-to-keep", str(args.interval_to_keep)],
                          capture_output=True, text=True, check=False)
    decisions = json.loads(plan.stdout)["directories"][0]["decisions"] if plan.stdout else []
    kept: dict[str, list[str]] = {}
    for decision in decisions:
        if decision["action"] == "keep":
            kept.setdefault(decision["reason"], []).append(str(decision["step"]))
    print("\nsummary")
    print(f"  steps written        {progress.written}")
    print(f"  steps loaded         {progress.loaded} (consumer stalled {progress.stalls} times)")
    print(f"  steps deleted        {progress.deleted} (by the janitor; the trainer deleted none)")
    print(f"  load failures        {len(progress.failures)}  (must be 0)")
    for failure in progress.failures[:5]:
        print(f"    {failure}")
    print(f"  disk high-water mark {human_bytes(peak)}")
    print(f"  on disk at the end   {_steps_on_disk(directory)} steps, "
          f"{human_bytes(path_size(directory))}")
    for reason, steps in sorted(kept.items()):
        print(f"  kept ({reason}){' ' * max(1, 18 - len(reason))}{', '.join(steps)}")
    print(f"  janitor exit code    {janitor_code} (0 = clean stop on SIGTERM)")
    for error in progress.janitor_errors[:5]:
        print(f"  janitor error: {error}")
    if not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"  tree kept at         {base}")
    if progress.loaded == 0:
        print("  the consumer loaded no step: nothing was tested")
    ok = (not progress.failures and janitor_code == 0 and not progress.janitor_errors
          and progress.loaded > 0)
    print("\nresult: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
