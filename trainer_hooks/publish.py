"""Publishing a step atomically: stage hidden, fsync everything, completion marker last, rename.

The recipe, in order (each line is durable before the next starts):
1. create `.janitor-staging.<N>.<random>` beside the target: hidden, never matching `step_*`;
2. the writer writes its files into it;
3. fsync every regular file and subdirectory the writer produced;
4. write `DEPENDS_ON` (the steps this one is a delta over, when given), then the completion
   marker (default `STABLE`) last, each fsynced, unless the writer already wrote the marker (DCP
   writes `.metadata` last itself);
5. set the staging directory's mtime to now and fsync it: the published step's mtime is its
   publish time, which is what the janitor compares with LOADED_STEP's (invariant 4);
6. rename it to `step_N` and fsync the parent directory.

A failure or kill before 6 leaves no `step_N`, only the hidden staging directory (removed here on
an exception, by the janitor after its grace period on a kill). An existing `step_N` (a trainer
re-broadcasting after a resume) is replaced whole, never merged into: with renameat2
RENAME_EXCHANGE the new step swaps in atomically, so `step_N` is never absent; the fallback
(rename the old step aside to a hidden name, rename the new one in) leaves `step_N` absent for the
instant between the two renames, never half old and half new. The replaced copy is then removed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from janitor import protocol

from . import _fs, _rename, headroom
from ._checks import check_depends_on, check_directory, check_file_name, check_step
from ._torchio import torch_save


@contextlib.contextmanager
def staged_step(directory: str | os.PathLike[str], step: int,
                complete_marker: str = protocol.DEFAULT_COMPLETE_MARKER, *,
                depends_on: Iterable[int] = ()) -> Iterator[Path]:
    """Yield a hidden staging directory; on a clean exit, publish it as `directory/step_<step>`.

    Write any files into the yielded Path (torch.save, safetensors, or
    `torch.distributed.checkpoint.save(sd, checkpoint_id=path)`). On exit every file is fsynced,
    the completion marker is written last (kept as is if the writer already wrote it as a regular
    file, e.g. DCP's `.metadata`), and the directory is renamed into place. If the block raises,
    the staging directory is removed and nothing is published.

    `depends_on`: the steps this one cannot be loaded without (a delta, a sparse patch): written
    as `DEPENDS_ON` before the completion marker, so the janitor keeps them while it keeps this
    step.
    """
    root = check_directory(directory)
    number = check_step(step)
    marker = check_file_name(complete_marker, "complete_marker")
    if marker == protocol.DEPENDS_FILE:
        raise ValueError(f"complete_marker {marker!r} is the name of a step's dependency file; "
                         "pick another")
    depends = check_depends_on(depends_on, number)
    target = protocol.step_name(number)
    parent_fd = _fs.open_directory(root)
    try:
        staging = _make_staging_dir(parent_fd, number)
        try:
            yield root / staging
            _seal(staging, parent_fd, marker, depends)
            _publish(staging, target, parent_fd, number)
        except BaseException:
            # Also on KeyboardInterrupt and GeneratorExit: never leave a half-written staging dir
            # behind when we are alive to remove it.
            _fs.remove_tree(staging, parent_fd)
            raise
    finally:
        os.close(parent_fd)


def save_step(directory: str | os.PathLike[str], step: int, state_dict: Any,
              filename: str = "model.pt",
              complete_marker: str = protocol.DEFAULT_COMPLETE_MARKER, *,
              wait_for_headroom: bool | float = False, depends_on: Iterable[int] = ()) -> Path:
    """torch.save `state_dict` as `directory/step_<step>/<filename>`, published atomically.

    Returns the path of the published step directory. A full disk raises OSError (ENOSPC), not
    torch's RuntimeError, and leaves no step behind. `wait_for_headroom=True` (or a timeout in
    seconds) first waits, before staging, until the disk has room for a step as large as the
    recent ones plus the default reserve (headroom.wait_for_headroom, 600 s for True); on
    timeout HeadroomTimeout (errno ENOSPC) is raised and nothing is written. `depends_on`: as
    for staged_step.
    """
    number = check_step(step)
    name = check_file_name(filename, "filename")
    if name == complete_marker:
        raise ValueError(f"filename {name!r} is the completion marker's name; pick another")
    if name == protocol.DEPENDS_FILE:
        raise ValueError(f"filename {name!r} is the name of a step's dependency file; "
                         "pick another")
    if isinstance(wait_for_headroom, bool):
        timeout = 600.0 if wait_for_headroom else None
    else:
        timeout = headroom.check_timeout(wait_for_headroom, "wait_for_headroom")
    if timeout is not None:
        headroom.wait_for_headroom(directory, timeout=timeout, complete_marker=complete_marker)
    with staged_step(directory, number, complete_marker, depends_on=depends_on) as staging:
        torch_save(state_dict, staging / name)
    return Path(directory) / protocol.step_name(number)


def _make_staging_dir(parent_fd: int, number: int) -> str:
    """Create a fresh hidden staging directory in `parent_fd` and return its name.

    os.mkdir (not tempfile.mkdtemp) so the mode follows the umask like any step directory:
    mkdtemp's 0700 would lock consumers running as another user out of the published step.
    """
    while True:
        name = _fs.unique_name(f"{protocol.STAGING_PREFIX}{number}.")
        try:
            os.mkdir(name, 0o777, dir_fd=parent_fd)
        except FileExistsError:  # 64 random bits collided; draw again
            continue
        return name


def _seal(staging: str, parent_fd: int, marker: str, depends: bytes = b"") -> None:
    """fsync the writer's files, write DEPENDS_ON (if any) and the completion marker last, stamp
    and fsync the directory."""
    fd = _fs.open_entry_dir(staging, parent_fd, f"staging directory {staging!r}")
    try:
        _fs.fsync_tree(fd)
        if depends:
            try:
                _fs.write_new_file(protocol.DEPENDS_FILE, fd, depends)
            except FileExistsError:
                raise FileExistsError(f"the writer created {protocol.DEPENDS_FILE} itself and "
                                      "depends_on was given too; use one of them") from None
        try:
            st = os.stat(marker, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            _fs.write_new_file(marker, fd, b"")
        else:
            if not stat.S_ISREG(st.st_mode):
                raise FileExistsError(f"the writer created the completion marker {marker!r} as "
                                      "something other than a regular file")
            # Written by the writer itself (DCP's .metadata) and fsynced by fsync_tree: keep it.
        os.utime(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staging: str, target: str, parent_fd: int, number: int) -> None:
    """Rename `staging` to `target` inside `parent_fd`, replacing an existing step whole."""
    for _attempt in range(3):
        try:
            st = os.stat(target, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            if _publish_new(staging, target, parent_fd):
                return
            continue  # a step_N appeared between our stat and rename: replace it instead
        if not stat.S_ISDIR(st.st_mode):
            raise FileExistsError(f"{target} exists and is not a real directory (a symlink or a "
                                  "file): refusing to replace it; move it away by hand")
        _replace(staging, target, parent_fd, number)
        return
    raise FileExistsError(f"{target} kept appearing and disappearing while publishing it")


def _publish_new(staging: str, target: str, parent_fd: int) -> bool:
    """Rename `staging` to a `target` that did not exist; False if it exists now after all."""
    try:
        done = _rename.renameat2(staging, target, parent_fd, _rename.RENAME_NOREPLACE)
    except FileExistsError:
        return False
    if not done:
        # Plain rename(2): it would replace an empty directory created in the meantime, and fails
        # with ENOTEMPTY/EEXIST on a non-empty one, so it can never merge into a step either.
        os.rename(staging, target, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    os.fsync(parent_fd)
    return True


def _replace(staging: str, target: str, parent_fd: int, number: int) -> None:
    """Replace the existing step `target` by `staging` whole, then remove the old copy."""
    if _rename.renameat2(staging, target, parent_fd, _rename.RENAME_EXCHANGE):
        old = staging  # the exchange left the old step under the hidden staging name
    else:
        old = _fs.unique_name(f"{protocol.STAGING_PREFIX}{number}.replaced.")
        os.rename(target, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        try:
            os.rename(staging, target, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):  # put the old step back; the new one is dropped
                os.rename(old, target, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            raise
    os.fsync(parent_fd)
    _fs.remove_tree(old, parent_fd)
