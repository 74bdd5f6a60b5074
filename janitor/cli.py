"""The `janitor` command line: `sweep` (one pass), `run` (the daemon), `status`.

Every option can also come from a JANITOR_* environment variable (the sidecar and systemd way).
A user error is one line on stderr, `janitor: error: ...`, and exit code 2; see janitor.exitcodes.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import structlog

from janitor import __version__, audit, exitcodes, protocol, reserved
from janitor import options as strict
from janitor.audit import AuditLog
from janitor.model import ScanOptions
from janitor.policy import Policy, PolicyError
from janitor.report import DirectoryReport, directory_json, directory_text, human_bytes
from janitor.sweep import SweepRequest
from janitor.sweep import sweep as run_sweep

F = Callable[..., Any]


def policy_options(command: F) -> F:
    """The options every command that plans shares, each with its JANITOR_* variable."""
    options = [
        strict.option("--interval-to-keep", type=strict.INTERVAL_TO_KEEP, default=None,
                      envvar="JANITOR_INTERVAL_TO_KEEP", show_envvar=True,
                      help="Keep every step whose number is a multiple of N."),
        strict.option("--keep-last", type=strict.KEEP_LAST, default=1, show_default=True,
                      envvar="JANITOR_KEEP_LAST", show_envvar=True,
                      help="Keep the K newest complete steps."),
        strict.option("--gate/--no-gate", type=strict.BOOL, default=True, show_default=True,
                      envvar="JANITOR_GATE", show_envvar=True,
                      help="Delete only below the loaded step (LOADED_STEP markers). "
                           "--no-gate ignores consumers: only keep-last protects steps."),
        strict.option("--complete-marker", "complete_markers", type=strict.MARKER, multiple=True,
                      default=(protocol.DEFAULT_COMPLETE_MARKER,), show_default=True,
                      envvar="JANITOR_COMPLETE_MARKER", show_envvar=True,
                      help="File whose presence marks a step complete (repeatable: any counts; "
                           "the variable takes names separated by spaces).",
                      metavar="NAME"),
        strict.option("--progress", type=click.Choice(["loaded-step", "receiver-ready"]),
                      default="loaded-step", show_default=True, envvar="JANITOR_PROGRESS",
                      show_envvar=True,
                      help="Where consumer progress is read: LOADED_STEP markers, or per-step "
                           ".receiver_ready sentinels."),
        strict.option("--partial-grace", type=strict.PARTIAL_GRACE, default=600.0,
                      show_default=True, envvar="JANITOR_PARTIAL_GRACE", show_envvar=True,
                      metavar="SECONDS",
                      help="Incomplete steps and staging dirs changed more recently are kept."),
        strict.option("--max-depth", type=strict.MAX_DEPTH, default=3, show_default=True,
                      envvar="JANITOR_MAX_DEPTH", show_envvar=True,
                      help="How deep under each root to look for managed directories."),
        strict.option("--dry-run", is_flag=True, type=strict.BOOL, envvar="JANITOR_DRY_RUN",
                      show_envvar=True,
                      help="Decide and print, change nothing on disk (no lock, no trash)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def audit_option(command: F) -> F:
    """--audit-log and --reclaim-workers: the options of the commands that delete."""
    command = strict.option(
        "--reclaim-workers", type=strict.RECLAIM_WORKERS, default=1, show_default=True,
        envvar="JANITOR_RECLAIM_WORKERS", show_envvar=True, metavar="N",
        help="Threads freeing a step's subdirectories at once: worth it on NFS or Lustre, where "
             "every unlink is a round trip.",
    )(command)
    return strict.option(
        "--audit-log", type=strict.AUDIT_LOG, default="auto", show_default=True,
        envvar="JANITOR_AUDIT_LOG", show_envvar=True, metavar="PATH|auto|off",
        help="Append one fsynced JSON line per deletion here (keep it outside the managed "
             "directories). auto: $STATE_DIRECTORY/audit.jsonl under systemd, else "
             "~/.local/state/ckpt-janitor/audit.jsonl, skipped with a warning if unwritable. "
             "A relative PATH is refused from JANITOR_AUDIT_LOG.",
    )(command)


def open_audit(value: str, dry_run: bool) -> tuple[AuditLog | None, str | None]:
    """The audit log to write (None for none) and, for `auto`, why it is off if it is.

    An explicit path that cannot be written is a usage error, found at start. The `auto` default
    is best effort (a read-only home in a container must not stop the janitor; the daemon logs
    why) and opened at the first deletion, so a run that deletes nothing leaves no trace.
    """
    if dry_run or value == "off":
        return None, None
    if value == "auto":
        path = audit.default_path()
        if not _could_create(path):
            return None, f"cannot create {path} (not writable)"
        return AuditLog(path, lazy=True), None
    try:
        return AuditLog(Path(value)), None
    except reserved.UnsafeObjectError as exc:  # the line names the path and what to do
        raise click.UsageError(f"--audit-log {exc.strerror}") from None
    except OSError as exc:
        raise click.UsageError(f"--audit-log {value}: {exc.strerror or exc}; "
                               "give a writable path or 'off'") from None


def _could_create(path: Path) -> bool:
    """Whether `path` exists writable or its nearest existing ancestor is writable."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return os.access(candidate, os.W_OK)
    return False


