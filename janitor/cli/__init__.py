"""The `janitor` command line: `sweep` (one pass), `run` (the daemon), `status`, `audit verify`,
`pin`/`unpin` (keep a step forever, or not) and `explain` (every rule for one step).

Every option can also come from a JANITOR_* environment variable (the sidecar and systemd way).
A user error is one line on stderr, `janitor: error: ...`, and exit code 2; see janitor.exitcodes.

This module holds the click group and `main`; each command is a module of its own (`sweep`,
`run`, `status`, `audit`, `pin`, `explain`), built from the shared options in `common` and the
strict types in `options`. The command modules never import this one: it imports them at its end
and adds them to the group, so there is no import cycle.
"""

from __future__ import annotations

import io
import sys

import click

from janitor import __version__, exitcodes
from janitor.cli.common import problem_line


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="janitor")
def cli() -> None:
    """Delete old checkpoint steps only after every consumer has loaded past them."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: click without its multi-line usage dumps; one line per user error.

    Names are escaped by protocol.printable where they are printed; as a backstop, stdout and
    stderr escape what they cannot encode (a surrogate-escaped byte under PYTHONIOENCODING=utf-8,
    anything non-ASCII under an ASCII locale) instead of raising.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        cli.main(args=argv, prog_name="janitor", standalone_mode=False)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "janitor"
        problem_line(f"error: {exc.format_message()} (see '{command} --help')")
        sys.exit(exitcodes.USAGE)
    except click.ClickException as exc:
        problem_line(f"error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("janitor: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


# The commands, in the order they were always added to the group (help lists them sorted).
from janitor.cli import audit, explain, pin, run, status, sweep  # noqa: E402

for _command in (sweep.sweep, run.run, status.status, audit.audit_group, pin.pin, pin.unpin,
                 explain.explain):
    cli.add_command(_command)
