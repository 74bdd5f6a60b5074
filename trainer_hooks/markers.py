"""Progress markers a consumer publishes: `LOADED_STEP[.<consumer>]`, `.receiver_ready`.

The janitor deletes steps only below what these say, so they must never be half-written: each is
written to a hidden temporary, fsynced, renamed into place, and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from janitor import protocol

from . import _fs
from ._checks import check_consumer, check_directory, check_step


def mark_loaded(directory: str | os.PathLike[str], step: int,
                consumer: str | None = None) -> Path:
    """Atomically write `directory/LOADED_STEP` (or `LOADED_STEP.<consumer>`) saying `step`.

    Call it only after *every* server of this consumer finished loading `step`: the janitor may
    then delete any step below it. The content is exactly the step in ASCII decimal and a newline.
    The temporary (`.LOADED_STEP....tmp`, hidden) is never mistaken for a consumer, so a crash
    between write and rename cannot pin the tree. Returns the marker's path.
    """
    root = check_directory(directory)
    number = check_step(step)
    name = check_consumer(consumer)
    data = protocol.format_marker(number)
    temporary = _fs.unique_name(f".{name}.", ".tmp")
    # Both spellings a janitor might check must agree that the temporary is nobody's marker.
    assert protocol.consumer_of(temporary) is None

    parent_fd = _fs.open_directory(root)
    try:
        _fs.write_new_file(temporary, parent_fd, data)
        try:
            os.rename(temporary, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=parent_fd)
            raise
        os.fsync(parent_fd)
    finally:
        os.close(parent_fd)
    return root / name


def mark_receiver_ready(directory: str | os.PathLike[str], step: int) -> Path:
    """Durably create `directory/step_<step>/.receiver_ready`: the sentinel-file handshake.

    For trainers that use this handshake instead of LOADED_STEP, it means the consumer has applied
    every step below `step`, so those may be deleted. The step directory must exist as a real
    directory. Creating it twice is harmless. Returns the sentinel's path.
    """
    root = check_directory(directory)
    number = check_step(step)
    step_dir = protocol.step_name(number)
    step_fd = _fs.open_step_dir(root, step_dir)
    try:
        fd = os.open(protocol.RECEIVER_READY_MARKER,
                     os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                     dir_fd=step_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(step_fd)  # the sentinel's name is durable only once its directory is synced
    finally:
        os.close(step_fd)
    return root / step_dir / protocol.RECEIVER_READY_MARKER
