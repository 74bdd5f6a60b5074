"""The retention policy: a pure plan from a Snapshot to one Decision, with its reason, per entry.

`plan` does no I/O and reads no clock: the snapshot carries the scan time. Dry-run, sweep output,
logs, metrics and the daemon all print or execute this same result. The Reason strings are the
project's vocabulary; the README's table of reasons explains each one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from janitor import dependencies
from janitor.dependencies import EdgeMap, Graph
from janitor.layouts import Layout
from janitor.model import Consumer, Entry, Pointer, ScanOptions, Snapshot
from janitor.protocol import printable
from janitor.retention import NO_SOFT_KEEPS, ORDER, SoftKeeps, SoftRules, soft_keeps


class Reason(StrEnum):
    """Why an entry is kept or deleted. The first rule that matches decides."""

    PINNED = "pinned"
    NO_VALID_MARKER = "no-valid-marker"
    POINTED_TO = "pointed-to"  # a trainer's tracker or best pointer names it (janitor.layouts)
    INTERVAL_MULTIPLE = "interval-multiple"
    NEWEST_COMPLETE = "newest-complete"
    IN_PROGRESS = "in-progress"
    DEPENDENCY_PROBLEM = "dependency-problem"  # its dependency file cannot be read (kept)
    DEPENDED_ON = "depended-on"  # a kept step needs it (janitor.dependencies), transitively
    KEEP_LAST = "keep-last"
    KEEP_WITHIN = "keep-within"  # the soft rules (janitor.retention)
    KEEP_HOURLY = "keep-hourly"
    KEEP_DAILY = "keep-daily"
    KEEP_INTERVAL = "keep-interval"
    AT_OR_ABOVE_LOADED = "at-or-above-loaded"
    CHANGED_AFTER_MARKER = "changed-after-marker"
    # Deletions:
    SUPERSEDED = "superseded"
    ABANDONED_PARTIAL = "abandoned-partial"
    ABANDONED_STAGING = "abandoned-staging"
    RELIEVED = "relieved"  # kept only by a soft rule, deleted under --pressure relieve


DELETE_REASONS = frozenset({Reason.SUPERSEDED, Reason.ABANDONED_PARTIAL, Reason.ABANDONED_STAGING,
                            Reason.RELIEVED})
# The rules pressure may override (--pressure relieve); every other keep reason is hard.
SOFT_REASONS = frozenset({Reason.KEEP_LAST, Reason.KEEP_WITHIN, Reason.KEEP_HOURLY,
                          Reason.KEEP_DAILY, Reason.KEEP_INTERVAL})
# The decisions `depended-on` comes before: a step so decided that a kept step needs is kept
# as depended-on instead (every other rule decides before it, and keeps anyway).
YIELDS_TO_DEPENDENCY = DELETE_REASONS | SOFT_REASONS | {Reason.AT_OR_ABOVE_LOADED,
                                                        Reason.CHANGED_AFTER_MARKER}

# One year: the longest grace any option accepts (janitor.cli.options); a policy read back from a
# lock file is held to the same bound, so no recorded value can overflow the plan's arithmetic.
MAX_PARTIAL_GRACE_S = 365 * 24 * 3600
MAX_KEEP_WITHIN_S = 10 * 365 * 24 * 3600
MAX_SOFT_COUNT = 100_000
MAX_STEP = 10**19 - 1

ProgressSource = Literal["loaded-step", "receiver-ready"]


class PolicyError(ValueError):
    """A policy that is refused before it can run (e.g. one that could delete every step)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of retention. Validated on construction: a bad policy never runs."""

    gated: bool = True
    interval_to_keep: int | None = None
    keep_last: int = 1
    # An incomplete step or a staging directory changed within this many seconds may still be
    # being written (by another rank, or a slow writer): it is in progress, not abandoned.
    partial_grace_s: float = 600.0
    progress: ProgressSource = "loaded-step"
    # The soft rules (janitor.retention): they keep more, never less.
    keep_within_s: float | None = None
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_interval: tuple[int, int] | None = None  # (N, COUNT): the newest COUNT multiples of N

    def __post_init__(self) -> None:
        if self.interval_to_keep is not None and (
            isinstance(self.interval_to_keep, bool) or self.interval_to_keep < 1
        ):
            raise PolicyError(
                f"--interval-to-keep must be a whole number >= 1, got {self.interval_to_keep}; "
                "leave it out to keep no multiples"
            )
        if self.keep_last < 1:
            raise PolicyError(
                f"--keep-last must be >= 1, got {self.keep_last}: a policy that may delete "
                "every complete step is refused"
            )
        if not (math.isfinite(self.partial_grace_s)
                and 0 <= self.partial_grace_s <= MAX_PARTIAL_GRACE_S):
            raise PolicyError(f"--partial-grace must be 0..{MAX_PARTIAL_GRACE_S} seconds, "
                              f"got {self.partial_grace_s}")
        if self.progress not in ("loaded-step", "receiver-ready"):
            raise PolicyError(f"unknown progress source {self.progress!r}")
        within = self.keep_within_s
        if within is not None and not (math.isfinite(within) and 0 < within <= MAX_KEEP_WITHIN_S):
            raise PolicyError(f"--keep-within must be 1s..{MAX_KEEP_WITHIN_S // 86400}d, "
                              f"got {within} s")
        for flag, value in (("--keep-hourly", self.keep_hourly), ("--keep-daily", self.keep_daily)):
            if isinstance(value, bool) or not 0 <= value <= MAX_SOFT_COUNT:
                raise PolicyError(f"{flag} must be 0..{MAX_SOFT_COUNT}, got {value}")
        if self.keep_interval is not None:
            every, count = self.keep_interval
            if not (1 <= every <= MAX_STEP and 1 <= count <= MAX_SOFT_COUNT):
                raise PolicyError(f"--keep-interval N:COUNT needs N >= 1 and COUNT "
                                  f"1..{MAX_SOFT_COUNT}, got {every}:{count}")

    @property
    def soft(self) -> SoftRules:
        within = self.keep_within_s
        return SoftRules(None if within is None else int(within * 1e9), self.keep_hourly,
                         self.keep_daily, self.keep_interval)

    def describe(self) -> dict[str, object]:
        """A plain dict of the policy, for the lock file, logs and JSON output."""
        return {
            "gated": self.gated,
            "interval_to_keep": self.interval_to_keep,
            "keep_last": self.keep_last,
            "partial_grace_s": self.partial_grace_s,
            "progress": self.progress,
            "keep_within_s": self.keep_within_s,
            "keep_hourly": self.keep_hourly,
            "keep_daily": self.keep_daily,
            "keep_interval": None if self.keep_interval is None else list(self.keep_interval),
        }

    def __str__(self) -> str:
        """The policy in one line, in the words of the command-line flags (status, logs)."""
        parts = ["gated by LOADED_STEP" if self.progress == "loaded-step" and self.gated
                 else "gated by .receiver_ready" if self.gated else "not gated (--no-gate)"]
        if self.interval_to_keep is not None:
            parts.append(f"--interval-to-keep {self.interval_to_keep}")
        parts.append(f"--keep-last {self.keep_last}")
        if self.keep_within_s is not None:
            parts.append(f"--keep-within {self.keep_within_s:g}s")
        if self.keep_hourly:
            parts.append(f"--keep-hourly {self.keep_hourly}")
        if self.keep_daily:
            parts.append(f"--keep-daily {self.keep_daily}")
        if self.keep_interval is not None:
            parts.append(f"--keep-interval {self.keep_interval[0]}:{self.keep_interval[1]}")
        parts.append(f"--partial-grace {self.partial_grace_s:g}")
        return ", ".join(parts)

    @classmethod
    def from_description(cls, record: object) -> Policy:
        """The policy a `describe()` dict names (read back from a lock file); PolicyError when
        it is not one, so a damaged record is never taken for a policy."""
        if not isinstance(record, dict):
            raise PolicyError("the recorded policy is not an object")
        fields: dict[str, type | tuple[type, ...]] = {
            "gated": bool, "keep_last": int, "partial_grace_s": (int, float), "progress": str}
        for key, kind in fields.items():
            value = record.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise PolicyError(f"the recorded policy has no valid {key!r}")
        interval = record.get("interval_to_keep")
        if interval is not None and (not isinstance(interval, int) or isinstance(interval, bool)):
            raise PolicyError("the recorded policy has no valid 'interval_to_keep'")
        grace = float(record["partial_grace_s"])
        if not math.isfinite(grace):
            raise PolicyError("the recorded policy has no valid 'partial_grace_s'")
        progress = record["progress"]
        if progress not in ("loaded-step", "receiver-ready"):
            raise PolicyError(f"the recorded policy has an unknown progress {progress!r}")
        return cls(gated=record["gated"], interval_to_keep=interval,
                   keep_last=record["keep_last"], partial_grace_s=grace, progress=progress,
                   **_recorded_soft(record))


def _recorded_soft(record: dict[str, object]) -> dict[str, Any]:
    """The soft rules of a recorded policy (absent in a record of an older janitor: none)."""
    within = record.get("keep_within_s")
    hourly, daily = record.get("keep_hourly", 0), record.get("keep_daily", 0)
    interval = record.get("keep_interval")
    if within is not None and (isinstance(within, bool) or not isinstance(within, int | float)):
        raise PolicyError("the recorded policy has no valid 'keep_within_s'")
    for key, value in (("keep_hourly", hourly), ("keep_daily", daily)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"the recorded policy has no valid {key!r}")
    if interval is not None and not (isinstance(interval, list) and len(interval) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in interval)):
        raise PolicyError("the recorded policy has no valid 'keep_interval'")
    return {"keep_within_s": None if within is None else float(within), "keep_hourly": hourly,
            "keep_daily": daily, "keep_interval": None if interval is None else tuple(interval)}


def for_layout(layout: Layout, options: ScanOptions, policy: Policy, *,
               markers: tuple[str, ...] | None = None,
               progress: ProgressSource | None = None) -> tuple[ScanOptions, Policy]:
    """The options and policy for one layout: its completion files unless `markers` (the
    --complete-marker flags) are given, its progress source unless `progress` is."""
    source = progress or layout.progress
    chosen = replace(policy, progress=source) if policy.gated else policy
    return replace(options, layout=layout, complete_markers=markers or layout.complete,
                   receiver_ready=chosen.progress == "receiver-ready"), chosen


@dataclass(frozen=True, slots=True)
class Decision:
    entry: Entry
    delete: bool
    reason: Reason

    @property
    def action(self) -> str:
        return "delete" if self.delete else "keep"


@dataclass(frozen=True, slots=True)
class Progress:
    """How far every consumer has loaded, and since when (the license for deleting below it)."""

    loaded_step: int | None
    marker_ns: int | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    decisions: tuple[Decision, ...]
    progress: Progress
    newest_complete: int | None

    @property
    def doomed(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.delete)

    @property
    def halted(self) -> str | None:
        """Why nothing in this directory may be deleted, if so."""
        return self.progress.problem


@dataclass(frozen=True, slots=True)
class Context:
    """The facts about a whole directory that every one decision reads: how far consumers have
    loaded, the newest complete step, the `keep_last` newest complete steps, and the cut-off
    for "changed recently". `plan` derives it from a snapshot in one pass; the daemon's
    directory index derives the same from its ordered step numbers without visiting every
    step, then decides only the entries that can be doomed (`decide` is the one rule)."""

    progress: Progress
    newest_complete: int | None
    kept_last: frozenset[int]
    recent_ns: int
    # The steps a trainer's pointer files name (kept), and the highest step a tracker says
    # is complete (every step at or below it is, whatever completion files it holds).
    pointed: frozenset[int] = frozenset()
    complete_through: int | None = None
    # The complete steps the soft rules keep, each with every soft rule keeping it.
    soft: SoftKeeps = NO_SOFT_KEEPS
    # Under --pressure relieve: the soft-kept steps chosen to go (oldest first, see relieve).
    relieve: frozenset[int] = frozenset()
    # The steps a kept step depends on, directly or through others (`settle` finds them).
    held: frozenset[int] = frozenset()

    def complete(self, entry: Entry) -> bool:
        """Whether a step counts as complete: a completion file, or at or below a tracker."""
        through = self.complete_through
        return entry.complete or (through is not None and entry.number is not None
                                  and entry.number <= through)


def read_progress(snapshot: Snapshot, policy: Policy) -> Progress:
    """The effective loaded step: the minimum over consumers, or a reason to delete nothing."""
    newest = max((e.number for e in snapshot.steps if e.number is not None), default=None)
    ready = [e for e in snapshot.steps if e.receiver_ready_ns is not None]
    newest_ready = max(ready, key=lambda e: e.number or 0) if ready else None
    return progress_of(snapshot.consumers, newest, newest_ready, policy)


def progress_of(consumers: Sequence[Consumer], newest_step: int | None,
                newest_ready: Entry | None, policy: Policy) -> Progress:
    """`read_progress` from the few facts it needs: the consumer markers, the newest step
    number, and the newest step holding a `.receiver_ready` sentinel."""
    if not policy.gated:
        return Progress(None, None, None)
    if policy.progress == "receiver-ready":
        if newest_ready is None:
            return Progress(None, None, "no step holds a .receiver_ready sentinel")
        return Progress(newest_ready.number, newest_ready.receiver_ready_ns, None)
    return _marker_progress(consumers, newest_step)


def _marker_progress(consumers: Sequence[Consumer], newest: int | None) -> Progress:
    """Every consumer must be valid and none beyond the newest step (invariant 5): a stale
    `LOADED_STEP.eval=99` left from another run halts the directory even when another consumer
    is lower, since the tree it describes is not this one."""
    if not consumers:
        return Progress(None, None, "no LOADED_STEP marker")
    bad = [c for c in consumers if c.problem is not None]
    if bad:
        first = bad[0]
        return Progress(None, None, f"{printable(first.filename)}: {first.problem}")
    steps = [c.step for c in consumers if c.step is not None]
    beyond = [c for c in consumers if c.step is not None and newest is not None
              and c.step > newest]
    if beyond:
        first = beyond[0]
        return Progress(None, None, f"{printable(first.filename)}: loaded step {first.step} is "
                        f"beyond the newest step {newest} (a marker left from another run?)")
    # The licence is the earliest of every marker's conservative write time (invariant 4).
    return Progress(min(steps), min(c.licence_ns for c in consumers), None)


def context_of(progress: Progress, complete_desc: Sequence[int], scanned_ns: int,
               policy: Policy, pointers: PointerFacts | None = None,
               soft: SoftKeeps | None = None) -> Context:
    """The Context from the progress, the complete step numbers, newest first (only the first
    `keep_last` are read; with a tracker, every step at or below it counts), and what the
    pointer files say (a pointer problem halts the directory as a marker problem does)."""
    facts = pointers or PointerFacts()
    if facts.problem is not None and progress.problem is None:
        progress = Progress(progress.loaded_step, progress.marker_ns, facts.problem)
    top = complete_desc[: policy.keep_last]
    return Context(progress, top[0] if top else None, frozenset(top),
                   scanned_ns - int(policy.partial_grace_s * 1e9), facts.pointed,
                   facts.complete_through, soft or NO_SOFT_KEEPS)


@dataclass(frozen=True, slots=True)
class PointerFacts:
    """What a directory's pointer files say, checked against the steps it holds."""

    pointed: frozenset[int] = frozenset()
    complete_through: int | None = None
    problem: str | None = None


