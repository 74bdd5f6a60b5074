"""One log pipeline for the whole process: structlog events and stdlib records alike.

Logs go to stderr, always: stdout stays clean for what a command prints (`sweep --dry-run`'s plan,
`status`), and systemd and Kubernetes collect both streams anyway. On a terminal the lines are
readable console output; otherwise (journal, container runtime, a pipe) one JSON object per line
with at least `event`, `level`, `timestamp` and `logger`. Records from stdlib loggers (watchdog's,
warnings) pass through the same processors, so a watchdog warning is the same kind of JSON line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

from janitor.protocol import printable

LogFormat = Literal["auto", "json", "console"]
_FIRST_KEYS = ("timestamp", "level", "logger", "event")

# Run on every event, structlog's and stdlib's, before the renderer.
_SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def _leading_keys(
    _logger: object, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Put event, level, timestamp and logger first, so a JSON line reads well in journalctl."""
    ordered = {k: event_dict[k] for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)  # the rest keep their order after the leading keys
    return ordered


def _printable_values(
    _logger: object, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Every string a log line carries (a directory path, an entry name, a reason) through the
    one escaping function the commands use, so a name with a newline, a terminal escape or
    invalid UTF-8 can neither split a line nor break an encoder; a traceback stays as it is."""
    return {key: value if key == "exception" else _printable(value)
            for key, value in event_dict.items()}


def _printable(value: object) -> object:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


class _JanitorHandler(logging.StreamHandler[TextIO]):
    """Our root handler; its own class so a second configure_logging() finds and replaces it."""


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Send all logging to `stream` (default: the current sys.stderr) at `level` and above.

    `fmt="auto"` renders JSON unless `stream` is a terminal. Console colours are off when
    NO_COLOR is set (no-color.org) or the stream is not a terminal. Calling it again replaces
    the previous configuration. Raises ValueError with one line for an unknown level or format.
    """
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}: use auto, json or console")
    out = sys.stderr if stream is None else stream
    is_terminal = _is_terminal(out)
    console = fmt == "console" or (fmt == "auto" and is_terminal)

    renderer: list[Processor]
    if console:
        colors = is_terminal and not os.environ.get("NO_COLOR")
        renderer = [_printable_values, structlog.dev.ConsoleRenderer(colors=colors)]
    else:
        # format_exc_info turns a traceback into one "exception" string: the line stays one line.
        renderer = [structlog.processors.format_exc_info, _printable_values, _leading_keys,
                    structlog.processors.JSONRenderer()]

    handler = _JanitorHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JanitorHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)  # warnings.warn() would otherwise print raw text to stderr

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration, and structlog.testing.capture_logs() in tests, must
        # reach loggers that modules created at import time. The daemon logs too rarely to care.
        cache_logger_on_first_use=False,
    )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a tty
        return False
