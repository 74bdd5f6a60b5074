"""Argument validation shared by the public functions: one clear error per misuse.

Every public function in trainer_hooks validates its arguments here before it touches the disk, so
a bad call fails with a message that names the argument instead of a confusing OSError later.
"""

from __future__ import annotations

import math
import operator
import os
import stat
from pathlib import Path

from janitor import protocol


def check_step(step: object, what: str = "step") -> int:
    """Return `step` as an int if it is a valid step number, else raise TypeError or ValueError.

    Integer-like values (an int, a numpy integer, a 0-d integer tensor) are accepted because
    trainers keep their step counters in all of these; bools and floats are rejected because
    `True` or `3.0` as a step number is always a bug at the call site.
    """
    if isinstance(step, bool) or not hasattr(type(step), "__index__"):
        raise TypeError(f"{what} must be a non-negative int, got {step!r} ({type(step).__name__})")
    number = operator.index(step)  # type: ignore[arg-type]  # guarded by the __index__ check
    if number < 0:
        raise ValueError(f"{what} must be a non-negative int, got {number}")
    protocol.step_name(number)  # raises ValueError for more than 19 digits
    return number


def check_depends_on(depends_on: object, step: int) -> bytes:
    """The DEPENDS_ON content naming `depends_on` (step numbers, one per line), or b"" for none;
    TypeError or ValueError for anything the janitor would not read as a list of other steps."""
    if isinstance(depends_on, str | bytes) or not hasattr(depends_on, "__iter__"):
        raise TypeError(f"depends_on must be an iterable of step numbers, got {depends_on!r}")
    numbers = list(dict.fromkeys(check_step(n, "depends_on entry") for n in depends_on))
    if step in numbers:
        raise ValueError(f"depends_on names the step itself ({step})")
    if len(numbers) > protocol.MAX_DEPENDS:
        raise ValueError(f"depends_on names {len(numbers)} steps; at most {protocol.MAX_DEPENDS}")
    return "".join(f"{n}\n" for n in numbers).encode("ascii")


def check_directory(directory: object) -> Path:
    """Return `directory` as a Path if it names an existing directory, else raise.

    The managed directory itself may be reached through a symlink (a run directory linked onto a
    fast disk is common); only the entries inside it are never followed.
    """
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(f"directory must be a str or a path, got {type(directory).__name__}")
    path = Path(directory)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"checkpoint directory {str(path)!r} is not a directory")
    return path


def check_file_name(name: object, what: str) -> str:
    """Return `name` if it is a single plain file name (no '/', not '.' or '..'), else raise."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} must be a plain file name (no '/', not '.' or '..'), "
                         f"got {name!r}")
    return name


def check_consumer(consumer: object) -> str:
    """Return the marker file name for `consumer` (None: the main consumer), else raise.

    Beyond protocol.marker_name's rules, an empty string, whitespace and control characters are
    refused: they come from an unset environment variable or a typo, and a marker named
    `LOADED_STEP. ` would pin the tree under a name nobody recognises.
    """
    if consumer is None:
        return protocol.LOADED_MARKER
    if not isinstance(consumer, str):
        raise TypeError(f"consumer must be a str or None, got {type(consumer).__name__}")
    if consumer == "":
        raise ValueError("consumer name is empty; pass consumer=None for the main LOADED_STEP")
    if not consumer.isprintable() or any(ch.isspace() for ch in consumer):
        raise ValueError(f"consumer name {consumer!r} may not contain whitespace or control "
                         "characters")
    name = protocol.marker_name(consumer)  # raises ValueError for '/', '.x' and 'x.tmp'
    # The janitor must read back exactly the consumer we were asked to write.
    if protocol.consumer_of(name) != consumer:
        raise ValueError(f"consumer name {consumer!r} is not read back as a consumer")
    return name


def check_seconds(value: object, what: str, *, positive: bool) -> float:
    """Return `value` as a float number of seconds (finite, >= 0, or > 0 if `positive`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{what} must be {bound}, got {value!r}")
    return seconds