def pointer_facts(pointers: Sequence[Pointer], holds: Callable[[int], bool]) -> PointerFacts:
    """The steps pointed at and the tracker's complete-through step; a pointer that names
    nothing usable, or a step the directory does not hold (`holds`), is a problem: then nothing
    is deleted, since the trainer's idea of this directory is not what is on disk."""
    pointed: set[int] = set()
    through: int | None = None
    for pointer in pointers:
        if pointer.problem is not None:
            return PointerFacts(problem=f"{printable(pointer.filename)}: {pointer.problem}")
        step = pointer.step
        if step is None:
            continue
        if not holds(step):
            return PointerFacts(problem=f"{printable(pointer.filename)} names step {step}, "
                                        "which is not here")
        pointed.add(step)
        if pointer.complete_through:
            through = step if through is None else max(through, step)
    return PointerFacts(frozenset(pointed), through)


def snapshot_context(snapshot: Snapshot, policy: Policy) -> tuple[Context, list[int]]:
    """The Context of a whole snapshot, and its complete step numbers, newest first."""
    numbers = {e.number for e in snapshot.steps}
    facts = pointer_facts(snapshot.pointers, numbers.__contains__)
    through = facts.complete_through
    done = sorted(((e.number, e.changed_ns) for e in snapshot.steps if e.number is not None and (
        e.complete or (through is not None and e.number <= through))), reverse=True)
    complete = [number for number, _ in done]
    soft = soft_keeps(done, policy.soft, snapshot.scanned_ns)
    return context_of(read_progress(snapshot, policy), complete, snapshot.scanned_ns, policy,
                      facts, soft), complete


