"""Helpers for the option-parsing tests: run `janitor` in-process (fast, for `sweep`, `status` and
parse-only checks) and an independent spec of what every option and variable accepts.

The spec below is written from the README's "Option values" paragraph, not from janitor.cli.options:
it is the oracle the hostile-input suite compares the real parser against.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from unittest import mock

from helpers.run import Ran, clean_env
from janitor import cli


def run_inprocess(argv: list[str], env: dict[str, str] | None = None) -> Ran:
    """janitor.cli.main(argv) with JANITOR_* taken only from `env`, stdout/stderr captured.

    Any exception other than SystemExit propagates: it is a traceback the user would see.
    """
    clean = clean_env(env)
    out, err = io.StringIO(), io.StringIO()
    code: int
    with (mock.patch.dict(os.environ, clean, clear=True), contextlib.redirect_stdout(out),
          contextlib.redirect_stderr(err)):
        try:
            cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            code = 0
    return Ran(code, out.getvalue(), err.getvalue())


def assert_one_usage_line(ran: Ran, case: str) -> str:
    """Exit 2 and exactly one stderr line `janitor: error: ...`, no traceback, nothing on stdout."""
    assert ran.code == 2, f"{case}: exit {ran.code}, stderr {ran.stderr!r}"
    assert len(ran.err_lines) == 1, f"{case}: expected one stderr line, got {ran.stderr!r}"
    assert ran.err_lines[0].startswith("janitor: error: "), f"{case}: {ran.stderr!r}"
    assert "Traceback" not in ran.stderr, case
    assert ran.stdout == "", f"{case}: stdout {ran.stdout!r}"
    return ran.err_lines[0]


# ---- the oracle: what each option accepts, written independently of janitor.cli.options ----------

_BOOL = re.compile(r"true|false|1|0|yes|no|on|off", re.ASCII | re.IGNORECASE)
_TRUE = {"true", "1", "yes", "on"}
_INT = re.compile(r"-?[0-9]+", re.ASCII)
_DEC = re.compile(r"-?[0-9]+(\.[0-9]+)?", re.ASCII)
_RESERVED = {".janitor-trash", ".janitor.lock", ".janitor-pin", ".receiver_ready", "DEPENDS_ON",
             ".", ".."}
_RESERVED_PREFIXES = ("LOADED_STEP", ".janitor-staging.", "step_")


class RefusedError(Exception):
    """The oracle refuses the value."""


def parse_bool(text: str) -> bool:
    if not _BOOL.fullmatch(text):
        raise RefusedError(text)
    return text.lower() in _TRUE


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _INT.fullmatch(text):
            raise RefusedError(text)
        # Decimal, not int(): no 4300-digit limit, exact either way.
        value = Decimal(text)
        if not low <= value <= high:
            raise RefusedError(text)
        return int(value)
    return parse


def decimal_in(low: str, high: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        if not _DEC.fullmatch(text):
            raise RefusedError(text)
        value = Decimal(text)
        if not Decimal(low) <= value <= Decimal(high):
            raise RefusedError(text)
        return float(value)
    return parse


# The layouts the README lists (docs/layouts.md), written here, not imported from janitor.
LAYOUTS = ("step", "prime-rl-broadcasts", "prime-rl-checkpoints", "hf", "torchtitan", "orbax",
           "megatron", "verl", "deepspeed", "auto")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """The README's --keep-within: a whole number and one of s m h d w, 1 s to 3650 days."""
    match = re.fullmatch(r"(0|[1-9][0-9]*)([smhdw])", text, re.ASCII)
    if not match:
        raise RefusedError(text)
    seconds = int(match[1]) * _UNITS[match[2]]
    if not 1 <= seconds <= 3650 * 86400:
        raise RefusedError(text)
    return float(seconds)


def every_count(text: str) -> tuple[int, int]:
    """The README's --keep-interval N:COUNT: N >= 1, COUNT 1..100000, canonical decimals."""
    match = re.fullmatch(r"(0|[1-9][0-9]{0,18}):(0|[1-9][0-9]{0,18})", text, re.ASCII)
    if not match or not (int(match[1]) >= 1 and 1 <= int(match[2]) <= 100_000):
        raise RefusedError(text)
    return int(match[1]), int(match[2])


_POWERS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}


