"""`janitor status`: read-only, what each managed directory holds (janitor.ops.status)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from janitor.cli import options as strict
from janitor.cli.common import (
    budget_options,
    build_budget,
    build_policy,
    policy_given,
    policy_options,
    problem_line,
)


@click.command()
@strict.argument("roots", nargs=-1, required=True, type=strict.ROOTS, envvar="JANITOR_ROOTS",
                 metavar="ROOT...")
@policy_options
@budget_options
@strict.option("--json", "as_json", is_flag=True, type=strict.BOOL,
               help="Print one JSON document instead of text.")
def status(roots: tuple[str, ...], as_json: bool, **kwargs: Any) -> None:
    """Show each managed directory: consumers, lag, what the policy would do, trash, lock holder.

    Where a janitor runs, the plan is made with the policy its lock records (printed on the
    `policy:` line); policy flags given here replace it, with a warning where they differ.
    Read-only (the same as a dry run). Exit 0, or 2 when a root is unusable.
    """
    from janitor.ops.status import collect, render

    kwargs.pop("dry_run")
    max_depth = int(kwargs.pop("max_depth"))
    explicit = policy_given(click.get_current_context())
    policy, options = build_policy(kwargs)
    budget = build_budget(kwargs)
    code, reports = collect(tuple(roots), policy, options, max_depth, problem_line,
                            explicit=explicit, budget=budget)
    if as_json:
        click.echo(json.dumps({"schema": STATUS_SCHEMA, "directories": reports}, indent=2))
    else:
        for line in render(reports):
            click.echo(line)
    sys.exit(code)


# The version of `janitor status --json`'s document: raised when a field changes meaning.
STATUS_SCHEMA = 2