def plan(snapshot: Snapshot, policy: Policy, relieved: frozenset[int] = frozenset()) -> Plan:
    """Decide keep or delete, with the rule that decided, for every entry of the snapshot
    (`relieved`: the soft-kept steps --pressure relieve chose to delete, see `relieve`)."""
    return planned(snapshot, policy, relieved)[0]


def planned(snapshot: Snapshot, policy: Policy,
            relieved: frozenset[int] = frozenset()) -> tuple[Plan, Context, list[int]]:
    """`plan`, with the Context it decided in and the complete step numbers, newest first
    (what `rules_for` explains a decision with)."""
    context, complete = snapshot_context(snapshot, policy)
    if relieved:
        context = replace(context, relieve=relieved)
    decisions, context = settle(snapshot.entries, policy, context, graph_of(snapshot.entries))
    return Plan(tuple(decisions), context.progress, context.newest_complete), context, complete


def graph_of(entries: Sequence[Entry]) -> EdgeMap:
    """The dependency edges of a whole snapshot's steps."""
    return EdgeMap((e.number, e.depends) for e in entries if e.number is not None)


def dependency_notes(decisions: Sequence[Decision]) -> list[str]:
    """What a person should hear about a whole plan's dependencies, a line each: the steps kept
    because their dependency file cannot be read, dependencies that are not here, a cycle."""
    lines = [f"{printable(d.entry.name)}: kept ({d.reason.value}): {d.entry.depends_problem}"
             for d in decisions if d.reason is Reason.DEPENDENCY_PROBLEM]
    entries = [d.entry for d in decisions]
    steps = [e.number for e in entries if e.number is not None and e.depends]
    if steps:
        lines.extend(n.text for n in dependencies.notes(steps, graph_of(entries), whole=True))
    return lines


