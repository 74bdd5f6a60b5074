"""The consumer's side: find the newest complete step, wait for a newer one, load it.

"Complete" is the protocol's definition: a real `step_<N>` directory (canonical name, never a
symlink) that holds the completion marker as a regular file. Everything else in the directory
(foreign names, staging dirs, markers, trash) is ignored.
"""

from __future__ import annotations

import os
import time
from typing import Any

from janitor import protocol

from . import _fs
from ._checks import check_directory, check_file_name, check_seconds, check_step
from ._torchio import torch_load


def newest_complete_step(directory: str | os.PathLike[str],
                         complete_marker: str = protocol.DEFAULT_COMPLETE_MARKER) -> int | None:
    """The highest N whose `step_N` in `directory` is complete, or None if there is none."""
    root = check_directory(directory)
    marker = check_file_name(complete_marker, "complete_marker")
    parent_fd = _fs.open_directory(root)
    try:
        for number in _fs.step_numbers_newest_first(parent_fd):
            if _is_complete(protocol.step_name(number), parent_fd, marker):
                return number
        return None
    finally:
        os.close(parent_fd)


def wait_for_step_newer_than(directory: str | os.PathLike[str], step: int | None,
                             timeout_s: float,
                             complete_marker: str = protocol.DEFAULT_COMPLETE_MARKER,
                             poll_interval_s: float = 0.5) -> int:
    """Poll until a complete step newer than `step` exists; return the newest complete step.

    `step=None` accepts any complete step. A directory that does not exist yet counts as holding
    no step (consumers often start before the trainer). Raises TimeoutError after `timeout_s`.
    Polling, not inotify, because the writer is often on another host of a shared filesystem.
    """
    after = None if step is None else check_step(step)
    timeout = check_seconds(timeout_s, "timeout_s", positive=False)
    interval = check_seconds(poll_interval_s, "poll_interval_s", positive=True)
    marker = check_file_name(complete_marker, "complete_marker")
    deadline = time.monotonic() + timeout
    while True:
        missing = False
        try:
            newest = newest_complete_step(directory, marker)
        except FileNotFoundError:
            missing, newest = True, None
        if newest is not None and (after is None or newest > after):
            return newest
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            wanted = "any complete step" if after is None else f"a complete step newer than {after}"
            seen = ("the directory does not exist" if missing
                    else f"newest complete step: {newest}")
            raise TimeoutError(f"{wanted} (marker {marker!r}) did not appear in "
                               f"{os.fspath(directory)!r} within {timeout:g} s; {seen}")
        time.sleep(min(interval, remaining))


def load_step(directory: str | os.PathLike[str], step: int, filename: str = "model.pt", *,
              complete_marker: str | None = protocol.DEFAULT_COMPLETE_MARKER,
              map_location: Any = None) -> Any:
    """torch.load (weights_only=True) `directory/step_<step>/<filename>`.

    Refuses (FileNotFoundError) a step without its completion marker unless complete_marker is
    None, and never follows a symlink. Write LOADED_STEP only after every server has loaded.
    """
    root = check_directory(directory)
    number = check_step(step)
    name = check_file_name(filename, "filename")
    marker = None if complete_marker is None else check_file_name(complete_marker,
                                                                   "complete_marker")
    step_dir = protocol.step_name(number)
    step_fd = _fs.open_step_dir(root, step_dir)
    try:
        if marker is not None and not _fs.is_regular_file(marker, step_fd):
            raise FileNotFoundError(f"{root / step_dir} is not complete: it has no {marker!r} "
                                    "file (still being written, or written by a crashed writer)")
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=step_fd)
    finally:
        os.close(step_fd)
    return torch_load(fd, map_location)


def _is_complete(step_dir: str, parent_fd: int, marker: str) -> bool:
    """True if `step_dir` is a real directory holding `marker` as a regular file."""
    try:
        fd = _fs.open_entry_dir(step_dir, parent_fd, step_dir)
    except (FileNotFoundError, NotADirectoryError):
        return False  # deleted or swapped for a symlink since the scan: not a complete step
    try:
        return _fs.is_regular_file(marker, fd)
    finally:
        os.close(fd)
