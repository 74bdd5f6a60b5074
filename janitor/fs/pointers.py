"""Files that point at a step the janitor must keep, read as safely as a consumer marker.

A trainer's tracker in the managed directory (Megatron's `latest_checkpointed_iteration.txt`,
DeepSpeed's `latest`: the latest complete step, the one a restart resumes from) and the best
checkpoint recorded in the newest complete step (Hugging Face's `best_model_checkpoint`). Each
is opened without following a symlink and checked to be a regular file; what cannot be read or
parsed is a Pointer with a problem, which halts the directory (nothing is deleted when unsure).

A step's dependency files (`DEPENDS_ON`, a sparse patch's manifest: janitor.dependencies) are
read the same way, but what cannot be read keeps only the step that holds it (`read_depends`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections import OrderedDict

from janitor.dependencies import DependencySource
from janitor.fs import reserved
from janitor.model import Pointer, ScanOptions
from janitor.protocol import Invalid, printable


def open_problem(exc: OSError, filename: str) -> str:
    """Why a reserved file (a marker, a tracker) could not be opened, in the words
    reserved.open_error uses for every reserved name (a symlink, a socket, ...), else what the
    error says."""
    unsafe = reserved.open_error(exc, filename, "")
    if isinstance(unsafe, reserved.UnsafeObjectError):
        return unsafe.what
    if exc.errno == errno.EACCES:
        return "unreadable (permission denied)"
    return f"unreadable ({exc.strerror})"


# The most a tracker or a best-pointer file may hold: Hugging Face's trainer_state.json carries
# the whole log history (a few MB after a long run); anything larger is refused, not read.
MAX_TRACKER_BYTES = 4096
MAX_STATE_BYTES = 64 << 20


def read_tracker(dir_fd: int, filename: str, options: ScanOptions,
                 home_mount: int | None) -> Pointer | None:
    """A trainer's tracker file (Megatron's latest_checkpointed_iteration.txt, DeepSpeed's
    latest), read as safely as a marker: a regular file of its own on the directory's mount.
    None when it is gone; anything unreadable or malformed is a problem that halts."""
    try:
        fd = reserved.open_reserved(dir_fd, filename, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Pointer(filename, None, open_problem(exc, filename), complete_through=True)
    try:
        try:
            reserved.check_file(fd, filename, home_mount, action="")
        except reserved.UnsafeObjectError as exc:
            return Pointer(filename, None, exc.what, complete_through=True)
        data = os.read(fd, MAX_TRACKER_BYTES + 1)
    except OSError as exc:
        return Pointer(filename, None, f"unreadable ({exc.strerror})", complete_through=True)
    finally:
        os.close(fd)
    if len(data) > MAX_TRACKER_BYTES:
        return Pointer(filename, None, f"more than {MAX_TRACKER_BYTES} bytes",
                       complete_through=True)
    value = options.layout.tracked_step(filename, data)
    if isinstance(value, Invalid):
        return Pointer(filename, None, value.reason, complete_through=True)
    return Pointer(filename, value, None, complete_through=True)


def read_best(dir_fd: int, step: str, options: ScanOptions) -> Pointer | None:
    """The best step the layout's state file inside the newest complete step `step` records
    (Hugging Face's best_model_checkpoint), or None when the layout has none or none is
    recorded. A file that cannot be read or parsed is a problem that halts."""
    best = options.layout.best
    if best is None:
        return None
    filename, key = best
    shown = f"{step}/{filename}"
    data = read_in_step(dir_fd, step, filename, MAX_STATE_BYTES)
    if data is None or isinstance(data, str):
        return None if data is None else Pointer(shown, None, data)
    try:
        state = json.loads(data)
    except ValueError:
        return Pointer(shown, None, "not JSON (half-written?)")
    value = state.get(key) if isinstance(state, dict) else None
    number = options.layout.best_step(value)
    if number is None:
        return None
    if isinstance(number, Invalid):
        return Pointer(shown, None, f"{key}: {number.reason}")
    return Pointer(shown, number, None)


def read_depends(dir_fd: int, step: str,
                 sources: tuple[DependencySource, ...]) -> tuple[tuple[int, ...], str | None]:
    """The steps `step` depends on by its dependency files, and why they could not be read (a
    file unreadable, malformed, or missing beside its companion: a sparse patch without its
    manifest). One lookup per source when there is none, the common case."""
    found: list[int] | None = None
    for source in sources:
        if not _exists(dir_fd, step, source.filename):
            if source.companion is not None and _exists(dir_fd, step, source.companion):
                return (), f"{printable(source.companion)} without {printable(source.filename)}"
            continue
        steps = _parsed(dir_fd, step, source)
        if steps is None:
            continue  # gone since the lookup: read again with the step
        if isinstance(steps, str):
            return (), f"{printable(source.filename)}: {steps}"
        found = [*(found or ()), *steps]
    return _NONE if found is None else (tuple(dict.fromkeys(found)), None)


_NONE: tuple[tuple[int, ...], None] = ((), None)  # no dependency file: the common answer
# Parsed dependency files by identity (device, inode, size, mtime, ctime, the source), so a
# step read again at every pass (a candidate, a chain's held steps) does not parse its sparse
# manifest (megabytes of JSON) again. Only files whose ctime is SETTLE_NS old are kept: a write
# within one tick of a coarse clock cannot hide behind an unchanged identity.
_PARSED: OrderedDict[tuple[object, ...], tuple[int, ...] | str] = OrderedDict()
PARSED_ENTRIES = 4096
SETTLE_NS = 2_000_000_000


def _parsed(dir_fd: int, step: str, source: DependencySource) -> tuple[int, ...] | str | None:
    """One dependency file's steps, or why it cannot be used, or None when it is gone."""
    try:
        st = os.stat(f"{step}/{source.filename}", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _TRANSIENT:
            raise
        st = None  # read_in_step says why
    key = None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                   st.st_ctime_ns, source)
    if key is not None and key in _PARSED:
        _PARSED.move_to_end(key)
        return _PARSED[key]
    data = read_in_step(dir_fd, step, source.filename, source.limit)
    if data is None or isinstance(data, str):
        return data
    steps = source.parse(data)
    result = steps.reason if isinstance(steps, Invalid) else steps
    if st is not None and key is not None and stat.S_ISREG(st.st_mode) and \
            time.time_ns() - st.st_ctime_ns > SETTLE_NS:
        _PARSED[key] = result
        if len(_PARSED) > PARSED_ENTRIES:
            _PARSED.popitem(last=False)
    return result


def _exists(dir_fd: int, step: str, name: str) -> bool:
    """Whether `step/name` is there (a dangling symlink too): faccessat, no stat buffer and no
    exception for the common absent case (this runs for every step the janitor reads). A step
    that cannot be searched says False here; its own lookups report it as unreadable."""
    return os.access(f"{step}/{name}", os.F_OK, dir_fd=dir_fd, follow_symlinks=False)


# Errors that say nothing of the file, only of the janitor's own state (no fd left, no memory):
# raised, so the pass fails and deletes nothing, rather than read as a problem of the file (a
# dependency file "unreadable" for want of an fd would keep only its own step, not what it names).
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR})


def read_in_step(dir_fd: int, step: str, filename: str, limit: int) -> bytes | str | None:
    """The bytes of `step/filename` (a regular file of at most `limit` bytes, never through a
    symlink, never blocking on a FIFO), None when it is not there, or why it cannot be read.
    OSError for a failure of the janitor's own (out of fds or memory), not of the file."""
    try:
        step_fd = os.open(step, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dir_fd)
    except FileNotFoundError:
        return None  # gone since it was listed: the next pass reads the next newest
    except OSError as exc:
        if exc.errno in _TRANSIENT:
            raise
        return f"unreadable ({exc.strerror})"
    try:
        try:
            fd = reserved.open_reserved(step_fd, filename, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                raise
            return open_problem(exc, filename)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return "not a regular file"
            if st.st_size > limit:
                return f"{st.st_size} bytes, more than {limit}"
            data = _read_all(fd, limit + 1)
            return data if len(data) <= limit else f"more than {limit} bytes"
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                raise
            return f"unreadable ({exc.strerror})"
        finally:
            os.close(fd)
    finally:
        os.close(step_fd)


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
