"""`janitor sweep`: one pass over each managed directory, then exit (janitor.ops.sweep)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from janitor.cli import options as strict
from janitor.cli.common import (
    audit_option,
    budget_options,
    build_budget,
    build_policy,
    open_audit,
    policy_options,
    problem_line,
)
from janitor.ops.report import (
    DirectoryReport,
    deletion_lines,
    directory_json,
    directory_text,
    human_bytes,
)
from janitor.ops.sweep import SweepRequest
from janitor.ops.sweep import sweep as run_sweep


@click.command()
@strict.argument("paths", nargs=-1, required=True, type=strict.ROOTS, envvar="JANITOR_ROOTS",
                 metavar="PATH...")
@policy_options
@budget_options
@audit_option
@strict.option("--json", "as_json", is_flag=True, type=strict.BOOL,
               help="Print one JSON document instead of text.")
@strict.option("--quiet", "-q", is_flag=True, type=strict.BOOL, envvar="JANITOR_QUIET",
               show_envvar=True,
               help="Text output: print only the steps deleted (with --dry-run: that would be), "
                    "one line each; problems still go to stderr. No effect on --json.")
def sweep(paths: tuple[str, ...], as_json: bool, quiet: bool, audit_log: str,
          reclaim_workers: int, **kwargs: Any) -> None:
    """One pass over each managed directory under PATH: decide, print, delete.

    Exit codes: 0 nothing to delete, 3 deleted (or would), 4 refused (left a directory untouched),
    5 error, 2 usage.
    """
    dry_run = bool(kwargs.pop("dry_run"))
    max_depth = int(kwargs.pop("max_depth"))
    policy, options = build_policy(kwargs)
    budget = build_budget(kwargs)
    request = SweepRequest(tuple(paths), policy, options, dry_run, max_depth,
                           open_audit(audit_log, dry_run)[0], reclaim_workers, budget)

    def show(report: DirectoryReport) -> None:
        if not as_json:
            render = deletion_lines if quiet else directory_text
            for line in render(report, dry_run):
                click.echo(line)

    code, reports = run_sweep(request, problem=problem_line, on_directory=show)
    freed = sum(r.freed_bytes(dry_run) for r in reports)
    deleted = sum(r.deleted_count(dry_run) for r in reports)
    if as_json:
        click.echo(json.dumps({
            "dry_run": dry_run, "exit_code": code, "policy": policy.describe(),
            "deleted": deleted, "freed_bytes": freed,
            "directories": [directory_json(r, dry_run) for r in reports],
        }, indent=2))
    elif not quiet:
        verb = "would free" if dry_run else "freed"
        noun = "directory" if len(reports) == 1 else "directories"
        click.echo(f"total: {verb} {human_bytes(freed)} in {deleted} steps across "
                   f"{len(reports)} {noun}{' (dry run: nothing changed)' if dry_run else ''}")
    sys.exit(code)
