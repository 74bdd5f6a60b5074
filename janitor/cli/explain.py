"""`janitor explain PATH/step_N`: every rule for one step and the decision (janitor.ops.explain)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from janitor import exitcodes
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
@strict.argument("step", type=strict.FILE_PATH, metavar="PATH/step_N")
@policy_options
@budget_options
@strict.option("--json", "as_json", is_flag=True, type=strict.BOOL,
               help="Print one JSON document instead of text.")
def explain(step: str, as_json: bool, **kwargs: Any) -> None:
    """Why the janitor keeps or deletes PATH/step_N: every rule that applies, with its values.

    As `janitor status` does, the plan is made with the policy a running janitor's lock records,
    unless policy flags are given here. With --pressure relieve and --max-bytes or --min-free,
    the decision is the one a sweep would make under that budget (the directory taken as alone
    on its filesystem). Read-only. Exit 0, 2 not a step of a managed directory, 4 the directory
    is refused, 5 unreadable.
    """
    from janitor.fs.pins import PinError
    from janitor.ops.explain import as_json as document
    from janitor.ops.explain import as_text
    from janitor.ops.explain import explain as explain_step

    kwargs.pop("dry_run")
    kwargs.pop("max_depth")
    explicit = policy_given(click.get_current_context())
    budget = build_budget(kwargs)
    policy, options = build_policy(kwargs)
    try:
        explanation = explain_step(step, policy, options, explicit=explicit, budget=budget)
    except PinError as exc:
        problem_line(exc.line)
        sys.exit(exc.code)
    if as_json:
        click.echo(json.dumps(document(explanation), indent=2))
    else:
        for line in as_text(explanation):
            click.echo(line)
    sys.exit(exitcodes.NOTHING_TO_DO)