def build_policy(kwargs: dict[str, Any]) -> tuple[Policy, ScanOptions]:
    """The Policy and ScanOptions from parsed options; a bad combination is a usage error."""
    markers = tuple(kwargs.pop("complete_markers"))  # each checked by strict.MARKER
    try:
        policy = Policy(gated=kwargs.pop("gate"), interval_to_keep=kwargs.pop("interval_to_keep"),
                        keep_last=kwargs.pop("keep_last"),
                        partial_grace_s=kwargs.pop("partial_grace"),
                        progress=kwargs.pop("progress"))
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None
    options = ScanOptions(complete_markers=markers,
                          receiver_ready=policy.progress == "receiver-ready")
    return policy, options


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="janitor")
def cli() -> None:
    """Delete old checkpoint steps only after every consumer has loaded past them."""


@cli.command()
@strict.argument("paths", nargs=-1, required=True, type=strict.ROOTS, envvar="JANITOR_ROOTS",
                 metavar="PATH...")
@policy_options
@audit_option
@strict.option("--json", "as_json", is_flag=True, type=strict.BOOL,
               help="Print one JSON document instead of text.")
def sweep(paths: tuple[str, ...], as_json: bool, audit_log: str, reclaim_workers: int,
          **kwargs: Any) -> None:
    """One pass over each managed directory under PATH: decide, print, delete.

    Exit codes: 0 nothing to delete, 3 deleted (or would), 4 refused (left a directory untouched),
    5 error, 2 usage.
    """
    dry_run = bool(kwargs.pop("dry_run"))
    max_depth = int(kwargs.pop("max_depth"))
    policy, options = build_policy(kwargs)
    request = SweepRequest(tuple(paths), policy, options, dry_run, max_depth,
                           open_audit(audit_log, dry_run)[0], reclaim_workers)

    def show(report: DirectoryReport) -> None:
        if not as_json:
            for line in directory_text(report, dry_run):
                click.echo(line)

    code, reports = run_sweep(request, problem=_problem_line, on_directory=show)
    freed = sum(r.freed_bytes(dry_run) for r in reports)
    deleted = sum(r.deleted_count(dry_run) for r in reports)
    if as_json:
        click.echo(json.dumps({
            "dry_run": dry_run, "exit_code": code, "policy": policy.describe(),
            "deleted": deleted, "freed_bytes": freed,
            "directories": [directory_json(r, dry_run) for r in reports],
        }, indent=2))
    else:
        verb = "would free" if dry_run else "freed"
        noun = "directory" if len(reports) == 1 else "directories"
        click.echo(f"total: {verb} {human_bytes(freed)} in {deleted} steps across "
                   f"{len(reports)} {noun}{' (dry run: nothing changed)' if dry_run else ''}")
    sys.exit(code)


