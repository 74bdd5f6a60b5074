"""`janitor run`: the daemon (janitor.daemon, imported only when this command runs)."""

from __future__ import annotations

import sys
from typing import Any

import click
import structlog

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


@click.command()
@strict.argument("roots", nargs=-1, required=True, type=strict.ROOTS, envvar="JANITOR_ROOTS",
                 metavar="ROOT...")
@policy_options
@budget_options
@audit_option
@strict.option("--watch", type=click.Choice(["auto", "inotify", "poll"]), default="auto",
               show_default=True, envvar="JANITOR_WATCH", show_envvar=True,
               help="auto polls network and FUSE filesystems (inotify cannot see other hosts' "
                    "writes there) and uses inotify elsewhere.")
@strict.option("--poll-interval", type=strict.POLL_INTERVAL, default=2.0, show_default=True,
               envvar="JANITOR_POLL_INTERVAL", show_envvar=True, metavar="SECONDS",
               help="How often polled directories are checked for changes.")
@strict.option("--rescan-interval", type=strict.RESCAN_INTERVAL, default=30.0,
               show_default=True, envvar="JANITOR_RESCAN_INTERVAL", show_envvar=True,
               metavar="SECONDS", help="Every directory is reconciled at least this often.")
@strict.option("--metrics-addr", type=strict.METRICS_ADDR, default=None,
               envvar="JANITOR_METRICS_ADDR", show_envvar=True, metavar="[HOST:]PORT",
               help="Serve /metrics and /healthz here (host defaults to 127.0.0.1). Off if unset.")
@strict.option("--once", is_flag=True, type=strict.BOOL, envvar="JANITOR_ONCE", show_envvar=True,
               help="One full pass (and reclaim), then exit.")
@strict.option("--exit-with-pid", type=strict.EXIT_WITH_PID, default=None,
               envvar="JANITOR_EXIT_WITH_PID", show_envvar=True, metavar="PID",
               help="After this process exits, do a final pass and exit.")
@strict.option("--standby", is_flag=True, type=strict.BOOL, envvar="JANITOR_STANDBY",
               show_envvar=True,
               help="Where another janitor holds a directory, wait and take it over when that "
                    "one stops (within --rescan-interval) instead of exiting 4: for several "
                    "pods on one shared tree.")
@strict.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
               show_default=True, envvar="JANITOR_LOG_FORMAT", show_envvar=True,
               help="auto: JSON lines unless stderr is a terminal.")
@strict.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
               default="info", show_default=True, envvar="JANITOR_LOG_LEVEL", show_envvar=True)
def run(roots: tuple[str, ...], watch: str, poll_interval: float, rescan_interval: float,
        metrics_addr: tuple[str, int] | None, once: bool, exit_with_pid: int | None,
        standby: bool, log_format: str, log_level: str, audit_log: str, reclaim_workers: int,
        **kwargs: Any) -> None:
    """Watch ROOT and keep every managed directory below it reconciled until stopped.

    Stops on SIGTERM or SIGINT with exit 0. Exit 2 usage, 4 refused (another janitor holds a
    directory, unless --standby; with --once also a directory left untouched), 5 error (the
    watcher died and could not be restarted; with --once a directory that could not be read).
    """
    from janitor.cli.logs import configure_logging
    from janitor.daemon import Daemon, DaemonConfig, StartupError

    dry_run = bool(kwargs.pop("dry_run"))
    max_depth = int(kwargs.pop("max_depth"))
    policy, options = build_policy(kwargs)
    budget = build_budget(kwargs)
    configure_logging(log_format, log_level)  # type: ignore[arg-type]
    audit_file, audit_off = open_audit(audit_log, dry_run)
    if audit_off:
        structlog.get_logger("janitor").warning(
            "audit_log_disabled", why=audit_off, action="pass --audit-log PATH or off")
    config = DaemonConfig(roots=tuple(roots), policy=policy, options=options, dry_run=dry_run,
                          max_depth=max_depth, watch=watch,  # type: ignore[arg-type]
                          poll_interval_s=poll_interval, rescan_interval_s=rescan_interval,
                          metrics_addr=metrics_addr, once=once, exit_with_pid=exit_with_pid,
                          audit=audit_file, reclaim_workers=reclaim_workers,
                          standby=standby, budget=budget)
    try:
        code = Daemon(config).run()
    except StartupError as exc:
        problem_line(str(exc))
        code = exc.code
    sys.exit(code)
