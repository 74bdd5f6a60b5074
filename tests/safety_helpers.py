"""Helpers for the proof-of-safety suite (issue 6): trees whose steps can be checked whole,
markers published strictly after the steps below them, the real `janitor` in a subprocess, a
daemon whose JSON log lines are parsed on a reader thread, tmpfs mounts, audit records and a
small model of what the policy must keep.

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
from daemon_helpers import Janitor
from janitor_helpers import step_numbers, wait_until

from janitor import protocol

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JANITOR = str(Path(sys.executable).with_name("janitor"))
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
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


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `root` (root included) with type, mode, size, mtime, owner and content
    (or link target); atime left out. Symlinks are never followed, FIFOs never opened."""
    import hashlib
    import stat

    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in [b"", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path).hex()
            rel = os.path.relpath(path, os.fsencode(root)).decode("utf-8", "surrogateescape")
            state[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                          st.st_mtime_ns, st.st_uid, digest)
    return state


def trash_names(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory / protocol.TRASH_DIR))
    except FileNotFoundError:
        return []


def newest_change_ns(directory: Path) -> int:
    """Newest mtime/ctime of the step directories and their markers (what the scan looks at)."""
    newest = 0
    for name in os.listdir(directory):
        if not protocol.looks_like_step(name):
            continue
        for path in (directory / name, directory / name / protocol.DEFAULT_COMPLETE_MARKER):
            with contextlib.suppress(OSError):
                st = path.lstat()
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def publish_marker(directory: Path, content: int | bytes, consumer: str | None = None) -> Path:
    """Publish LOADED_STEP[.consumer] atomically with an mtime strictly after every step's change
    time (filesystem clocks tick coarsely; invariant 4 keeps a step changed in the same tick)."""
    name = protocol.marker_name(consumer)
    data = protocol.format_marker(content) if isinstance(content, int) else content
    temporary = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    newest = newest_change_ns(directory)

    def past() -> bool:
        os.utime(temporary)
        return temporary.stat().st_mtime_ns > newest

    wait_until(past, 5.0, "the filesystem clock to pass the newest step", interval_s=0.001)
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


# ---- the real janitor --------------------------------------------------------------------------

def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}
    env.update(extra or {})
    return env


class Daemon(Janitor):
    """A `janitor run` process (daemon_helpers.Janitor) without the test's own JANITOR_*
    variables; stop() returns the exit code alone."""

    def __init__(self, args: list[str | Path], env: dict[str, str] | None = None) -> None:
        super().__init__(["--log-format", "json", *(str(a) for a in args)],
                         base_env=clean_env(env), cwd=Path("/"))

    def wait_event(self, name: str, timeout_s: float = 20.0, **match: Any) -> dict[str, Any]:
        return super().wait_event(name, timeout_s, **match)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)

    def stop(self, timeout_s: float = 30.0) -> int:  # type: ignore[override]
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code


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


def can_drop_privileges() -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run([*NOBODY, "true"], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def shared_dir(prefix: str) -> Iterator[Path]:
    """A directory under /tmp that uid 65534 can reach (pytest's tmp_path is private to root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def load_bench(name: str) -> Any:
    """Import bench/<name>.py (bench/ is no package) so a test can run its harness in-process."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
