"""Trainer stall: step time of a torch training loop that publishes a step every iteration,
with no cleanup (the baseline), with inline `shutil.rmtree` of step N-2 in the loop (what
trainers do today), and with `janitor run` beside it as a separate process.

The loop (CPU, a small MLP) does forward, backward and an optimizer step, publishes the weights
with trainer_hooks.save_step (torch.save, fsync, STABLE last, rename) and then, playing the
consumer, publishes LOADED_STEP = N-1 with trainer_hooks.mark_loaded: the same writes in every
variant, so the only difference is who deletes and where. Variants run in rounds, rotating
their order, each round on a fresh directory; the first steps of each round are warm-up and
dropped. On a 2-core machine the janitor process competes with the trainer for CPU (and the
deletions for the same disk); that cost is part of what is measured.

    .venv/bin/python bench/trainer_stall.py [--quick] [--janitor-path DIR] --out results.json

--janitor-path DIR runs the janitor of another checkout (`python -m janitor` with PYTHONPATH and
cwd DIR, e.g. a `git worktree` of an older commit); the loop and trainer_hooks stay this one's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from _common import janitor_command, machine, scratch, stop_process, summary, write_json

VARIANTS = ("no cleanup", "untimed rmtree N-2", "inline rmtree N-2", "janitor run")
# "untimed rmtree N-2" deletes like the inline variant but outside the timed part of the step:
# the same disk footprint as the cleaners at zero cleanup cost. On this VM "no cleanup" is not
# that ideal: its tree grows by a step per iteration and the writes get slower as it does.
WARMUP = 2


def make_model(width: int, depth: int) -> tuple[Any, Any, Any, Any]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = torch.randn(64, width)
    target = torch.randn(64, width)
    return model, optimizer, batch, target


def start_janitor(directory: Path, log: Path,
                  janitor_path: Path | None = None) -> subprocess.Popen[bytes]:
    args = ["run", str(directory), "--watch", "inotify", "--audit-log", "off",
            "--log-format", "json"]
    with open(log, "wb") as out:
        if janitor_path is None:
            proc = subprocess.Popen([*janitor_command(), *args], stdout=out,
                                    stderr=subprocess.STDOUT)
        else:  # cwd too: `python -m` puts it first on sys.path
            env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}
            proc = subprocess.Popen([sys.executable, "-m", "janitor", *args], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=janitor_path,
                                    env={**env, "PYTHONPATH": str(janitor_path)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if b'"ready"' in log.read_bytes():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"janitor exited early: {log.read_text()[-2000:]}")
        time.sleep(0.02)  # polling a log file for readiness, not synchronising the measurement
    proc.kill()
    raise RuntimeError("janitor not ready within 30 s")


def run_round(variant: str, directory: Path, steps: int, model_parts: tuple[Any, ...],
              first_step: int, janitor_path: Path | None = None,
              ) -> tuple[list[float], int, float | None]:
    import torch
    from torch import nn

    from trainer_hooks import mark_loaded, save_step

    model, optimizer, batch, target = model_parts
    loss_fn = nn.MSELoss()
    directory.mkdir()
    janitor = start_janitor(directory, directory.parent / f"{directory.name}.log",
                            janitor_path) if variant == "janitor run" else None
    cpu_at_ready = 0.0
    if janitor is not None:  # leave its start-up out of the CPU it takes from the loop
        cpu = psutil.Process(janitor.pid).cpu_times()
        cpu_at_ready = cpu.user + cpu.system
    times: list[float] = []
    try:
        for i in range(first_step, first_step + steps):
            started = time.perf_counter()
            optimizer.zero_grad()
            loss = loss_fn(model(batch), target)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                save_step(directory, i, model.state_dict())
            if i > first_step:
                mark_loaded(directory, i - 1)
            if variant == "inline rmtree N-2":
                shutil.rmtree(directory / f"step_{i - 2}", ignore_errors=True)
            times.append(time.perf_counter() - started)
            if variant == "untimed rmtree N-2":
                shutil.rmtree(directory / f"step_{i - 2}", ignore_errors=True)
        janitor_cpu_s = None
        if janitor is not None:  # CPU the janitor took from the trainer's 2 cores, per step
            cpu = psutil.Process(janitor.pid).cpu_times()
            janitor_cpu_s = (cpu.user + cpu.system - cpu_at_ready) / steps
    finally:
        if janitor is not None:
            stop_process(janitor)
    left = sum(1 for name in os.listdir(directory) if name.startswith("step_"))
    return times[WARMUP:], left, janitor_cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--out", required=True)
    parser.add_argument("--janitor-path", type=Path, default=None,
                        help="checkout whose janitor runs beside the loop (default: this venv's)")
    args = parser.parse_args()
    janitor_path = args.janitor_path.resolve() if args.janitor_path else None
    import torch

    rounds, steps = (2, 8) if args.quick else (8, 22)
    width, depth = 1024, 8  # 8.4 M parameters: a 34 MB step
    parts = make_model(width, depth)
    step_bytes = sum(p.numel() * p.element_size() for p in parts[0].parameters())
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    steps_left: dict[str, list[int]] = {v: [] for v in VARIANTS}
    janitor_cpu_per_step: list[float] = []
    with scratch("stall") as root:
        for r in range(rounds):
            order = VARIANTS[r % 4:] + VARIANTS[:r % 4]
            for variant in order:
                directory = root / f"r{r}-{variant.replace(' ', '-')}"
                times, left, janitor_cpu = run_round(variant, directory, steps, parts,
                                                     first_step=1, janitor_path=janitor_path)
                if janitor_cpu is not None:
                    janitor_cpu_per_step.append(janitor_cpu)
                samples[variant] += times
                steps_left[variant].append(left)
                print(f"  round {r + 1}/{rounds} {variant}: median "
                      f"{statistics.median(times) * 1e3:.0f} ms, {left} steps left", flush=True)
                shutil.rmtree(directory)
    base = statistics.fmean(samples["no cleanup"])
    base_p50 = statistics.median(samples["no cleanup"])
    ideal = statistics.fmean(samples["untimed rmtree N-2"])
    results = {}
    for variant, values in samples.items():
        figures: dict[str, Any] = dict(summary(values))
        figures["mean_ratio_vs_no_cleanup"] = figures["mean"] / base
        figures["p50_ratio_vs_no_cleanup"] = figures["p50"] / base_p50
        figures["mean_ratio_vs_untimed_cleanup"] = figures["mean"] / ideal
        figures["steps_left_on_disk"] = steps_left[variant]
        figures["samples_s"] = values
        results[variant] = figures
    janitor_cpu_median = statistics.median(janitor_cpu_per_step)
    janitor = results["janitor run"]
    print(f"janitor run / untimed rmtree N-2 (ideal): mean "
          f"{janitor['mean_ratio_vs_untimed_cleanup']:.3f}x, p50 "
          f"{janitor['p50'] / statistics.median(samples['untimed rmtree N-2']):.3f}x; / no "
          f"cleanup: mean {janitor['mean_ratio_vs_no_cleanup']:.3f}x; janitor CPU "
          f"{janitor_cpu_median * 1e3:.1f} ms per trainer step (utime+stime, /proc/PID/stat)")
    write_json(args.out, {
        "benchmark": "trainer_stall", "machine": machine(), "quick": args.quick,
        "model": f"MLP {depth} x Linear({width}, {width}), fp32", "step_bytes": step_bytes,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "rounds": rounds, "steps_per_round": steps, "warmup_dropped_per_round": WARMUP,
        "variants": results,
        # CPU seconds the janitor used while the loop ran, per step (start-up excluded).
        "janitor_cpu_s_per_step": janitor_cpu_median,
        "janitor_cpu_s_per_step_by_round": janitor_cpu_per_step,
        "janitor_path": str(janitor_path) if janitor_path else None,
        "janitor_commit": _commit(janitor_path),
    })


def _commit(path: Path | None) -> str | None:
    """The short commit of the checkout whose janitor ran (None: the installed one)."""
    if path is None:
        return None
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


if __name__ == "__main__":
    main()
