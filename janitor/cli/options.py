"""Strict parsing of every command-line option and JANITOR_* environment variable.

Why: click's own types are lenient in ways that are dangerous for a deleter. `BOOL` strips and
maps blank to False, so `JANITOR_GATE=' '` turned the consumer gate OFF; `float` accepts `nan`,
`inf` and `1e300` (a daemon that never polls, or a traceback later); `int`/`float` accept Unicode
digits (`'١٢'`), underscores (`'1_000'`) and surrounding whitespace; click treats a set but empty
variable as unset; and a relative path in `JANITOR_ROOTS` was resolved against whatever working
directory the service happened to start in.

What: one set of `click.ParamType`s, and the `StrictOption`/`StrictArgument` parameter classes,
that every option of every command uses (a test walks the whole click group and fails on any
parameter that does not). Accepted spellings:

- booleans: true/false, 1/0, yes/no, on/off, in any case; nothing else (blank and whitespace
  are refused);
- numbers: ASCII decimal only (`[0-9]`, optional leading `-`, floats with an optional `.digits`),
  no whitespace, no `+`, no `_`, no exponent, no Unicode digits, NaN/inf impossible; each number
  has a range, shown in `--help` and in the error;
- paths: a relative path from an environment variable is refused; from the command line it is
  made absolute against the caller's working directory (not normalised: `..` stays literal);
- an environment variable that is set but empty is a value, and refused as blank.

A bad value is a `click.BadParameter`, which `janitor.cli.main` prints as the usual single
`janitor: error: ...` line (exit 2); the line names the environment variable when the value
came from one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from janitor import protocol
from janitor.budget import Budget, BudgetError, parse_min_free, parse_size
from janitor.policy import MAX_KEEP_WITHIN_S, MAX_PARTIAL_GRACE_S, MAX_SOFT_COUNT
from janitor.retention import parse_duration

# The accepted boolean spellings, compared after lower-casing (and nothing else: no strip).
BOOL_STATES: dict[str, bool] = {
    "true": True, "false": False, "1": True, "0": False,
    "yes": True, "no": False, "on": True, "off": False,
}
BOOL_SPELLINGS = "true/false, 1/0, yes/no or on/off (any case)"

# The whole grammar of a number; fullmatch, so not even a trailing newline gets through.
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
# More significant digits than this is out of every range here (and int() is never asked to
# convert thousands of digits).
_MAX_INT_DIGITS = 20

ONE_YEAR_S = MAX_PARTIAL_GRACE_S  # the bound the Policy itself holds a grace to
# Linux PID_MAX_LIMIT (2^22): no pid is larger.
PID_MAX = 4_194_304
MAX_STEP_NUMBER = 10**protocol.MAX_STEP_DIGITS - 1


_SHOWN_CHARS = 40


def _shown(value: object) -> str:
    """A value as an error shows it: repr (ASCII escapes for anything else), so blanks, tabs and
    lookalike digits are visible; a long value is cut, the error stays one short line."""
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]!a}... ({len(value)} characters)"
    return ascii(value)


def _source(param: click.Parameter | None, ctx: click.Context | None) -> ParameterSource | None:
    if param is None or ctx is None or param.name is None:
        return None
    return ctx.get_parameter_source(param.name)


def from_environment(param: click.Parameter | None, ctx: click.Context | None) -> bool:
    """Whether the value being converted came from the parameter's environment variable."""
    return _source(param, ctx) == ParameterSource.ENVIRONMENT


def _envvar_names(param: click.Parameter) -> list[str]:
    envvar = param.envvar
    return [envvar] if isinstance(envvar, str) else list(envvar or ())


def _raw_envvar(param: click.Parameter) -> str | None:
    """The variable's value as set, "" included: a set but empty variable is a value (refused by
    the type as blank), never silently the default as click would have it."""
    for name in _envvar_names(param):
        if name in os.environ:
            return os.environ[name]
    return None


