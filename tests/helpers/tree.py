"""Checkpoint trees for the tests: building them (steps, markers written strictly after the steps
below them) and reading them back (`step_numbers`, `tree_state`, `trash_names`).

Fixtures built on these live in conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from helpers.wait import wait_until
from janitor import protocol

# ---- building ----------------------------------------------------------------------------------

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


def make_steps(directory: Path, numbers: Iterable[int], *, complete: bool = True,
               files: int = 0) -> None:
    """Create `step_N` directories (with `files` small shard files, then STABLE if complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        step = directory / f"step_{number}"
        step.mkdir()
        step_fd = os.open(step, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(files):
                fd = os.open(f"shard_{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                             dir_fd=step_fd)
                os.write(fd, b"x")
                os.close(fd)
        finally:
            os.close(step_fd)
        if complete:
            (step / "STABLE").touch()


def build_tree(directory: Path, steps: int, *, loaded: int | None, files: int = 2,
               size: int = 64, incomplete: tuple[int, ...] = ()) -> Path:
    """steps 1..`steps` (complete unless listed in `incomplete`), then LOADED_STEP=`loaded`."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(1, steps + 1):
        make_step(directory, number, complete=number not in incomplete, files=files, size=size)
    if loaded is not None:
        write_marker(directory, loaded)
    return directory


# ---- markers after the steps -------------------------------------------------------------------

def newest_change_ns(root: Path) -> int:
    """The newest mtime/ctime of any path under `root` (root included), symlinks not followed."""
    newest = 0
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            st = path.lstat()
            newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def newest_step_change_ns(directory: Path) -> int:
    """Newest mtime/ctime of the `step_*` entries and their STABLE markers (what the scan looks
    at first)."""
    newest = 0
    for name in os.listdir(directory):
        if not protocol.looks_like_step(name):
            continue
        for path in (directory / name, directory / name / protocol.DEFAULT_COMPLETE_MARKER):
            with contextlib.suppress(OSError):
                st = path.lstat()
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return newest


def after_every_step(directory: Path, path: Path) -> None:
    """Bump `path`'s mtime until the filesystem clock is past every step's change time.

    Invariant 4 keeps a step changed at or after the marker's mtime, and filesystem clocks tick
    coarsely: a marker written in the same tick as the last step would license nothing.
    """
    newest = newest_step_change_ns(directory)

    def past() -> bool:
        os.utime(path)
        return path.stat().st_mtime_ns > newest

    wait_until(past, 5.0, "the filesystem clock to pass the newest step", interval_s=0.001)


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


# ---- reading back ------------------------------------------------------------------------------

def step_numbers(directory: Path) -> list[int]:
    """N of every real `step_N` directory present, sorted; [] if `directory` does not exist.

    A step is what the protocol's own parser says it is (`protocol.parse_step_name`): `step_01`,
    `step_1.tmp` or a `step_3` symlink are foreign, not steps. The one copy every test uses;
    wrap it in set() to compare against a set."""
    numbers = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as listing:
        for entry in listing:
            number = protocol.parse_step_name(entry.name)
            if isinstance(number, int) and entry.is_dir(follow_symlinks=False):
                numbers.append(number)
    return sorted(numbers)


def trash_names(directory: Path) -> list[str]:
    """The entries of `directory`'s trash, sorted; [] when there is no trash."""
    try:
        return sorted(os.listdir(directory / protocol.TRASH_DIR))
    except FileNotFoundError:
        return []


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `root` (root included) with its type, mode, size, mtime, owner and content
    hash (or link target).

    atime is left out on purpose: reading a directory may update it and that is no change.
    Symlinks are never followed and FIFOs never opened, so hashing never blocks; a regular file
    this process may not open (mode 000 as non-root) has no hash.
    """
    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in [b"", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = os.path.relpath(path, os.fsencode(root))
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with contextlib.suppress(PermissionError), open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path).hex()
            state[rel.decode("utf-8", "surrogateescape")] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                st.st_uid, digest)
    return state
