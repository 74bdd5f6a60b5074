"""What the commands share: the policy and audit options, and turning them into objects.

Each command module decorates its function with these; none of them imports the group
(janitor.cli), which imports the commands and registers them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from janitor import layout_file, layouts, protocol
from janitor.budget import Budget
from janitor.cli import options as strict
from janitor.fs import reserved
from janitor.layouts import Layout
from janitor.model import ScanOptions
from janitor.ops import audit
from janitor.ops.audit import AuditLog
from janitor.policy import Policy, PolicyError, for_layout

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
        strict.option("--keep-within", type=strict.DURATION, default=None,
                      envvar="JANITOR_KEEP_WITHIN", show_envvar=True,
                      help="Also keep every complete step completed within this long (6h, 2d)."),
        strict.option("--keep-hourly", type=strict.SOFT_COUNT, default=0, show_default=True,
                      envvar="JANITOR_KEEP_HOURLY", show_envvar=True, metavar="H",
                      help="Also keep the newest complete step of each of the last H hours."),
        strict.option("--keep-daily", type=strict.SOFT_COUNT, default=0, show_default=True,
                      envvar="JANITOR_KEEP_DAILY", show_envvar=True, metavar="D",
                      help="Also keep the newest complete step of each of the last D days (UTC)."),
        strict.option("--keep-interval", type=strict.EVERY_COUNT, default=None,
                      envvar="JANITOR_KEEP_INTERVAL", show_envvar=True,
                      help="Also keep the newest COUNT complete multiples of N (bounded, unlike "
                           "--interval-to-keep)."),
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
        strict.option("--layout", type=click.Choice(list(layouts.NAMES)), default="step",
                      show_default=True, envvar="JANITOR_LAYOUT", show_envvar=True,
                      help="How the trainer names and completes its steps (docs/layouts.md): "
                           "step is this project's protocol; auto detects it per directory."),
        strict.option("--layout-file", type=strict.FILE_PATH, default=None,
                      envvar="JANITOR_LAYOUT_FILE", show_envvar=True, metavar="PATH",
                      help="A layout of your own, from a TOML file (docs/layouts.md)."),
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


def budget_options(command: F) -> F:
    """--max-bytes, --min-free and --pressure: watched and reported; with --pressure relieve,
    steps kept only by soft rules may go, never one a hard rule keeps."""
    command = strict.option(
        "--pressure", type=click.Choice(["alert", "relieve"]), default="alert",
        show_default=True, envvar="JANITOR_PRESSURE", show_envvar=True,
        help="Over --max-bytes or short of --min-free: only say so (alert), or also delete "
             "steps kept only by soft rules (--keep-last beyond the newest, --keep-within, "
             "-hourly, -daily, -interval), oldest first, until 5% under --max-bytes and 5% of "
             "--min-free above it (relieve); never a step a hard rule keeps.",
    )(command)
    command = strict.option(
        "--min-free", type=strict.MIN_FREE, default=None, envvar="JANITOR_MIN_FREE",
        show_envvar=True,
        help="Free space each filesystem should keep (50G, or 10% of it): said when it is not, "
             "in the log, status and metrics; see --pressure.",
    )(command)
    return strict.option(
        "--max-bytes", type=strict.BYTE_SIZE, default=None, envvar="JANITOR_MAX_BYTES",
        show_envvar=True,
        help="Bytes one managed directory should hold at most (steps and trash; 500G, 2T): "
             "said when it holds more; see --pressure.",
    )(command)


def build_budget(kwargs: dict[str, Any]) -> Budget:
    """The Budget of --max-bytes and --min-free (popped from the parsed options)."""
    free: Budget | None = kwargs.pop("min_free")
    budget = Budget(kwargs.pop("max_bytes"), free.min_free_bytes if free else None,
                    free.min_free_fraction if free else None, kwargs.pop("pressure"))
    if budget.pressure == "relieve" and not budget.relieves:
        raise click.UsageError("--pressure relieve needs --max-bytes or --min-free (what it "
                               "relieves); give one, or leave --pressure out")
    return budget


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
    """The Policy and ScanOptions from parsed options; a bad combination is a usage error.

    The layout gives the completion files and the progress source unless --complete-marker or
    --progress is given; with `auto` each directory's detected layout gives them."""
    markers = tuple(kwargs.pop("complete_markers"))  # each checked by strict.MARKER
    try:
        policy = Policy(gated=kwargs.pop("gate"), interval_to_keep=kwargs.pop("interval_to_keep"),
                        keep_last=kwargs.pop("keep_last"),
                        partial_grace_s=kwargs.pop("partial_grace"),
                        progress=kwargs.pop("progress"),
                        keep_within_s=kwargs.pop("keep_within"),
                        keep_hourly=kwargs.pop("keep_hourly"),
                        keep_daily=kwargs.pop("keep_daily"),
                        keep_interval=kwargs.pop("keep_interval"))
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None
    layout = _layout(kwargs.pop("layout"), kwargs.pop("layout_file"))
    markers_given, progress_given = _given("complete_markers"), _given("progress")
    if layout.name == layouts.AUTO:
        if markers_given:
            raise click.UsageError("--complete-marker cannot be combined with --layout auto "
                                   "(each detected layout has its own); name the layout")
        options = ScanOptions(complete_markers=(), layout=layout,
                              receiver_ready=policy.progress == "receiver-ready",
                              progress_from_layout=not progress_given)
        return policy, options
    options, policy = for_layout(layout, ScanOptions(), policy,
                                 markers=markers if markers_given else None,
                                 progress=policy.progress if progress_given else None)
    return policy, options


def _layout(name: str, path: str | None) -> Layout:
    if path is None:
        return layouts.BUILT_IN.get(name, layouts.AUTO_LAYOUT)
    if _given("layout"):
        raise click.UsageError("give --layout or --layout-file, not both")
    try:
        return layout_file.load(path)
    except layout_file.LayoutFileError as exc:
        raise click.UsageError(f"--layout-file {protocol.printable(path)}: {exc}") from None


def _given(name: str) -> bool:
    """Whether the option `name` came from the command line or the environment."""
    ctx = click.get_current_context(silent=True)
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return ctx is not None and ctx.get_parameter_source(name) in sources


def problem_line(line: str) -> None:
    """One problem, one line on stderr, whatever names it holds (printable is idempotent)."""
    click.echo(f"janitor: {protocol.printable(line)}", err=True)



# The options that make up a policy: given explicitly, they replace a running janitor's recorded
# one in `status` and `explain`.
_POLICY_PARAMS = ("interval_to_keep", "keep_last", "gate", "complete_markers", "progress",
                  "partial_grace", "layout", "layout_file", "keep_within", "keep_hourly",
                  "keep_daily", "keep_interval")


def policy_given(ctx: click.Context) -> bool:
    """Whether any policy option came from the command line or the environment (not a default):
    then the plan is made with it instead of the running janitor's recorded policy."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return any(ctx.get_parameter_source(name) in given for name in _POLICY_PARAMS)
