"""The live demo: a trainer, a stalling consumer and the janitor daemon share one real tree.

    python -m trainer_hooks.demo [--seconds 30] [--dir DIR]

The trainer trains a tiny torch model on the CPU and publishes one step per iteration with
`save_step`; the consumer loads the newest complete step with `torch.load`, sometimes stalls for
several steps, and marks it loaded; `janitor run` deletes below LOADED_STEP beside them. The demo
prints live progress and a summary: load failures (must be 0), the disk high-water mark, and the
steps kept with the reason for each. The roles (`trainer`, `consumer`) are also subcommands, so
bench/race.py can run the same pair under other cleaners.
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

from janitor.report import human_bytes
from janitor.sizes import tree_size

from .consume import load_step, wait_for_step_newer_than
from .markers import mark_loaded
from .publish import save_step


def _emit(**fields: Any) -> None:
    """Roles report to the orchestrator as JSON lines on stdout."""
    print(json.dumps(fields), flush=True)


# ---- roles ---------------------------------------------------------------------------------


def run_trainer(directory: Path, seconds: float, step_interval_s: float, width: int,
                seed: int) -> None:
    """Train a tiny MLP; publish its weights as a step after every optimizer step."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    deadline = time.monotonic() + seconds
    step = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        inputs = torch.randn(64, width)
        loss = (model(inputs) - inputs.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        save_step(directory, step, model.state_dict())
        _emit(role="trainer", event="published", step=step, loss=round(float(loss), 4))
        time.sleep(max(0.0, step_interval_s - (time.monotonic() - started)))
    _emit(role="trainer", event="done", steps=step)


def run_consumer(directory: Path, seed: int, stall_chance: float, stall_s: tuple[float, float],
                 idle_timeout_s: float) -> None:
    """Load each newest complete step, sometimes stalling first; mark it loaded afterwards."""
    rng = random.Random(seed)  # noqa: S311 (a stall schedule, not a secret)
    last: int | None = None
    while True:
        try:
            step = wait_for_step_newer_than(directory, last, timeout_s=idle_timeout_s,
                                            poll_interval_s=0.05)
        except TimeoutError:
            break
        if rng.random() < stall_chance:
            stall = rng.uniform(*stall_s)
            _emit(role="consumer", event="stall", step=step, seconds=round(stall, 2))
            time.sleep(stall)  # the stalled event loop of a real orchestrator
        try:
            load_step(directory, step)
        except (FileNotFoundError, NotADirectoryError, RuntimeError, EOFError) as exc:
            _emit(role="consumer", event="load_failed", step=step, error=str(exc)[:200])
            last = step
            continue
        mark_loaded(directory, step)
        _emit(role="consumer", event="loaded", step=step)
        last = step
    _emit(role="consumer", event="done", last=last)


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


def _follow(stream: TextIO, progress: Progress) -> None:
    for line in stream:
        try:
            record = json.loads(line)
        except ValueError:
            continue
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


def _janitor_command() -> list[str]:
    found = shutil.which("janitor", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "janitor"]


def _steps_on_disk(directory: Path) -> int:
    try:
        return sum(1 for name in os.listdir(directory) if name.startswith("step_"))
    except FileNotFoundError:
        return 0


def _bytes_on_disk(directory: Path) -> int:
    fd = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return tree_size(fd, directory.name)
    finally:
        os.close(fd)


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
        on_disk = _bytes_on_disk(directory)
        line += f"on disk: {_steps_on_disk(directory):3d} steps, {human_bytes(on_disk):>10}"
        yield line, on_disk
        if done:
            return
        time.sleep(0.25 if interactive else 2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_hooks.demo", description=__doc__,
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
    trainer.add_argument("--step-interval", type=float, default=0.2)
    trainer.add_argument("--width", type=int, default=512)
    trainer.add_argument("--seed", type=int, default=7)
    consumer = sub.add_parser("consumer")
    consumer.add_argument("directory", type=Path)
    consumer.add_argument("--seed", type=int, default=7)
    consumer.add_argument("--stall-chance", type=float, default=0.08)
    consumer.add_argument("--stall-min", type=float, default=0.8)
    consumer.add_argument("--stall-max", type=float, default=2.5)
    consumer.add_argument("--idle-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.role == "trainer":
        run_trainer(args.directory, args.seconds, args.step_interval, args.width, args.seed)
        return 0
    if args.role == "consumer":
        run_consumer(args.directory, args.seed, args.stall_chance,
                     (args.stall_min, args.stall_max), args.idle_timeout)
        return 0
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    """Run trainer, consumer and janitor side by side; print progress and the summary."""
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ckpt-janitor-demo-"))
    directory = base / "run" / "broadcasts"
    directory.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, "-m", "trainer_hooks.demo"]
    print(f"demo tree: {directory}\n"
          f"trainer: one step every 0.2 s for {args.seconds:g} s; consumer stalls now and then; "
          f"janitor keeps every multiple of {args.interval_to_keep}\n", flush=True)
    progress = Progress()
    janitor = _spawn([*_janitor_command(), "run", str(base / "run"), "--log-format", "json",
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
    plan = subprocess.run([*_janitor_command(), "sweep", str(directory), "--dry-run", "--json",
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
          f"{human_bytes(_bytes_on_disk(directory))}")
    for reason, steps in sorted(kept.items()):
        print(f"  kept ({reason}){' ' * max(1, 18 - len(reason))}{', '.join(steps)}")
    print(f"  janitor exit code    {janitor_code} (0 = clean stop on SIGTERM)")
    for error in progress.janitor_errors[:5]:
        print(f"  janitor error: {error}")
    if not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"  tree kept at         {base}")
    ok = not progress.failures and janitor_code == 0 and not progress.janitor_errors
    print("\nresult: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
