"""Pin and unpin one step (`janitor pin`, `janitor unpin`), and read which steps are pinned.

A pin is the entry `.janitor-pin` inside a step directory (protocol.PIN_FILE). Any entry of that
name pins its step (when unsure, keep); `pin` creates a regular file and `unpin` removes only a
regular file: a directory, symlink or anything else of that name is refused, never followed and
never removed. Every call goes through file descriptors: the step is opened without following a
symlink and the pin is created (O_EXCL, O_NOFOLLOW) or removed relative to that fd, so what is
checked is what is changed. A refusal is a `PinError`: one line and the exit code it means.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from janitor import exitcodes, protocol
from janitor.fs.reserved import kind
from janitor.layouts import BUILT_IN, Layout

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class PinError(Exception):
    """A step that cannot be pinned, unpinned or explained: the one line to show, and the exit
    code (janitor.exitcodes) it means."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code
        self.line = line


def split_step_path(path: str, layouts: tuple[Layout, ...] = ()) -> tuple[str, str, int]:
    """(parent, name, N) of `PATH/step_N`; PinError (usage) unless the last component is a
    canonical step name of the protocol or of one of `layouts` (every built-in one by
    default): no trailing slash, no `.` or `..`, no `step_01`."""
    shown = protocol.printable(path)
    parent, _, name = path.rpartition("/")
    if name == "":
        raise PinError(exitcodes.USAGE, f"{shown}: ends with '/'; name the step directory "
                                        "itself, PATH/step_N without a trailing slash")
    number = protocol.parse_step_name(name)
    for layout in layouts or tuple(BUILT_IN.values()):
        theirs = layout.parse(name)
        if isinstance(theirs, int):
            number = theirs
            break
    if isinstance(number, protocol.Invalid):
        raise PinError(exitcodes.USAGE, f"{shown}: not a step directory name "
                                        f"({number.reason}); give PATH/step_N, N in canonical "
                                        "decimal as the janitor names steps")
    if "/" in path and parent == "":
        parent = "/"
    return parent or ".", name, number


@dataclass(slots=True)
class OpenStep:
    """A step directory open by fd (never through a symlink), with its parent's fd."""

    path: str
    name: str
    number: int
    parent_fd: int
    fd: int

    @property
    def shown(self) -> str:
        return protocol.printable(self.path)

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.parent_fd = -1

    def __enter__(self) -> OpenStep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def still_named(self) -> bool:
        """Whether the name still leads to the open directory (not renamed into the trash by a
        janitor meanwhile, not replaced)."""
        try:
            st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except OSError:
            return False
        mine = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def open_step(path: str, layouts: tuple[Layout, ...] = ()) -> OpenStep:
    """Open `PATH/step_N` as a directory fd; PinError with one line when it is not a canonical
    step name, does not exist, is a symlink, is not a directory or cannot be read."""
    parent, name, number = split_step_path(path, layouts)
    try:
        parent_fd = os.open(parent, _DIR_FLAGS)
    except OSError as exc:
        raise _os_error(exc, protocol.printable(parent), "open the directory holding it",
                        step=protocol.printable(path)) from None
    try:
        fd = _open_child_directory(parent_fd, name, protocol.printable(path))
    except BaseException:
        os.close(parent_fd)
        raise
    return OpenStep(path, name, number, parent_fd, fd)