def _error_hint(param: click.Parameter, ctx: click.Context | None, plain: str) -> str:
    """How an error names the parameter: the environment variable when the value came from it."""
    names = _envvar_names(param)
    if not names or not from_environment(param, ctx):
        return plain
    setting = next((name for name in names if name in os.environ), names[0])
    return f"environment variable {setting} (for {plain})"


class StrictOption(click.Option):
    """A click.Option whose environment variable is read strictly (see the module docstring)."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        return _raw_envvar(self)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        plain = " / ".join(f"'{x}'" for x in (self.opts + self.secondary_opts))
        return _error_hint(self, ctx, plain)


class StrictArgument(click.Argument):
    """A click.Argument whose environment variable is read strictly."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        return _raw_envvar(self)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return _error_hint(self, ctx, super().get_error_hint(ctx))


class StrictBool(click.types.BoolParamType):
    """true/false, 1/0, yes/no, on/off in any case; anything else is refused.

    A subclass of click.BoolParamType on purpose: click 8.5 treats an option as a boolean flag
    (and hands it the raw environment string) only when its type is a BoolParamType; any other
    type on a flag makes click itself read the variable with its lenient str_to_bool.
    """

    name = "boolean"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isascii() and value.lower() in BOOL_STATES:
            return BOOL_STATES[value.lower()]
        return self.fail(f"{_shown(value)} is not a boolean; use {BOOL_SPELLINGS}", param, ctx)

    def __repr__(self) -> str:
        return "StrictBool"