def settle(entries: Sequence[Entry], policy: Policy, context: Context,
           graph: Graph) -> tuple[list[Decision], Context]:
    """Decide `entries`, then keep as `depended-on` what a kept step needs (transitively): the
    Context's `held`. `entries` are every step a pass may delete (the rest are kept by rules that
    come first); `graph` holds the edges of every step present, kept or not. With no edge at
    all, one decision per entry, as before dependencies existed."""
    context = replace(context, held=frozenset())
    decisions = [decide(e, policy, context) for e in entries]
    if not graph.has_edges or context.progress.problem is not None:
        return decisions, context
    doomed = {d.entry.number for d in decisions if d.delete}
    starts = [d.entry.number for d in decisions
              if d.entry.number is not None and d.reason in YIELDS_TO_DEPENDENCY]
    held = dependencies.held(starts, lambda step: step not in doomed, graph.dependents,
                             graph.depends, graph.present)
    if not held:
        return decisions, context
    context = replace(context, held=frozenset(held))
    return [decide(d.entry, policy, context) if d.entry.number in held else d
            for d in decisions], context


def decide(entry: Entry, policy: Policy, context: Context) -> Decision:
    """Keep or delete one entry, and the first rule that decided."""
    reason = _keep_reason(entry, policy, context)
    if reason is not None:
        if (reason in SOFT_REASONS and entry.number in context.relieve
                and gate_allows(entry, policy, context)):
            return Decision(entry, delete=True, reason=Reason.RELIEVED)
        return Decision(entry, delete=False, reason=reason)
    if entry.staging:
        return Decision(entry, delete=True, reason=Reason.ABANDONED_STAGING)
    if context.complete(entry):
        return Decision(entry, delete=True, reason=Reason.SUPERSEDED)
    return Decision(entry, delete=True, reason=Reason.ABANDONED_PARTIAL)


