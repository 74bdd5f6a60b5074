"""The on-disk protocol shared by the janitor and trainer_hooks: names, grammars, formats.

Everything here is pure: parsing returns a value or a precise reason, never raises on bad input.
See docs/protocol.md for the same rules written for the people who write checkpoints and markers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP_PREFIX = "step_"
MAX_STEP_DIGITS = 19
# Canonical ASCII decimal: "0" or a non-zero digit followed by digits; re.ASCII keeps out "١٢".
_CANONICAL_NUMBER = re.compile(r"(?:0|[1-9][0-9]{0,18})", re.ASCII)

DEFAULT_COMPLETE_MARKER = "STABLE"
LOADED_MARKER = "LOADED_STEP"
CONSUMER_SEPARATOR = "."
# Sentinel handshake used by some trainers instead of LOADED_STEP: `.receiver_ready` inside step N
# means the consumer applied every step below N; `.finished` marks a complete step.
RECEIVER_READY_MARKER = ".receiver_ready"
FINISHED_MARKER = ".finished"

TRASH_DIR = ".janitor-trash"
LOCK_FILE = ".janitor.lock"
# A user drops this file into a step directory to keep that step forever.
PIN_FILE = ".janitor-pin"
# A step that is a delta over others names them here (ASCII step numbers, one per line, written
# before the completion marker); the janitor keeps them while the step is kept.
DEPENDS_FILE = "DEPENDS_ON"
MAX_DEPENDS = 4096  # steps one DEPENDS_ON may name
MAX_DEPENDS_BYTES = MAX_DEPENDS * (MAX_STEP_DIGITS + 1)
# trainer_hooks stages a step in a hidden directory with this prefix before renaming it into place;
# the janitor removes stale ones (a writer killed mid-write) after a grace period.
STAGING_PREFIX = ".janitor-staging."

# Most bytes a marker may hold: 19 digits and a newline. Anything longer is malformed.
MAX_MARKER_BYTES = MAX_STEP_DIGITS + 1


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a name or a marker was rejected, in words fit for a log line."""

    reason: str


def parse_step_number(text: str) -> int | Invalid:
    """Parse the digits of a step name or marker: canonical ASCII decimal, at most 19 digits."""
    if text == "":
        return Invalid("no digits")
    if len(text) > MAX_STEP_DIGITS:
        return Invalid(f"more than {MAX_STEP_DIGITS} digits")
    if not _CANONICAL_NUMBER.fullmatch(text):
        if text.isascii() and text.isdigit():
            return Invalid("leading zero (not canonical)")
        return Invalid("not canonical ASCII decimal")
    return int(text)


def parse_step_name(name: str) -> int | Invalid:
    """Return N for a canonical `step_N` name, else why the name is foreign."""
    if not name.startswith(STEP_PREFIX):
        return Invalid(f"does not start with {STEP_PREFIX!r}")
    number = parse_step_number(name[len(STEP_PREFIX) :])
    if isinstance(number, Invalid):
        return Invalid(f"step number: {number.reason}")
    return number


def step_name(number: int) -> str:
    """The canonical directory name of step `number`."""
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise ValueError(f"a step number is a non-negative int, got {number!r}")
    name = f"{STEP_PREFIX}{number}"
    if len(name) - len(STEP_PREFIX) > MAX_STEP_DIGITS:
        raise ValueError(f"step number {number} has more than {MAX_STEP_DIGITS} digits")
    return name


def looks_like_step(name: str) -> bool:
    """True for every name a `step_*` glob matches: a step or foreign, never the janitor's own."""
    return name.startswith(STEP_PREFIX)


def parse_marker(data: bytes, size: int | None = None) -> int | Invalid:
    """Parse a LOADED_STEP marker's bytes: ASCII digits, one optional trailing newline.

    `size` is the file's full size when the caller read only its first bytes (the reason then
    names the real size, not the number of bytes read).
    """
    if len(data) == 0:
        return Invalid("empty (half-written or truncated?)")
    if len(data) > MAX_MARKER_BYTES:
        shown = max(len(data), size or 0)
        return Invalid(f"{shown} bytes, more than a {MAX_STEP_DIGITS}-digit step number")
    body = data[:-1] if data.endswith(b"\n") else data
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return Invalid("not ASCII")
    number = parse_step_number(text)
    if isinstance(number, Invalid):
        return Invalid(f"content {text!r}: {number.reason}")
    return number


def format_marker(step: int) -> bytes:
    """The bytes a writer puts in a LOADED_STEP marker for `step`."""
    return step_name(step)[len(STEP_PREFIX) :].encode("ascii") + b"\n"


def consumer_of(name: str) -> str | Invalid | None:
    """Classify a directory entry as a consumer marker.

    Returns "" for `LOADED_STEP`, the consumer name for `LOADED_STEP.<name>`, None when the entry is
    not a consumer marker at all (including a writer's `.tmp` temporary), or Invalid for a name that
    claims to be a marker but names no consumer.
    """
    if name == LOADED_MARKER:
        return ""
    prefix = LOADED_MARKER + CONSUMER_SEPARATOR
    if not name.startswith(prefix):
        return None
    consumer = name[len(prefix) :]
    if is_writer_temporary(consumer):
        return None
    if consumer == "":
        return Invalid(f"{name!r} names no consumer")
    return consumer


def is_writer_temporary(suffix: str) -> bool:
    """A marker suffix a writer uses while publishing (`x.tmp`, `.hidden`): never a consumer."""
    return suffix.startswith(".") or suffix.endswith(".tmp") or suffix == "tmp"


def marker_name(consumer: str | None = None) -> str:
    """The file name of the marker for `consumer` (None or "" for the main consumer)."""
    if not consumer:
        return LOADED_MARKER
    if "/" in consumer or "\0" in consumer or is_writer_temporary(consumer):
        raise ValueError(f"consumer name {consumer!r} may not contain '/', start with '.' "
                         "or end with '.tmp'")
    return LOADED_MARKER + CONSUMER_SEPARATOR + consumer


def is_staging_name(name: str) -> bool:
    """True for the hidden staging directories that trainer_hooks writes steps into."""
    return name.startswith(STAGING_PREFIX)


# Surrogates that surrogateescape cannot turn back into a byte (U+D800-U+DC7F, U+DD00-U+DFFF): a
# lone one can come from a JSON "\\ud800" escape; shown as that escape.
_FOREIGN_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def printable(name: str | bytes) -> str:
    """A one-line, printable rendering of a directory entry name or path (newlines, invalid UTF-8,
    lone surrogates, ...): the one escaping function for everything the janitor prints.

    A str is taken as the OS gave it (undecodable bytes as surrogateescape); bytes are raw. The
    result encodes to UTF-8 without error and holds no control character, so it is one line in
    text and a valid string in JSON.
    """
    if isinstance(name, bytes):
        raw = name
    else:
        tamed = _FOREIGN_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", name)
        raw = tamed.encode("utf-8", "surrogateescape")
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    # Escape each unprintable character alone, so `\xff` reads the same whether or not the
    # name also holds a newline (escaping the whole string would double every backslash).
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