def _problem_line(line: str) -> None:
    """One problem, one line on stderr, whatever names it holds (printable is idempotent)."""
    click.echo(f"janitor: {protocol.printable(line)}", err=True)


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
        _problem_line(f"error: {exc.format_message()} (see '{command} --help')")
        sys.exit(exitcodes.USAGE)
    except click.ClickException as exc:
        _problem_line(f"error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("janitor: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


@cli.command()
@strict.argument("roots", nargs=-1, required=True, type=strict.ROOTS, envvar="JANITOR_ROOTS",
                 metavar="ROOT...")
@policy_options
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
@strict.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
               show_default=True, envvar="JANITOR_LOG_FORMAT", show_envvar=True,
               help="auto: JSON lines unless stderr is a terminal.")
@strict.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
               default="info", show_default=True, envvar="JANITOR_LOG_LEVEL", show_envvar=True)
def run(roots: tuple[str, ...], watch: str, poll_interval: float, rescan_interval: float,
        metrics_addr: tuple[str, int] | None, once: bool, exit_with_pid: int | None,
        log_format: str, log_level: str, audit_log: str, reclaim_workers: int,
        **kwargs: Any) -> None:
    """Watch ROOT and keep every managed directory below it reconciled until stopped.

    Stops on SIGTERM or SIGINT with exit 0. Exit 2 usage, 4 refused (another janitor holds a
    directory), 5 error (the watcher died and could not be restarted).
    """
    from janitor.daemon import Daemon, DaemonConfig, StartupError
    from janitor.logs import configure_logging

    dry_run = bool(kwargs.pop("dry_run"))
    max_depth = int(kwargs.pop("max_depth"))
    policy, options = build_policy(kwargs)
    configure_logging(log_format, log_level)  # type: ignore[arg-type]
    audit_file, audit_off = open_audit(audit_log, dry_run)
    if audit_off:
        structlog.get_logger("janitor").warning(
            "audit_log_disabled", why=audit_off, action="pass --audit-log PATH or off")
    config = DaemonConfig(roots=tuple(roots), policy=policy, options=options, dry_run=dry_run,
                          max_depth=max_depth, watch=watch,  # type: ignore[arg-type]
                          poll_interval_s=poll_interval, rescan_interval_s=rescan_interval,
                          metrics_addr=metrics_addr, once=once, exit_with_pid=exit_with_pid,
                          audit=audit_file, reclaim_workers=reclaim_workers)
    try:
        code = Daemon(config).run()
    except StartupError as exc:
        _problem_line(str(exc))
        code = exc.code
    sys.exit(code)


@cli.command()
@strict.argument("roots", nargs=-1, required=True, type=strict.ROOTS, envvar="JANITOR_ROOTS",
                 metavar="ROOT...")
@policy_options
@strict.option("--json", "as_json", is_flag=True, type=strict.BOOL,
               help="Print one JSON document instead of text.")
def status(roots: tuple[str, ...], as_json: bool, **kwargs: Any) -> None:
    """Show each managed directory: consumers, lag, what the policy would do, trash, lock holder.

    Where a janitor runs, the plan is made with the policy its lock records (printed on the
    `policy:` line); policy flags given here replace it, with a warning where they differ.
    Read-only (the same as a dry run). Exit 0, or 2 when a root is unusable.
    """
    from janitor.status import collect, render

    kwargs.pop("dry_run")
    max_depth = int(kwargs.pop("max_depth"))
    explicit = _policy_given(click.get_current_context())
    policy, options = build_policy(kwargs)
    code, reports = collect(tuple(roots), policy, options, max_depth, _problem_line,
                            explicit=explicit)
    if as_json:
        click.echo(json.dumps({"schema": STATUS_SCHEMA, "directories": reports}, indent=2))
    else:
        for line in render(reports):
            click.echo(line)
    sys.exit(code)


# The version of `janitor status --json`'s document: raised when a field changes meaning.
STATUS_SCHEMA = 2
_POLICY_PARAMS = ("interval_to_keep", "keep_last", "gate", "complete_markers", "progress",
                  "partial_grace")


def _policy_given(ctx: click.Context) -> bool:
    """Whether any policy option came from the command line or the environment (not a default):
    then status plans with it instead of the running janitor's recorded policy."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return any(ctx.get_parameter_source(name) in given for name in _POLICY_PARAMS)


@cli.group(name="audit")
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
    from janitor.audit_verify import verify

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