def gate_allows(entry: Entry, policy: Policy, context: Context) -> bool:
    """Whether the consumer gate would let this step go: below the loaded step and unchanged
    since the marker that licenses it (or no gate). Pressure never overrides it."""
    if not policy.gated:
        return True
    progress, number = context.progress, entry.number
    return (progress.problem is None and progress.loaded_step is not None and number is not None
            and number < progress.loaded_step and progress.marker_ns is not None
            and entry.changed_ns < progress.marker_ns)


def relieve(decisions: Sequence[Decision], policy: Policy, context: Context,
            sizes: Callable[[str], int], deficit: int) -> frozenset[int]:
    """The steps --pressure relieve deletes to free `deficit` bytes: those kept only by a soft
    rule that the gate would let go, oldest first, until enough (or none is left)."""
    chosen: set[int] = set()
    freed = 0
    soft = sorted((d for d in decisions if not d.delete and d.reason in SOFT_REASONS
                   and d.entry.number is not None and gate_allows(d.entry, policy, context)),
                  key=lambda d: d.entry.number or 0)
    for decision in soft:
        if freed >= deficit:
            break
        assert decision.entry.number is not None
        chosen.add(decision.entry.number)
        freed += sizes(decision.entry.name)
    return frozenset(chosen)


def _keep_reason(entry: Entry, policy: Policy, context: Context) -> Reason | None:
    progress, newest_complete = context.progress, context.newest_complete
    recent_ns = context.recent_ns
    number = entry.number
    if entry.pinned:
        return Reason.PINNED
    if progress.problem is not None:
        return Reason.NO_VALID_MARKER
    if number is not None and number in context.pointed:
        return Reason.POINTED_TO
    if number is None:  # a staging directory: no step yet, only its age matters
        return Reason.IN_PROGRESS if entry.changed_ns > recent_ns else None
    if policy.interval_to_keep is not None and number % policy.interval_to_keep == 0:
        return Reason.INTERVAL_MULTIPLE
    if number == newest_complete:
        return Reason.NEWEST_COMPLETE
    complete = context.complete(entry)
    if not complete and (newest_complete is None or number > newest_complete
                         or entry.changed_ns > recent_ns):
        return Reason.IN_PROGRESS
    if complete and entry.depends_problem is not None:
        return Reason.DEPENDENCY_PROBLEM
    if number in context.held:
        return Reason.DEPENDED_ON
    return _soft_or_gate_reason(entry, number, policy, context)


