"""Shared helpers for the trainer_hooks tests, and the child writer the kill tests SIGKILL.

Run as `python -m helpers.hooks` (as spawn_writer does), this module is the child: it publishes
steps of many files in a loop through trainer_hooks (staged_step with a manifest, or save_step
with torch), optionally killing itself with SIGKILL at its K-th filesystem operation, so the
parent can check what a kill at that exact point leaves on disk. Imported, it offers the checker
for such a tree and small utilities.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import select
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from janitor import protocol

MANIFEST = "manifest.json"
TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def child_env() -> dict[str, str]:
    """Environment for a child python that must import trainer_hooks from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """Read one line from the child's stdout, failing after `timeout_s` instead of hanging."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise AssertionError(f"child wrote no line within {timeout_s} s")
    return proc.stdout.readline()


def spawn_writer(directory: Path, seed: int, *, mode: str = "staged", die_at: str = "",
                 steps: int = 0, max_step: int = 3, files: int = 40,
                 no_renameat2: bool = False) -> subprocess.Popen[bytes]:
    """Start the child writer on `directory`; it prints 'ready' once it starts writing."""
    args = [sys.executable, "-m", "helpers.hooks", str(directory), "--seed", str(seed),
            "--mode", mode, "--die-at", die_at, "--steps", str(steps),
            "--max-step", str(max_step), "--files", str(files)]
    if no_renameat2:
        args.append("--no-renameat2")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(TESTS)])  # for helpers.hooks
    return subprocess.Popen(args, stdout=subprocess.PIPE, env=env, cwd=REPO)


# ---- the checker -------------------------------------------------------------------------------

def tree_files(step_dir: Path) -> set[str]:
    """Every regular file below `step_dir`, as paths relative to it."""
    found: set[str] = set()
    for root, _dirs, names in os.walk(step_dir):
        for name in names:
            path = Path(root) / name
            assert stat.S_ISREG(path.lstat().st_mode), f"{path} is not a regular file"
            found.add(str(path.relative_to(step_dir)))
    return found


def check_staged_step(step_dir: Path, marker: str) -> list[str]:
    """Problems with one visible step written by the child in 'staged' mode (empty: whole)."""
    if not (step_dir / marker).is_file():
        return [f"{step_dir.name} is visible without its completion marker {marker}"]
    try:
        manifest = json.loads((step_dir / MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        return [f"{step_dir.name}: manifest unreadable: {exc}"]
    problems = []
    expected = set(manifest["files"]) | {MANIFEST, marker}
    actual = tree_files(step_dir) - {protocol.RECEIVER_READY_MARKER}
    if actual != expected:
        problems.append(f"{step_dir.name}: files {sorted(actual ^ expected)} missing or extra")
    token = manifest["token"].encode()
    for rel, digest in manifest["files"].items():
        path = step_dir / rel
        if not path.is_file():
            continue
        data = path.read_bytes()
        if not data.startswith(token) or hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{step_dir.name}/{rel}: content is not generation {manifest['token']}")
    return problems


def check_torch_step(step_dir: Path, marker: str) -> list[str]:
    """Problems with one visible step written by the child in 'torch' mode (empty: whole)."""
    import torch  # only the torch-marked tests get here

    if not (step_dir / marker).is_file():
        return [f"{step_dir.name} is visible without its completion marker {marker}"]
    if tree_files(step_dir) != {"model.pt", marker}:
        return [f"{step_dir.name}: unexpected files {sorted(tree_files(step_dir))}"]
    state = torch.load(step_dir / "model.pt", weights_only=True)
    token = int(state["token"])
    if len(state["shards"]) != int(state["count"]):
        return [f"{step_dir.name}: {len(state['shards'])} shards, expected {int(state['count'])}"]
    if any(not bool((shard == token).all()) for shard in state["shards"]):
        return [f"{step_dir.name}: a shard is not generation {token}"]
    return []


def check_tree(directory: Path, marker: str = protocol.DEFAULT_COMPLETE_MARKER,
               mode: str = "staged") -> tuple[list[str], list[str]]:
    """Check a tree after a kill: (problems, leftover hidden staging directories).

    Every `step_*` entry must be a canonical real directory, complete and whole; every other
    entry must be hidden: a staging directory (left for the janitor) or a marker temporary.
    """
    check = check_staged_step if mode == "staged" else check_torch_step
    problems: list[str] = []
    staging: list[str] = []
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if protocol.looks_like_step(entry):
            if isinstance(protocol.parse_step_name(entry), protocol.Invalid):
                problems.append(f"non-canonical step name {entry!r}")
            elif not stat.S_ISDIR(path.lstat().st_mode):
                problems.append(f"{entry} is not a real directory")
            else:
                problems.extend(check(path, marker))
        elif protocol.is_staging_name(entry):
            staging.append(entry)
        elif entry == protocol.LOADED_MARKER:
            if isinstance(protocol.parse_marker(path.read_bytes()), protocol.Invalid):
                problems.append(f"LOADED_STEP holds {path.read_bytes()!r}")
        elif not (entry.startswith(".") and protocol.consumer_of(entry) is None):
            problems.append(f"unexpected visible entry {entry!r}")
    return problems, staging


# ---- the child writer --------------------------------------------------------------------------

class _Killer:
    """Counts filesystem operations and SIGKILLs this process at a chosen one.

    `die_at` is "" (never), "any:K" (before the K-th operation of any kind), "OP:K" (before the
    K-th call of OP) or "OP:K:after" (right after the K-th call of OP returned). Before dying it
    prints which operation it stopped at, so the parent can tell which phases it covered.
    """

    def __init__(self, die_at: str) -> None:
        parts = die_at.split(":") if die_at else ["", "0"]
        self.op, self.nth, self.after = parts[0], int(parts[1]), parts[2:] == ["after"]
        self.counts: dict[str, int] = {}

    def _die(self, name: str, args: tuple[Any, ...]) -> None:
        sys.stdout.write(f"killed {name} {'after' if self.after else 'before'} {args!r}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            for key in (name, "any"):
                self.counts[key] = self.counts.get(key, 0) + 1
            hit = self.op in (name, "any") and self.counts[self.op] == self.nth
            if hit and not self.after:
                self._die(name, args)
            result = original(*args, **kwargs)
            if hit:
                self._die(name, args)
            return result

        setattr(owner, name, counted)


@contextlib.contextmanager
def _os_file(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _write_staged(directory: Path, step: int, rng: random.Random, files: int) -> None:
    import trainer_hooks

    token = f"{rng.getrandbits(64):016x}"
    manifest: dict[str, Any] = {"token": token, "files": {}}
    with trainer_hooks.staged_step(directory, step) as staging:
        (staging / "shards").mkdir()
        for index in range(rng.randint(files // 4, files)):
            rel = f"shards/shard_{index:04d}.bin" if index % 2 else f"part_{index:04d}.bin"
            data = token.encode() + rng.randbytes(rng.randint(0, 4096))
            with _os_file(staging / rel) as fd:
                os.write(fd, data)
            manifest["files"][rel] = hashlib.sha256(data).hexdigest()
        with _os_file(staging / MANIFEST) as fd:
            os.write(fd, json.dumps(manifest).encode())
    if rng.random() < 0.3:
        trainer_hooks.mark_loaded(directory, step)


def _write_torch(directory: Path, step: int, rng: random.Random, files: int) -> None:
    import torch

    import trainer_hooks

    token = rng.getrandbits(30)
    count = rng.randint(files // 4, files)
    shards = [torch.full((rng.randint(1, 20000),), token, dtype=torch.int64) for _ in range(count)]
    state = {"token": torch.tensor(token), "count": torch.tensor(count), "shards": shards}
    trainer_hooks.save_step(directory, step, state)


def _child_main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mode", choices=["staged", "torch"], default="staged")
    parser.add_argument("--die-at", default="", help="OP:K[:after] or any:K, see _Killer")
    parser.add_argument("--steps", type=int, default=0, help="0: write until killed")
    parser.add_argument("--max-step", type=int, default=3)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--no-renameat2", action="store_true",
                        help="publish with the plain-rename fallback, as on systems without it")
    args = parser.parse_args()

    import trainer_hooks._rename

    if args.mode == "torch":
        import torch  # noqa: F401  # imported before 'ready' so kills land in writes
    if args.no_renameat2:
        trainer_hooks._rename._RENAMEAT2 = None
    rng = random.Random(args.seed)
    killer = _Killer(args.die_at)
    for name in ("open", "write", "fsync", "rename", "mkdir", "unlink", "rmdir", "utime"):
        killer.wrap(os, name)
    killer.wrap(trainer_hooks._rename, "renameat2")
    write = _write_staged if args.mode == "staged" else _write_torch
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    written = 0
    while args.steps == 0 or written < args.steps:
        write(args.directory, rng.randint(0, args.max_step), rng, args.files)
        written += 1
    sys.stdout.write(f"ops {json.dumps(killer.counts)}\n")


if __name__ == "__main__":
    _child_main()
