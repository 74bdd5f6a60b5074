"""`janitor audit verify`: replay an audit log against the invariants (janitor.ops.audit_verify)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import click

from janitor import protocol
from janitor.cli import options as strict


@click.group(name="audit")
def audit_group() -> None:
    """Check what the janitor deleted, after the fact."""


@audit_group.command(name="verify")
@strict.argument("log_path", metavar="AUDIT_LOG", type=strict.FILE_PATH)
def audit_verify(log_path: str) -> None:
    """Replay AUDIT_LOG (and its rotated files AUDIT_LOG.N) against the invariants.

    Prints one line per violation (a line that is not a well-formed record, a rotated file that is
    not a regular file, or a broken invariant) and a summary.

    Exit codes: 0 every record sound, 1 any violation (including an unreadable, malformed or
    mistyped record, or a rotated file that cannot be read), 2 usage (AUDIT_LOG empty,
    missing, unreadable, or not a regular file).
    """
    from janitor.ops.audit_verify import verify

    if not log_path:
        raise click.UsageError("AUDIT_LOG is empty; give the janitor's --audit-log path")
    shown = protocol.printable(log_path)
    try:
        mode = os.stat(log_path).st_mode
    except FileNotFoundError:
        raise click.UsageError(f"{shown} does not exist; give the janitor's --audit-log path"
                               ) from None
    except OSError as exc:
        raise click.UsageError(f"{shown}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise click.UsageError(f"{shown} is not a regular file; give the janitor's --audit-log "
                               "path")
    if not os.access(log_path, os.R_OK):
        raise click.UsageError(f"{shown} is not readable; run as a user who can read it")
    verdict = verify(Path(log_path))
    for line in verdict.violations:
        click.echo(f"violation: {protocol.printable(line)}")
    not_done = (f"; {verdict.skipped} of the deletions were not carried out (step left whole)"
                if verdict.skipped else "")
    click.echo(f"{verdict.records} records, {verdict.deletions} deletions checked, "
               f"{len(verdict.violations)} violations{not_done}")
    sys.exit(1 if verdict.violations else 0)