def _soft_or_gate_reason(entry: Entry, number: int, policy: Policy,
                         context: Context) -> Reason | None:
    """The soft rules, then the consumer gate: the last rules before a deletion."""
    if number in context.kept_last:
        return Reason.KEEP_LAST
    soft = context.soft.kept.get(number)
    if soft:
        return Reason(soft[0])
    progress = context.progress
    if policy.gated:
        if progress.loaded_step is None or number >= progress.loaded_step:
            return Reason.AT_OR_ABOVE_LOADED
        # Equal timestamps cannot be ordered (filesystem clocks tick coarsely): keep.
        if progress.marker_ns is None or entry.changed_ns >= progress.marker_ns:
            return Reason.CHANGED_AFTER_MARKER
    return None


# ---- every rule, for `janitor explain` ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    """One of `decide`'s rules judged on its own for one entry: whether it applies, the values
    that say so, and the reason it gives. Rules come in `decide`'s order and the first that
    applies is the decision (`decide` returns its verdict; a property test holds the two
    together). The last rule (a deletion) always applies."""

    name: str
    applies: bool
    detail: str
    verdict: Reason

    @property
    def delete(self) -> bool:
        return self.verdict in DELETE_REASONS


def rules_for(entry: Entry, policy: Policy, context: Context, *,
              complete_desc: Sequence[int] | None = None, consumers: Sequence[Consumer] = (),
              complete_markers: Sequence[str] = (), needed_by: Sequence[int] = ()) -> list[Rule]:
    """Every rule of `decide` for `entry`, each judged whatever the others say, with the values
    that decided it. The optional facts only make the details richer: `complete_desc` (the
    complete step numbers, newest first) gives a step's rank, `consumers` the markers the loaded
    step came from, `complete_markers` the names a complete step holds, `needed_by` the kept
    steps that depend on it directly."""
    number, progress = entry.number, context.progress
    grace_ns = int(policy.partial_grace_s * 1e9)
    age_s = (context.recent_ns + grace_ns - entry.changed_ns) / 1e9
    recent = entry.changed_ns > context.recent_ns
    markers = " or ".join(map(printable, complete_markers)) or "a completion marker"
    changed = (f"changed {age_s:.1f} s before the scan, "
               f"{'within' if recent else 'beyond'} --partial-grace {policy.partial_grace_s:g}")
    rules = [Rule("pinned", entry.pinned, "holds .janitor-pin" if entry.pinned
                  else "no .janitor-pin", Reason.PINNED),
             Rule("no-valid-marker", progress.problem is not None,
                  _progress_detail(policy, progress, consumers), Reason.NO_VALID_MARKER),
             Rule("pointed-to", number is not None and number in context.pointed,
                  "a trainer's pointer names it" if number in context.pointed else
                  "no pointer names it" if not context.pointed else
                  "the pointers name " + ", ".join(map(str, sorted(context.pointed))),
                  Reason.POINTED_TO)]
    if number is None:
        step_rules = ("interval-multiple", "newest-complete", "dependency-problem",
                      "depended-on", "relieved", "keep-last", *ORDER, "at-or-above-loaded",
                      "changed-after-marker")
        rules.insert(3, Rule("in-progress", recent, f"staging directory {changed}",
                             Reason.IN_PROGRESS))
        rules.extend(Rule(name, False, "a staging directory: no step number", Reason(name))
                     for name in step_rules)
        rules.append(Rule("abandoned-staging", True, "deleted when no rule above applies",
                          Reason.ABANDONED_STAGING))
        # decide's order for a staging directory: pinned, marker, in-progress; the step rules
        # never apply to one, so where they stand does not matter.
        return rules
    newest = context.newest_complete
    interval = policy.interval_to_keep
    rules.append(Rule("interval-multiple", interval is not None and number % interval == 0,
                      "no --interval-to-keep" if interval is None
                      else f"{number} % {interval} = {number % interval}",
                      Reason.INTERVAL_MULTIPLE))
    rules.append(Rule("newest-complete", number == newest,
                      "no complete step here" if newest is None
                      else f"the newest complete step is {newest}", Reason.NEWEST_COMPLETE))
    complete = context.complete(entry)
    if complete and not entry.complete:
        markers = f"{markers}, or at or below the tracker's step {context.complete_through}"
    rules.append(_in_progress(entry, complete, number, newest, recent, markers, changed))
    rules.extend(_dependency_rules(entry, complete, number, context, needed_by))
    rules.append(_relieved_rule(entry, number, policy, context))
    rules.append(Rule("keep-last", number in context.kept_last,
                      _rank(complete, number, policy, complete_desc), Reason.KEEP_LAST))
    rules.extend(_soft_rules(number, policy, context))
    rules.extend(_gate_rules(entry, number, policy, progress, consumers))
    rules.append(Rule("superseded", True, "deleted when no rule above applies (complete)",
                      Reason.SUPERSEDED) if complete else
                 Rule("abandoned-partial", True, "deleted when no rule above applies "
                      "(incomplete)", Reason.ABANDONED_PARTIAL))
    return rules


def _relieved_rule(entry: Entry, number: int, policy: Policy, context: Context) -> Rule:
    """--pressure relieve: a step kept only by soft rules, chosen to go (oldest first) while the
    gate lets it (decide's check, before the soft rules that would keep it)."""
    soft = number in context.kept_last or bool(context.soft.kept.get(number))
    chosen = number in context.relieve
    applies = chosen and soft and gate_allows(entry, policy, context)
    if applies:
        detail = "kept only by a soft rule; chosen by --pressure relieve (the oldest go first)"
    elif chosen:
        detail = "chosen by --pressure relieve, but no soft rule keeps it here"
    elif context.relieve:
        detail = "not among the steps --pressure relieve takes (" + ", ".join(
            f"step {n}" for n in sorted(context.relieve)[:8]) + \
            (", ..." if len(context.relieve) > 8 else "") + ")"
    else:
        detail = "nothing relieved (no --pressure relieve, or under its budget)"
    return Rule("relieved", applies, detail, Reason.RELIEVED)


def _dependency_rules(entry: Entry, complete: bool, number: int, context: Context,
                      needed_by: Sequence[int]) -> list[Rule]:
    """Its own dependency files (unreadable: kept), and whether a kept step needs it."""
    names = ", ".join(f"step {n}" for n in entry.depends)
    if entry.depends_problem is not None:
        own = f"{entry.depends_problem}" + ("" if complete else " (incomplete: not judged)")
    else:
        own = f"depends on {names}" if names else "names no dependency"
    held = number in context.held
    return [Rule("dependency-problem", complete and entry.depends_problem is not None, own,
                 Reason.DEPENDENCY_PROBLEM),
            Rule("depended-on", held, ("kept steps depend on it" if not needed_by else
                                       "needed by " + ", ".join(f"step {n}" for n in needed_by))
                 + " (directly or through others)" if held else "no kept step depends on it",
                 Reason.DEPENDED_ON)]


def _soft_rules(number: int, policy: Policy, context: Context) -> list[Rule]:
    """The soft rules (keep-within, -hourly, -daily, -interval), each judged on its own."""
    kept = context.soft.kept.get(number, ())
    given = {"keep-within": policy.keep_within_s is not None, "keep-hourly": policy.keep_hourly,
             "keep-daily": policy.keep_daily, "keep-interval": policy.keep_interval is not None}
    flag = {"keep-within": f"--keep-within {policy.keep_within_s:g}s"
            if policy.keep_within_s else "", "keep-hourly": f"--keep-hourly {policy.keep_hourly}",
            "keep-daily": f"--keep-daily {policy.keep_daily}",
            "keep-interval": "--keep-interval {}:{}".format(*policy.keep_interval)
            if policy.keep_interval else ""}
    return [Rule(name, name in kept, (f"kept by {flag[name]}" if name in kept else
                                      f"not among those {flag[name]} keeps") if given[name]
                 else f"no --{name}", Reason(name)) for name in ORDER]


def _progress_detail(policy: Policy, progress: Progress, consumers: Sequence[Consumer]) -> str:
    if not policy.gated:
        return "not gated (--no-gate): no marker is read"
    if progress.problem is not None:
        return f"deleting nothing in this directory: {progress.problem}"
    if policy.progress == "receiver-ready":
        return f"the newest .receiver_ready is in step {progress.loaded_step}"
    shown = ", ".join(f"{printable(c.filename)}={c.step}" for c in consumers)
    return f"every marker valid: {shown}" if shown else "every marker valid"


def _in_progress(entry: Entry, complete: bool, number: int, newest: int | None, recent: bool,
                 markers: str, changed: str) -> Rule:
    if complete:
        return Rule("in-progress", False, f"complete (holds {markers})", Reason.IN_PROGRESS)
    if newest is None or number > newest:
        why = ("no complete step here" if newest is None
               else f"newer than the newest complete step {newest}")
        return Rule("in-progress", True, f"incomplete (no {markers}), {why}", Reason.IN_PROGRESS)
    return Rule("in-progress", recent, f"incomplete (no {markers}), older than the newest "
                f"complete step {newest}, {changed}", Reason.IN_PROGRESS)


def _rank(complete: bool, number: int, policy: Policy,
          complete_desc: Sequence[int] | None) -> str:
    keep = f"--keep-last {policy.keep_last}"
    if not complete:
        return f"incomplete: not counted; {keep}"
    if complete_desc is None or number not in complete_desc:
        return keep
    return (f"number {list(complete_desc).index(number) + 1} of {len(complete_desc)} complete "
            f"steps, newest first; {keep}")


def _gate_rules(entry: Entry, number: int, policy: Policy, progress: Progress,
                consumers: Sequence[Consumer]) -> list[Rule]:
    """The consumer gate: at or above the loaded step, or changed after the marker."""
    loaded, marker_ns = progress.loaded_step, progress.marker_ns
    if not policy.gated:
        return [Rule(name, False, "not gated (--no-gate)", Reason(name))
                for name in ("at-or-above-loaded", "changed-after-marker")]
    above = loaded is None or number >= loaded
    source = ""
    if policy.progress == "loaded-step" and len(consumers) > 1 and progress.problem is None:
        source = " (the lowest of " + ", ".join(
            f"{printable(c.filename)}={c.step}" for c in consumers) + ")"
    gate = Rule("at-or-above-loaded", above, "no loaded step" if loaded is None
                else f"step {number} {'>=' if above else '<'} loaded step {loaded}{source}",
                Reason.AT_OR_ABOVE_LOADED)
    if marker_ns is None:
        return [gate, Rule("changed-after-marker", not above,
                           "no marker time: nothing is licensed", Reason.CHANGED_AFTER_MARKER)]
    after = entry.changed_ns >= marker_ns
    times = (f"changed {_when(entry.changed_ns)} {'>=' if after else '<'} marker written "
             f"{_when(marker_ns)}")
    if above:
        times += " (judged only below the loaded step)"
    return [gate, Rule("changed-after-marker", not above and after, times,
                       Reason.CHANGED_AFTER_MARKER)]


def _when(ns: int) -> str:
    """A time in ns since the epoch as UTC ISO 8601, to the nanosecond (ties matter here)."""
    seconds, part = divmod(ns, 1_000_000_000)
    try:
        whole = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds: say it as it is
        return f"{ns} ns since the epoch"
    return f"{whole}.{part:09d}Z"
