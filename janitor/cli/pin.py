"""`janitor pin PATH/step_N` and `janitor unpin PATH/step_N`: keep a step forever, or let the
policy decide about it again (janitor.fs.pins; the pin file is docs/protocol.md's `.janitor-pin`).

Both are idempotent: pinning a pinned step or unpinning an unpinned one says so and exits 0. A
refusal is one `janitor:` line and its exit code (2 a bad path, 4 a `.janitor-pin` that is not a
regular file, 5 permission denied, read-only filesystem or another I/O error).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from janitor import exitcodes, protocol
from janitor.cli import options as strict
from janitor.cli.common import problem_line

_STEP = strict.argument("step", type=strict.FILE_PATH, metavar="PATH/step_N")


@click.command()
@_STEP
def pin(step: str) -> None:
    """Pin the step directory PATH/step_N: create its .janitor-pin, so no janitor deletes it.

    A running janitor sees the pin before it deletes the step. Exit 0 pinned (or already),
    2 not a step directory, 4 a .janitor-pin that is not a regular file, 5 cannot write there.
    """
    from janitor.fs import pins

    _change(pins.pin, step, "pinned", "already pinned")


@click.command()
@_STEP
def unpin(step: str) -> None:
    """Unpin the step directory PATH/step_N: remove its .janitor-pin (a regular file only).

    The policy decides about the step again; removing the pin changes the step's times, so a
    step below the loaded step is deleted only after a consumer writes its marker again.
    Exit 0 unpinned (or was not pinned), 2 not a step directory, 4 a .janitor-pin that is not a
    regular file (never removed), 5 cannot write there.
    """
    from janitor.fs import pins

    _change(pins.unpin, step, "unpinned", "not pinned")


def _change(act: Callable[[str], bool], step: str, done: str, already: str) -> None:
    """Pin or unpin: one line saying which happened, or the PinError's line and its code."""
    from janitor.fs.pins import PinError

    shown = protocol.printable(step)
    try:
        changed = act(step)
    except PinError as exc:
        problem_line(exc.line)
        sys.exit(exc.code)
    click.echo(f"{done if changed else already}: {shown}")
    sys.exit(exitcodes.NOTHING_TO_DO)
