"""Shared helpers for the janitor tests: a checkpoint-tree builder, marker writers, tree hashing,
and running the real `janitor` console script in a subprocess with a timeout.

Fixtures built on these live in conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from janitor import protocol

# The venv's console script sits next to the interpreter running the tests.
JANITOR = str(Path(sys.executable).with_name("janitor"))
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
RUN_TIMEOUT_S = 120.0  # a hang guard; a 100,000-step sweep on a loaded machine takes ~40 s


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str,
               interval_s: float = 0.005) -> Any:
    """Poll `condition` until it returns something truthy, and return that; fail with `what`
    after `timeout_s`. The one way the tests wait (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)

def make_step(directory: Path, number: int, *, complete: bool = True, files: int = 2,
              size: int = 64, marker: str = protocol.DEFAULT_COMPLETE_MARKER) -> Path:
    """Write `step_<number>` with `files` shard files of `size` bytes (marker last if complete)."""
    step = directory / protocol.step_name(number)
    step.mkdir()
    for index in range(files):
        (step / f"shard-{index:05d}.bin").write_bytes(_content(number, index, size))
    if complete:
        (step / marker).write_bytes(b"")
    return step


def _content(number: int, index: int, size: int) -> bytes:
    seed = f"{number}:{index}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


def newest_change_ns(root: Path) -> int:
    """The newest mtime/ctime of any path under `root` (root included), symlinks not followed."""
    newest = 0
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            st = path.lstat()
            newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def wait_for_fs_clock(directory: Path, after_ns: int) -> None:
    """Wait until a file created in `directory` gets an mtime strictly after `after_ns`.

    Filesystem clocks tick coarsely (a few ms): a marker written in the same tick as the steps
    below it would not be 'after' them (invariant 4 keeps such steps), so tests wait for a tick.
    """
    probe = directory / ".fs-clock-probe"

    def ticked() -> bool:
        probe.write_bytes(b"")
        try:
            return probe.stat().st_mtime_ns > after_ns
        finally:
            probe.unlink()

    wait_until(ticked, 5.0, "the filesystem clock to tick")


def write_marker(directory: Path, content: bytes | str | int, name: str = protocol.LOADED_MARKER,
                 *, after_tree: bool = True) -> Path:
    """Write a consumer marker atomically; by default strictly after every change in the tree."""
    if isinstance(content, int):
        data = protocol.format_marker(content)
    elif isinstance(content, str):
        data = content.encode()
    else:
        data = content
    if after_tree:
        wait_for_fs_clock(directory, newest_change_ns(directory))
    tmp = directory / f"{name}.tmp"
    tmp.write_bytes(data)
    tmp.replace(directory / name)
    return directory / name


def build_tree(directory: Path, steps: int, *, loaded: int | None, files: int = 2,
               size: int = 64, incomplete: tuple[int, ...] = ()) -> Path:
    """steps 1..`steps` (complete unless listed in `incomplete`), then LOADED_STEP=`loaded`."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(1, steps + 1):
        make_step(directory, number, complete=number not in incomplete, files=files, size=size)
    if loaded is not None:
        write_marker(directory, loaded)
    return directory


def step_numbers(directory: Path) -> list[int]:
    """N of every real `step_N` directory present (canonical names only, by the protocol's own
    parser: `step_01` is foreign, not step 1), sorted; [] if `directory` does not exist. The one
    copy every test helper uses."""
    numbers = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as listing:
        for entry in listing:
            number = protocol.parse_step_name(entry.name)
            if isinstance(number, int) and entry.is_dir(follow_symlinks=False):
                numbers.append(number)
    return sorted(numbers)


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `root` with its type, mode, size, mtime and content (or link target).

    atime is left out on purpose: reading a directory may update it and that is no change.
    FIFOs are never opened, so hashing never blocks.
    """
    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in [b"", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = os.path.relpath(path, os.fsencode(root))
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o444:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path).hex()
            else:
                digest = ""
            state[rel.decode("utf-8", "surrogateescape")] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                st.st_uid, digest)
    return state


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_janitor(*args: str | Path, env: dict[str, str] | None = None, as_nobody: bool = False,
                timeout_s: float = RUN_TIMEOUT_S, nofile: int | None = None) -> Ran:
    """Run the real `janitor` console script; never hangs past `timeout_s`. `nofile` sets
    RLIMIT_NOFILE (soft and hard) for it, as systemd's LimitNOFILE= would."""
    command = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
    command += [*NOBODY] if as_nobody else []
    command += [JANITOR, *(str(a) for a in args)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}
    if as_nobody and "XDG_STATE_HOME" in full_env:
        # The audit log of a janitor running as uid 65534 goes where that user may write.
        state = Path(full_env["XDG_STATE_HOME"]) / "uid-65534"
        state.mkdir(exist_ok=True)
        os.chown(state, 65534, 65534)
        full_env["XDG_STATE_HOME"] = str(state)
    full_env.update(env or {})
    done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=full_env,
                          check=False)
    return Ran(done.returncode, done.stdout.decode("utf-8", "replace"),
               done.stderr.decode("utf-8", "replace"))


def can_drop_privileges() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    done = subprocess.run([*NOBODY, "true"], capture_output=True, check=False)
    return done.returncode == 0


