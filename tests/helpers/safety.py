"""Helpers for the proof-of-safety suite (issue 6): trees whose steps can be checked whole,
markers published durably and strictly after the steps below them, tmpfs and bind mounts, audit
records and a small model of what the policy must keep. (The real `janitor` in a subprocess is
helpers.run, a daemon helpers.daemon.Daemon.)

Nothing here sleeps to synchronise: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers.tree import after_every_step, step_numbers
from janitor import protocol

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"


# ---- trees whose steps can be checked whole ----------------------------------------------------

def write_step(directory: Path, number: int, *, files: int = 3, size: int = 16,
               complete: bool = True, subdirs: int = 0) -> Path:
    """`step_N` with `files` shards (spread over `subdirs` subdirectories) and a manifest listing
    every file and its size, STABLE last when complete. check_whole() reads the manifest back."""
    step = directory / protocol.step_name(number)
    step.mkdir()
    listing: dict[str, int] = {}
    folders = [""] + [f"d{i}" for i in range(subdirs)]
    for folder in folders[1:]:
        (step / folder).mkdir()
    for index in range(files):
        rel = os.path.join(folders[index % len(folders)], f"shard_{index:05d}.bin")
        (step / rel).write_bytes(b"%d:" % number + b"x" * size)
        listing[rel] = (step / rel).stat().st_size
    (step / MANIFEST).write_text(json.dumps(listing))
    if complete:
        (step / protocol.DEFAULT_COMPLETE_MARKER).write_bytes(b"")
    return step


def build(directory: Path, numbers: Iterable[int], **kwargs: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        write_step(directory, number, **kwargs)
    return directory


def check_whole(directory: Path) -> list[str]:
    """Every `step_N` present holds exactly the files its manifest lists (no half-deleted step)."""
    problems = []
    for number in step_numbers(directory):
        step = directory / protocol.step_name(number)
        try:
            listing = json.loads((step / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"step_{number}: manifest unreadable ({exc})")
            continue
        for rel, size in listing.items():
            try:
                if (step / rel).lstat().st_size != size:
                    problems.append(f"step_{number}/{rel}: wrong size")
            except FileNotFoundError:
                problems.append(f"step_{number}/{rel}: missing (half-deleted step)")
    return problems


def publish_marker(directory: Path, content: int | bytes, consumer: str | None = None) -> Path:
    """Publish LOADED_STEP[.consumer] atomically and durably (fsynced before the rename), with an
    mtime strictly after every step's change time (filesystem clocks tick coarsely; invariant 4
    keeps a step changed in the same tick)."""
    name = protocol.marker_name(consumer)
    data = protocol.format_marker(content) if isinstance(content, int) else content
    temporary = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    after_every_step(directory, temporary)
    temporary.rename(directory / name)
    return directory / name


# ---- what the policy must keep -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rules:
    interval_to_keep: int | None = None
    keep_last: int = 1


def must_keep(complete: Iterable[int], loaded: int | None, rules: Rules = Rules()) -> set[int]:
    """Complete steps the policy must keep, given the effective loaded step (None: no valid
    marker). Every step not listed may be deleted, none must be."""
    steps = sorted(set(complete))
    if loaded is None or not steps:
        return set(steps)
    kept = set(steps[-rules.keep_last:])
    kept.update(n for n in steps if n >= loaded)
    if rules.interval_to_keep:
        kept.update(n for n in steps if n % rules.interval_to_keep == 0)
    return kept


def rule_args(rules: Rules) -> list[str]:
    args = ["--keep-last", str(rules.keep_last)]
    if rules.interval_to_keep:
        args += ["--interval-to-keep", str(rules.interval_to_keep)]
    return args


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit log (rotated files not included); [] when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- mounts ------------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(where: Path, options: str = "size=8m") -> Iterator[Path]:
    """Mount a tmpfs at `where` for the block (skip the test if mounting is impossible)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (need root): {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        unmount(where)


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@contextlib.contextmanager
def bind_mount(source: Path, where: Path, *, read_only: bool = False) -> Iterator[Path]:
    """Bind-mount `source` at `where` (read-only if asked) for the block, or skip."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "--bind", str(source), str(where)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount (need root): {done.stderr.decode().strip()}")
    try:
        if read_only:
            ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(where)],
                                capture_output=True, check=False)
            if ro.returncode != 0:
                pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        yield where
    finally:
        unmount(where)


def load_bench(name: str) -> Any:
    """Import bench/<name>.py (bench/ is no package) so a test can run its harness in-process."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