class StrictInt(click.ParamType[int]):
    """An ASCII decimal integer in [low, high]: optional '-', digits, nothing else."""

    name = "integer"

    def __init__(self, low: int, high: int, metavar: str = "N") -> None:
        self.low, self.high, self.metavar = low, high, metavar

    @property
    def range_text(self) -> str:
        return f"{self.low}..{self.high}"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.metavar

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        expected = f"expected an ASCII decimal integer {self.range_text}"
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INTEGER.fullmatch(value):
            if len(value.lstrip("-").lstrip("0")) > _MAX_INT_DIGITS:
                self.fail(f"{_shown(value)} is out of range; {expected}", param, ctx)
            number = int(value)
        else:
            self.fail(f"{_shown(value)} is not a plain integer; {expected}", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{_shown(value)} is out of range; {expected}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"StrictInt({self.range_text})"


class Duration(click.ParamType[float]):
    """A whole number and one unit, ASCII: `90s`, `30m`, `6h`, `7d`, `2w` (seconds out)."""

    name = "duration"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        seconds = parse_duration(value) if isinstance(value, str) else None
        if seconds is None or not 1 <= seconds <= MAX_KEEP_WITHIN_S:
            self.fail(f"{_shown(value)} is not a duration; expected a whole number and one "
                      f"unit (s, m, h, d, w), e.g. 6h, 1s..{MAX_KEEP_WITHIN_S // 86400}d",
                      param, ctx)
        return seconds


class EveryCount(click.ParamType[tuple[int, int]]):
    """`N:COUNT`, two ASCII decimal integers: keep the newest COUNT multiples of N."""

    name = "every:count"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "N:COUNT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        every, _, count = value.partition(":") if isinstance(value, str) else ("", "", "")
        parts = [every, count]
        if not all(p.isascii() and p.isdigit() and len(p) <= 19 and (p == "0" or p[0] != "0")
                   for p in parts) or not (1 <= int(every) <= MAX_STEP_NUMBER
                                           and 1 <= int(count) <= MAX_SOFT_COUNT):
            self.fail(f"{_shown(value)} is not N:COUNT; expected two whole numbers, N >= 1 "
                      f"and COUNT 1..{MAX_SOFT_COUNT}, e.g. 1000:3", param, ctx)
        return int(every), int(count)


class ByteSize(click.ParamType[int]):
    """`500G`, `1.5T`, `4096`: bytes (K, M, G, T, P are powers of 1024)."""

    name = "size"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "SIZE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return parse_size(value) if isinstance(value, str) else parse_size("")
        except BudgetError as exc:
            self.fail(str(exc), param, ctx)


class MinFree(click.ParamType[Budget]):
    """`50G` or `10%`: the free space to keep on each filesystem."""

    name = "min-free"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "SIZE|PCT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Budget:
        if isinstance(value, Budget):
            return value
        try:
            return parse_min_free(value if isinstance(value, str) else "")
        except BudgetError as exc:
            self.fail(str(exc), param, ctx)


class StrictFloat(click.ParamType[float]):
    """A finite ASCII decimal number (digits, optionally '.digits') in [low, high]."""

    name = "number"

    def __init__(self, low: float, high: float, metavar: str = "SECONDS") -> None:
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("a StrictFloat range is finite")
        self.low, self.high, self.metavar = low, high, metavar
        # The bounds as written (Decimal(0.01) would be 0.01000000000000000020816...).
        self._low, self._high = Decimal(repr(low)), Decimal(repr(high))

    @property
    def range_text(self) -> str:
        return f"{self.low:.12g}..{self.high:.12g}"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.metavar

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        expected = f"expected an ASCII decimal number {self.range_text}"
        if isinstance(value, float | int) and not isinstance(value, bool):
            exact = Decimal(repr(float(value))) if math.isfinite(value) else None
        elif isinstance(value, str) and _DECIMAL.fullmatch(value):
            exact = Decimal(value)  # exact: '0.00999999999999999999' is below 0.01
        else:
            self.fail(f"{_shown(value)} is not a plain decimal number; {expected}", param, ctx)
        if exact is None or not self._low <= exact <= self._high:
            self.fail(f"{_shown(value)} is out of range; {expected}", param, ctx)
        return float(exact)

    def __repr__(self) -> str:
        return f"StrictFloat({self.range_text})"


def _blank_or_nul(value: str) -> str | None:
    if value.strip() == "":
        return "is blank"
    if "\0" in value:
        return "contains a NUL byte"
    return None


class _WhitespaceList(click.ParamType[str]):
    """An environment variable holding several values separated by whitespace; a blank one is
    kept as one blank value, so the type refuses it instead of it meaning 'none'."""

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return rv.split() or [rv]


class RootPath(_WhitespaceList):
    """A root to manage. From JANITOR_ROOTS it must be absolute (a service's working directory
    is not the user's); from the command line a relative path is made absolute."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        return _absolute_path(self, value, param, ctx, "root")


def _absolute_path(kind: click.ParamType[str], value: Any, param: click.Parameter | None,
                   ctx: click.Context | None, what: str) -> str:
    if not isinstance(value, str):
        kind.fail(f"{_shown(value)} is not a path", param, ctx)
    problem = _blank_or_nul(value)
    if problem:
        kind.fail(f"{what} path {_shown(value)} {problem}", param, ctx)
    if os.path.isabs(value):
        return value
    if from_environment(param, ctx):
        kind.fail(f"{what} path {_shown(value)} is relative; an environment variable must give "
                  "an absolute path (a service's working directory is not yours)", param, ctx)
    return os.path.join(os.getcwd(), value)


class AuditLogPath(click.ParamType[str]):
    """`auto`, `off`, or a path (absolute when it comes from JANITOR_AUDIT_LOG)."""

    name = "audit-log"
    KEYWORDS = ("auto", "off")

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        if value in self.KEYWORDS:
            return str(value)
        if isinstance(value, str) and value.strip().lower() in self.KEYWORDS:
            self.fail(f"{_shown(value)} is neither a path nor exactly 'auto' or 'off'", param, ctx)
        return _absolute_path(self, value, param, ctx, "audit log")


class FilePath(click.ParamType[str]):
    """A file the command reads at once (`audit verify AUDIT_LOG`; never from the environment):
    not blank, no NUL. A relative path stays relative: it is the caller's own directory."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"{_shown(value)} is not a path", param, ctx)
        problem = _blank_or_nul(value)
        if problem:
            self.fail(f"path {_shown(value)} {problem}", param, ctx)
        return value


# Names the janitor or its protocol already gives a meaning: a completion marker named like one
# would let the janitor's own files (or a consumer's) decide that a step is complete.
_RESERVED_EXACT = frozenset({protocol.TRASH_DIR, protocol.LOCK_FILE, protocol.PIN_FILE,
                             protocol.RECEIVER_READY_MARKER, protocol.DEPENDS_FILE, ".", ".."})
_RESERVED_PREFIXES = (protocol.LOADED_MARKER, protocol.STAGING_PREFIX, protocol.STEP_PREFIX)


class MarkerName(_WhitespaceList):
    """A completion marker: a plain file name inside a step, not one of the reserved names."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"{_shown(value)} is not a file name", param, ctx)
        problem = _blank_or_nul(value)
        if problem is None and value != value.strip():
            problem = "has leading or trailing whitespace"
        if problem is None and not value.isprintable():
            problem = "contains a control character"
        if problem is None and "/" in value:
            problem = "contains '/'; give a plain file name"
        if problem is None and (value in _RESERVED_EXACT or value.startswith(_RESERVED_PREFIXES)):
            problem = "is reserved by the janitor's protocol"
        if problem:
            self.fail(f"completion marker {_shown(value)} {problem}", param, ctx)
        return value


class MetricsAddr(click.ParamType[tuple[str, int]]):
    """`[HOST:]PORT` through janitor.daemon.health_http.parse_addr; the host is printable ASCII
    without whitespace. Converts to (host, port)."""

    name = "address"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value  # already converted (a default)
        if not isinstance(value, str):
            self.fail(f"{_shown(value)} is not an address", param, ctx)
        if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
            self.fail(f"{_shown(value)}: an address is printable ASCII without whitespace",
                      param, ctx)
        # The HTTP stack only when it is asked for:
        from janitor.daemon.health_http import parse_addr

        try:
            return parse_addr(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


STRICT_TYPES: tuple[type[click.ParamType[Any]], ...] = (
    StrictBool, StrictInt, StrictFloat, RootPath, AuditLogPath, FilePath, MarkerName, MetricsAddr,
    Duration, EveryCount, ByteSize, MinFree,
)

BOOL = StrictBool()
INTERVAL_TO_KEEP = StrictInt(1, MAX_STEP_NUMBER)
KEEP_LAST = StrictInt(1, 1_000_000, metavar="K")
MAX_DEPTH = StrictInt(0, 64)
RECLAIM_WORKERS = StrictInt(1, 64)
EXIT_WITH_PID = StrictInt(1, PID_MAX, metavar="PID")
PARTIAL_GRACE = StrictFloat(0.0, float(ONE_YEAR_S))
POLL_INTERVAL = StrictFloat(0.01, 3600.0)
RESCAN_INTERVAL = StrictFloat(0.1, 86400.0)
ROOTS = RootPath()
AUDIT_LOG = AuditLogPath()
MARKER = MarkerName()
METRICS_ADDR = MetricsAddr()
FILE_PATH = FilePath()
DURATION = Duration()
EVERY_COUNT = EveryCount()
SOFT_COUNT = StrictInt(0, MAX_SOFT_COUNT)
BYTE_SIZE = ByteSize()
MIN_FREE = MinFree()


_FC = TypeVar("_FC", bound=Callable[..., Any])


def option(*decls: str, **attrs: Any) -> Callable[[_FC], _FC]:
    """click.option with StrictOption; a numeric type's range is appended to the help text."""
    kind = attrs.get("type")
    if isinstance(kind, StrictInt | StrictFloat):
        attrs["help"] = f"{attrs.get('help', '')} Range: {kind.range_text}.".strip()
    return click.option(*decls, cls=StrictOption, **attrs)


def argument(*decls: str, **attrs: Any) -> Callable[[_FC], _FC]:
    """click.argument with StrictArgument."""
    return click.argument(*decls, cls=StrictArgument, **attrs)
