"""`--layout-file`: a layout for the trainer nobody listed, from a small TOML file.

    name = "mytrainer"                 # lower-case letters, digits and '-'; not a built-in name
    step = "ckpt-{N}"                  # exactly one {N}: the step number (canonical decimal)
    digits = 0                         # optional: k > 0 means exactly k digits, zero padded
    complete = ["DONE"]                # files inside a step; any of them makes it complete
    trackers = ["latest.txt"]          # optional: files in the directory naming the latest
                                       # complete step (its number); it is kept, and every
                                       # step at or below it is complete
    temporary = ["ckpt-{N}.tmp*"]      # optional: names a step is written under first
    progress = "loaded-step"           # optional: or "receiver-ready"

Validated strictly: an unknown key, a wrong type or a name that could collide with the janitor's
own files is refused with one line naming the key. `complete` or `trackers` must say how a step
is known complete: a layout that cannot tell would make every step look in progress forever.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from janitor import protocol
from janitor.layouts import AUTO, BUILT_IN, Layout, Tracker

MAX_FILE_BYTES = 64 * 1024
_KEYS = {"name", "step", "digits", "complete", "trackers", "temporary", "progress"}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}", re.ASCII)
# A literal part of a step name or pattern: printable ASCII without '/', '{', '}' or spaces.
_LITERAL = re.compile(r"[A-Za-z0-9._+=@,:~-]*", re.ASCII)
_FILE = re.compile(r"[A-Za-z0-9._+=@,:~-]{1,255}", re.ASCII)


class LayoutFileError(ValueError):
    """A layout file that is refused; the message is one line."""


def load(path: str) -> Layout:
    """Read and validate the layout file at `path`."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise LayoutFileError(f"cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise LayoutFileError(f"more than {MAX_FILE_BYTES} bytes: not a layout file")
    return parse(data)


def parse(data: bytes) -> Layout:
    """The Layout a layout file's bytes describe; LayoutFileError (one line) if refused."""
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise LayoutFileError("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise LayoutFileError(f"not valid TOML ({exc})") from None
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise LayoutFileError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    name = _string(table, "name")
    if not _NAME.fullmatch(name) or name in BUILT_IN or name == AUTO:
        raise LayoutFileError(f"key 'name': {name!r} must be 1-40 lower-case letters, digits "
                              "or '-', and not a built-in layout's name")
    prefix, suffix = _step(_string(table, "step"))
    digits = table.get("digits", 0)
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 19:
        raise LayoutFileError("key 'digits': a whole number 0..19 (0: canonical decimal)")
    complete = tuple(_file(table, "complete", f) for f in _strings(table, "complete"))
    trackers = tuple(Tracker(_file(table, "trackers", f)) for f in _strings(table, "trackers"))
    if not complete and not trackers:
        raise LayoutFileError("give 'complete' or 'trackers': how else is a step known complete?")
    progress = table.get("progress", "loaded-step")
    if progress not in ("loaded-step", "receiver-ready"):
        raise LayoutFileError("key 'progress': \"loaded-step\" or \"receiver-ready\"")
    temporary = tuple(_pattern(p) for p in _strings(table, "temporary"))
    layout = Layout(name, prefix, suffix, digits or None, complete, trackers,
                    temporary=temporary, progress=progress, source="a --layout-file")
    _no_collision(layout)
    return layout


def _string(table: dict[str, Any], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise LayoutFileError(f"key {key!r}: a string is required")
    return value


def _strings(table: dict[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LayoutFileError(f"key {key!r}: a list of strings")
    if len(value) > 16:
        raise LayoutFileError(f"key {key!r}: at most 16 names")
    return value


def _step(pattern: str) -> tuple[str, str]:
    if pattern.count("{N}") != 1:
        raise LayoutFileError("key 'step': exactly one {N} (the step number), e.g. \"ckpt-{N}\"")
    prefix, suffix = pattern.split("{N}")
    for part in (prefix, suffix):
        if not _LITERAL.fullmatch(part):
            raise LayoutFileError(f"key 'step': {part!r} may hold only letters, digits and "
                                  "._+=@,:~- (no '/', braces or spaces)")
    if prefix.startswith((".", protocol.LOADED_MARKER)):
        raise LayoutFileError("key 'step': a step name may not start with '.' or LOADED_STEP "
                              "(hidden names and markers are the janitor's)")
    if not prefix and not suffix:
        raise LayoutFileError("key 'step': \"{N}\" alone would claim every numbered directory; "
                              "use the built-in layout orbax for bare numbers")
    return prefix, suffix


def _file(table: dict[str, Any], key: str, name: str) -> str:
    if not _FILE.fullmatch(name) or name in (".", ".."):
        raise LayoutFileError(f"key {key!r}: {protocol.printable(name)!r} is not a plain file "
                              "name (letters, digits, ._+=@,:~-)")
    if name.startswith((".janitor", protocol.LOADED_MARKER)):
        raise LayoutFileError(f"key {key!r}: {name!r} is one of the janitor's own names")
    return name


def _pattern(glob: str) -> str:
    """A temporary-name glob (`*`, `?`, `{N}`) as the regular expression Layout matches."""
    if not glob or not re.fullmatch(r"[A-Za-z0-9._+=@,:~*?{}-]+", glob, re.ASCII):
        raise LayoutFileError(f"key 'temporary': {protocol.printable(glob)!r} is not a name "
                              "pattern (letters, digits, ._+=@,:~-, * ? and {N})")
    if glob.startswith(".janitor") or glob.replace("{N}", "").strip("*?") == "":
        raise LayoutFileError(f"key 'temporary': {glob!r} would match the janitor's own names "
                              "or everything")
    out = []
    for piece in re.split(r"(\{N\}|\*|\?)", glob):
        out.append({"{N}": "[0-9]+", "*": ".*", "?": "."}.get(piece, re.escape(piece)))
    return "".join(out)


def _no_collision(layout: Layout) -> None:
    """The layout's own files and temporaries must never be mistaken for its steps."""
    probe = layout.name_of(12345)
    if layout.is_temporary(probe):
        raise LayoutFileError("key 'temporary': a pattern matches step names themselves")
    for tracker in layout.trackers:
        if layout.parse(tracker.filename) is not None:
            raise LayoutFileError(f"key 'trackers': {tracker.filename!r} looks like a step name")
