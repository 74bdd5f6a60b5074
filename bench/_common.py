"""Helpers shared by the benchmarks: scratch trees, medians and percentiles, machine facts, JSON.

Every benchmark writes one JSON document (`--out FILE`) holding its figures and the baseline
measured in the same run; bench/run_all.py collects them into a summary and plots.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, median, p99, min and max of a sample (seconds or whatever unit it is in)."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory outside the repository, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"ckpt-janitor-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (as the janitor itself sees it)."""
    from janitor.fs.mounts import filesystem_type
    return filesystem_type(str(path))


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, kernel, Python, bench filesystem."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    with scratch("probe") as probe:
        fstype = filesystem_of(probe)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bench_filesystem": fstype,
        "loadavg_at_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def run_rm_rf(path: Path) -> float:
    """Seconds `rm -rf path` takes, process start included (about a millisecond)."""
    started = time.perf_counter()
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)
    return time.perf_counter() - started


def janitor_command() -> list[str]:
    """How to start the janitor CLI from this venv."""
    script = VENV_BIN / "janitor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "janitor"]


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
