"""The log pipeline: JSON lines off a terminal, console output on one, stdlib records included.

The format depends on whether stderr is a terminal, so the main tests run a real child process
with stderr on a pipe or on a pseudo-terminal, exactly as a daemon under systemd or in a shell.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from janitor.cli.logs import configure_logging

# What the child process logs: a structlog event with fields, a stdlib warning from watchdog's
# logger, a logged exception, a Python warning, and a debug event that level "info" must drop.
CHILD = """
import logging, warnings
import structlog
from janitor.cli.logs import configure_logging

configure_logging()
configure_logging()  # twice on purpose: must not duplicate lines
log = structlog.get_logger("janitor.reaper")
log.info("step_deleted", step=40, reason="below_loaded_step", bytes=123, directory="/ckpt/b")
logging.getLogger("watchdog").warning("inotify watch limit reached (%d)", 8192)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("reconcile_failed")
warnings.warn("old option", DeprecationWarning, stacklevel=1)
log.debug("too_detailed")
print("stdout stays clean")
"""


def test_json_lines_when_stderr_is_not_a_terminal() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", CHILD],
        capture_output=True, env=env, timeout=30, check=True,
    )
    assert proc.stdout == b"stdout stays clean\n"
    lines = proc.stderr.decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [r["event"] for r in records] == [
        "step_deleted",
        "inotify watch limit reached (8192)",
        "reconcile_failed",
        records[3]["event"],  # the warnings module's own text, checked below
    ]
    for record in records:
        assert {"event", "level", "timestamp", "logger"} <= record.keys()
        assert record["timestamp"].endswith("Z")  # ISO 8601 in UTC
        assert list(record)[:4] == ["timestamp", "level", "logger", "event"]  # leading keys
    deleted, watchdog_warning, failure, warning = records
    assert deleted["level"] == "info"
    assert deleted["logger"] == "janitor.reaper"
    assert {k: deleted[k] for k in ("step", "reason", "bytes", "directory")} == {
        "step": 40, "reason": "below_loaded_step", "bytes": 123, "directory": "/ckpt/b",
    }
    assert (watchdog_warning["level"], watchdog_warning["logger"]) == ("warning", "watchdog")
    assert failure["level"] == "error"
    assert "ZeroDivisionError" in failure["exception"]
    assert (warning["logger"], warning["level"]) == ("py.warnings", "warning")
    assert "DeprecationWarning: old option" in warning["event"]


def read_until_closed(fd: int, deadline_s: float = 30) -> bytes:
    """Read a pty master until every writer closed the other end (EIO on Linux)."""
    chunks, deadline = [], time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], deadline - time.monotonic())[0]:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("no_color", [True, False])
def test_console_output_on_a_terminal(no_color: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color:
        env["NO_COLOR"] = "1"
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-W", "always", "-c", CHILD],
            stdout=subprocess.PIPE, stderr=terminal, env=env,
        )
        os.close(terminal)  # only the child holds the terminal now, so EOF means it exited
        terminal = -1
        output = read_until_closed(controller).decode()
        assert proc.communicate(timeout=30)[0] == b"stdout stays clean\n"
        assert proc.returncode == 0
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "step_deleted" in output
    assert "inotify watch limit reached (8192)" in output
    assert "ZeroDivisionError" in output
    assert "too_detailed" not in output
    assert ("\x1b[" in output) is not no_color


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging() changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
def test_reconfiguring_replaces_the_handler_and_obeys_the_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(level="debug", stream=first)
    configure_logging(fmt="console", level="warning", stream=second)
    log = structlog.get_logger("janitor.test")
    log.info("dropped_at_warning")
    log.warning("kept", directory="/ckpt")
    assert first.getvalue() == ""
    assert "kept" in second.getvalue()
    assert "dropped_at_warning" not in second.getvalue()
    assert "\x1b[" not in second.getvalue()  # not a terminal: no colours even in console format


@pytest.mark.usefixtures("restore_logging")
def test_capture_logs_works_after_configure_logging() -> None:
    """How tests assert on events: as dicts, after the daemon configured real logging."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    log = structlog.get_logger("janitor.reaper")  # like a module-level logger made at import
    with capture_logs() as logs:
        log.info("step_deleted", step=7, reason="below_loaded_step")
    assert logs == [{"event": "step_deleted", "step": 7, "reason": "below_loaded_step",
                     "log_level": "info"}]
    assert stream.getvalue() == ""  # captured events are not also written out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"level": "loud"}, "unknown log level 'loud'"), ({"fmt": "xml"}, "unknown log format")],
)
def test_bad_arguments_are_one_line(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_hostile_names_in_log_fields_stay_on_one_printable_line(fmt: str) -> None:
    """A directory named with a newline, an escape and invalid UTF-8 (a surrogate after
    os.fsdecode) is logged through protocol.printable: one line, no raw control byte."""
    stream = io.StringIO()
    configure_logging(fmt, "info", stream=stream)  # type: ignore[arg-type]
    hostile = os.fsdecode(b"/ckpt/run\n\x1b[2J\xff")
    structlog.get_logger("janitor").warning("deleting_nothing", directory=hostile,
                                            entries=[hostile])
    out = stream.getvalue()
    assert out.count("\n") == 1 and "\x1b" not in out
    assert "\\x1b[2J" in out and "\\xff" in out
    if fmt == "json":
        line = json.loads(out)
        assert line["directory"] == "/ckpt/run\\n\\x1b[2J\\xff"
        assert line["entries"] == [line["directory"]]