def byte_size(text: str) -> int:
    """The README's SIZE: a decimal number, then K, M, G, T or P (powers of 1024), then an
    optional B or iB; 1 byte to 4 EiB."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)(i?B)?", text, re.ASCII)
    if not match:
        raise RefusedError(text)
    value = int(float(match[1]) * (1 << _POWERS[match[2]]))
    if not 1 <= value <= 1 << 62:
        raise RefusedError(text)
    return value


def min_free(text: str) -> tuple[str, float]:
    """--min-free: a SIZE, or a percentage strictly between 0 and 100."""
    if text.endswith("%"):
        body = text[:-1]
        if not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", body, re.ASCII) or not 0 < float(body) < 100:
            raise RefusedError(text)
        return "fraction", float(body) / 100
    return "bytes", float(byte_size(text))


def choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in values:
            raise RefusedError(text)
        return text
    return parse


def marker_name(text: str) -> str:
    if (text.strip() == "" or text != text.strip() or "/" in text or "\0" in text
            or not text.isprintable() or text in _RESERVED
            or text.startswith(_RESERVED_PREFIXES)):
        raise RefusedError(text)
    return text


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)


def metrics_port_only(text: str) -> tuple[str, int]:
    """--metrics-addr without IPv6: PORT, or HOST:PORT with HOST a dotted-quad IPv4 address or
    a DNS name that is not all digits and dots (`+127.0.0.1` is neither); port 0..65535."""
    host, colon, port = text.rpartition(":")
    if not re.fullmatch(r"[0-9]+", port, re.ASCII) or int(port) > 65535:
        raise RefusedError(text)
    if not colon:
        return ("127.0.0.1", int(port))
    if not (_IPV4.fullmatch(host) or (_NAME.fullmatch(host) and len(host) <= 253
                                     and not host.replace(".", "").isdigit())):
        raise RefusedError(text)
    return (host, int(port))


@dataclass(frozen=True)
class Spec:
    """One option: its flag, variable, parser (the oracle) and default."""

    flag: str
    envvar: str
    parse: Callable[[str], Any]
    default: Any
    is_flag: bool = False
    dest: str = ""

    @property
    def name(self) -> str:
        return self.dest or self.flag.lstrip("-").replace("-", "_")


POLICY_SPECS = (
    Spec("--interval-to-keep", "JANITOR_INTERVAL_TO_KEEP", int_in(1, 10**19 - 1), None),
    Spec("--keep-last", "JANITOR_KEEP_LAST", int_in(1, 1_000_000), 1),
    Spec("--gate", "JANITOR_GATE", parse_bool, True, is_flag=True),
    Spec("--complete-marker", "JANITOR_COMPLETE_MARKER", marker_name, ("STABLE",),
         dest="complete_markers"),
    Spec("--progress", "JANITOR_PROGRESS", choice("loaded-step", "receiver-ready"),
         "loaded-step"),
    Spec("--partial-grace", "JANITOR_PARTIAL_GRACE", decimal_in("0", "31536000"), 600.0),
    Spec("--layout", "JANITOR_LAYOUT", choice(*LAYOUTS), "step"),
    Spec("--keep-within", "JANITOR_KEEP_WITHIN", duration, None),
    Spec("--keep-hourly", "JANITOR_KEEP_HOURLY", int_in(0, 100_000), 0),
    Spec("--keep-daily", "JANITOR_KEEP_DAILY", int_in(0, 100_000), 0),
    Spec("--keep-interval", "JANITOR_KEEP_INTERVAL", every_count, None),
    Spec("--max-depth", "JANITOR_MAX_DEPTH", int_in(0, 64), 3),
    Spec("--dry-run", "JANITOR_DRY_RUN", parse_bool, False, is_flag=True),
)
DELETER_SPECS = (
    Spec("--reclaim-workers", "JANITOR_RECLAIM_WORKERS", int_in(1, 64), 1),
)
BUDGET_SPECS = (
    Spec("--max-bytes", "JANITOR_MAX_BYTES", byte_size, None),
    Spec("--min-free", "JANITOR_MIN_FREE", min_free, None),
    Spec("--pressure", "JANITOR_PRESSURE", choice("alert", "relieve"), "alert"),
)
SWEEP_SPECS = (
    Spec("--quiet", "JANITOR_QUIET", parse_bool, False, is_flag=True),
)
RUN_SPECS = (
    Spec("--watch", "JANITOR_WATCH", choice("auto", "inotify", "poll"), "auto"),
    Spec("--poll-interval", "JANITOR_POLL_INTERVAL", decimal_in("0.01", "3600"), 2.0),
    Spec("--rescan-interval", "JANITOR_RESCAN_INTERVAL", decimal_in("0.1", "86400"), 30.0),
    Spec("--metrics-addr", "JANITOR_METRICS_ADDR", metrics_port_only, None),
    Spec("--once", "JANITOR_ONCE", parse_bool, False, is_flag=True),
    Spec("--standby", "JANITOR_STANDBY", parse_bool, False, is_flag=True),
    Spec("--exit-with-pid", "JANITOR_EXIT_WITH_PID", int_in(1, 4_194_304), None),
    Spec("--log-format", "JANITOR_LOG_FORMAT", choice("auto", "json", "console"), "auto"),
    Spec("--log-level", "JANITOR_LOG_LEVEL", choice("debug", "info", "warning", "error"), "info"),
)
SPECS_BY_COMMAND = {
    "sweep": POLICY_SPECS + BUDGET_SPECS + DELETER_SPECS + SWEEP_SPECS,
    "status": POLICY_SPECS + BUDGET_SPECS,
    "run": POLICY_SPECS + BUDGET_SPECS + DELETER_SPECS + RUN_SPECS,
}