def _open_child_directory(parent_fd: int, name: str, shown: str) -> int:
    """The fd of the real directory `name` in `parent_fd` (a symlink is refused, not followed)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        raise _os_error(exc, shown, "look at it") from None
    if stat.S_ISLNK(st.st_mode):
        raise PinError(exitcodes.USAGE, f"{shown} is a symlink; the janitor never follows one "
                                        "(a step is a real directory): give the step's own path")
    if not stat.S_ISDIR(st.st_mode):
        raise PinError(exitcodes.USAGE, f"{shown} is {kind(st.st_mode)}, not a directory; "
                                        "give a step directory")
    try:
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        raise _os_error(exc, shown, "open it") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise PinError(exitcodes.ERROR, f"{shown} was replaced while it was being opened; "
                                        "try again")
    return fd


def pin(path: str) -> bool:
    """Create `.janitor-pin` in the step at `path`, durably (the file and the step directory
    fsynced); True when created, False when the step already held a pin file."""
    with open_step(path) as step:
        where = f"{step.shown}/{protocol.PIN_FILE}"
        try:
            fd = os.open(protocol.PIN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=step.fd)
        except FileExistsError:
            _existing_pin(step)
            return False
        except OSError as exc:
            raise _os_error(exc, step.shown, f"create {protocol.PIN_FILE} in it") from None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.fsync(step.fd)
        except OSError as exc:
            raise _os_error(exc, where, "make the pin durable (fsync)") from None
        if not step.still_named():
            raise PinError(exitcodes.ERROR, f"{step.shown} was moved away (deleted by a janitor?) "
                                            "while it was being pinned; it is not pinned")
        return True


def unpin(path: str) -> bool:
    """Remove the regular file `.janitor-pin` from the step at `path` (the step directory
    fsynced after); True when removed, False when the step held no pin."""
    with open_step(path) as step:
        try:
            st = os.stat(protocol.PIN_FILE, dir_fd=step.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(exc, step.shown, f"look at its {protocol.PIN_FILE}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_file(step, st.st_mode)
        try:
            os.unlink(protocol.PIN_FILE, dir_fd=step.fd)
        except FileNotFoundError:
            return False  # removed meanwhile: not pinned either way
        except IsADirectoryError:  # swapped for a directory since the lstat: never removed
            raise _not_a_file(step, stat.S_IFDIR) from None
        except OSError as exc:
            raise _os_error(exc, step.shown, f"remove its {protocol.PIN_FILE}") from None
        try:
            os.fsync(step.fd)
        except OSError as exc:
            raise _os_error(exc, step.shown, "make the unpin durable (fsync)") from None
        return True


def _existing_pin(step: OpenStep) -> None:
    """The pin name exists: fine when it is a regular file, refused (exit 4) otherwise."""
    try:
        st = os.stat(protocol.PIN_FILE, dir_fd=step.fd, follow_symlinks=False)
    except OSError as exc:
        raise _os_error(exc, step.shown, f"look at its {protocol.PIN_FILE}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(step, st.st_mode)


def _not_a_file(step: OpenStep, mode: int) -> PinError:
    return PinError(exitcodes.REFUSED,
                    f"{step.shown}/{protocol.PIN_FILE} is {kind(mode)}, not a regular file: left "
                    "as it is (an entry of that name still pins the step); look at it and "
                    "remove it by hand if it should not be there")


def _os_error(exc: OSError, shown: str, doing: str, *, step: str | None = None) -> PinError:
    """One line for an OSError met while trying to `doing` on `shown`."""
    subject = shown if step is None else f"{step}: {shown}"
    if exc.errno == errno.ENOENT:
        return PinError(exitcodes.USAGE, f"{subject} does not exist; check the path")
    if exc.errno == errno.ENOTDIR:
        return PinError(exitcodes.USAGE, f"{subject} is not a directory; check the path")
    if exc.errno == errno.ELOOP:
        return PinError(exitcodes.USAGE, f"{subject} is a symlink; the janitor never follows "
                                         "one: give the step's own path")
    if exc.errno in (errno.EACCES, errno.EPERM):
        who = "write" if doing.startswith(("create", "remove", "make")) else "read"
        return PinError(exitcodes.ERROR, f"{subject}: permission denied (could not {doing}); "
                                         f"run as a user who may {who} it")
    if exc.errno == errno.EROFS:
        return PinError(exitcodes.ERROR, f"{subject}: read-only filesystem (could not {doing}); "
                                         "nothing was changed")
    return PinError(exitcodes.ERROR, f"{subject}: {exc.strerror or exc} (could not {doing}); "
                                     "nothing was changed")


def pinned_names(dir_fd: int, names: Iterable[str]) -> frozenset[str]:
    """The steps among `names` (children of the directory open as `dir_fd`) holding an entry
    named `.janitor-pin` of any kind: one lstat each. A step whose pin cannot be looked at
    (permission, I/O) counts as pinned: when unsure, keep."""
    found = []
    for name in names:
        try:
            os.stat(f"{name}/{protocol.PIN_FILE}", dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            pass
        found.append(name)
    return frozenset(found)
