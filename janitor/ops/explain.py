"""`janitor explain PATH/step_N`: every rule of the policy for one step, with the values that
decided each, and the decision the janitor makes (read-only, like `janitor status`).

The plan is made the way status makes it: with the running janitor's recorded policy unless
policy flags were given (ops.recorded), over a fresh scan of the whole directory with every pin
read (ops.pinned), the step itself read in depth (its children's times and its pin). The rules
are `policy.rules_for`, whose first applying rule is `policy.decide`'s reason. With
`--pressure relieve` and a budget, the plan is the one a sweep would execute (ops.relief), the
directory taken as alone on its filesystem.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from janitor import exitcodes, protocol
from janitor.budget import NO_BUDGET, Budget
from janitor.fs import lock, reserved
from janitor.fs.pins import PinError, open_step
from janitor.fs.scan import deepen
from janitor.layouts import NAMES
from janitor.model import ScanOptions
from janitor.ops.managed import ManagedDirectory
from janitor.ops.pinned import look_pinned
from janitor.ops.recorded import Choice, choose
from janitor.ops.relief import relieved
from janitor.policy import Decision, Policy, Reason, Rule, graph_of, planned, rules_for

# The version of `janitor explain --json`'s document: raised when a field changes meaning.
EXPLAIN_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Explanation:
    """What `janitor explain` shows for one step: the rules (none for a foreign entry) and the
    decision, or why the janitor never touches it."""

    path: str
    directory: str
    name: str
    step: int
    choice: Choice
    held: bool
    holder: dict[str, object] | None
    rules: tuple[Rule, ...]
    decision: Decision | None
    foreign: str | None = None  # why the entry is foreign (never touched), if it is
    relieved: tuple[int, ...] = ()  # the steps --pressure relieve deletes here


def explain(path: str, policy: Policy, options: ScanOptions, *, explicit: bool,
            budget: Budget = NO_BUDGET) -> Explanation:
    """The explanation of the step at `path`; PinError (one line, an exit code) when the path is
    not a step of a managed directory or cannot be read."""
    own = () if options.layout.name in NAMES else (options.layout,)  # a --layout-file's
    with open_step(path, own) as step:
        directory = os.path.realpath(_parent(path))
        parent = os.path.basename(directory)
        if protocol.looks_like_step(parent) or parent.startswith(".janitor-"):
            raise PinError(exitcodes.USAGE, f"{step.shown}: not in a managed directory "
                                            f"({protocol.printable(directory)} is a step or the "
                                            "janitor's own directory, which no janitor manages "
                                            "steps in)")
        try:
            return _explain(step.name, step.number, directory, policy, options, explicit,
                            step.parent_fd, budget)
        except PinError:
            raise
        except reserved.UnsafeObjectError as exc:
            raise PinError(exitcodes.REFUSED, f"{protocol.printable(directory)}: "
                                              f"{exc.strerror}") from None
        except OSError as exc:
            raise PinError(exitcodes.ERROR, f"{protocol.printable(directory)}: "
                                            f"{exc.strerror or exc}; run as a user who can read "
                                            "it") from None


def _parent(path: str) -> str:
    head = path.rpartition("/")[0]
    return head or ("/" if path.startswith("/") else ".")


def _explain(name: str, number: int, directory: str, policy: Policy, options: ScanOptions,
             explicit: bool, parent_fd: int, budget: Budget) -> Explanation:
    shown = protocol.printable(os.path.join(directory, name))
    with ManagedDirectory(directory, dry_run=True, policy=policy, options=options) as managed:
        if not _same_directory(managed.fd, parent_fd):
            raise PinError(exitcodes.ERROR, f"{shown}: its directory was replaced while it was "
                                            "being read; try again")
        held, holder = lock.inspect(managed.fd)
        choice = choose(policy, options, holder if held else None, explicit, held=held)
        if choice.source == "holder":  # else: as opened (with auto: the detected layout)
            managed.policy, managed.options = choice.policy, choice.options
        policy, options = managed.policy, managed.options
        snapshot, _ = look_pinned(managed)
        snapshot = deepen(managed.fd, snapshot, frozenset({name}), options)
        decided, context, complete = planned(snapshot, policy)
        chosen: frozenset[int] = frozenset()
        if budget.relieves:
            snapshot, relief = relieved(managed, snapshot, decided, budget, {})
            chosen = frozenset(d.entry.number for d in relief.decisions
                               if d.reason is Reason.RELIEVED and d.entry.number is not None)
            decided, context, complete = planned(snapshot, policy, chosen)
    bare = Explanation(shown, protocol.printable(directory), name, number, choice, held, holder,
                       rules=(), decision=None, relieved=tuple(sorted(chosen)))
    foreign = next((f for f in snapshot.foreign if f.name == name), None)
    if foreign is not None:
        return dataclasses.replace(bare, foreign=foreign.reason)
    decision = next((d for d in decided.decisions if d.entry.name == name), None)
    if decision is None:
        raise PinError(exitcodes.USAGE, f"{shown} does not exist (gone while it was being "
                                        "read); check the path")
    kept = {d.entry.number for d in decided.decisions if not d.delete}
    needed_by = sorted(n for n in graph_of(snapshot.entries).dependents(number) if n in kept)
    rules = rules_for(decision.entry, policy, context, complete_desc=complete,
                      consumers=snapshot.consumers,
                      complete_markers=options.complete_markers, needed_by=needed_by)
    return dataclasses.replace(bare, rules=tuple(rules), decision=decision)


def _same_directory(fd: int, other: int) -> bool:
    a, b = os.fstat(fd), os.fstat(other)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def as_json(explanation: Explanation) -> dict[str, object]:
    """The document `janitor explain --json` prints."""
    e = explanation
    return {
        "schema": EXPLAIN_SCHEMA,
        "path": e.path,
        "directory": e.directory,
        "step": e.step,
        "policy": str(e.choice.policy),
        "complete_markers": [protocol.printable(m) for m in e.choice.options.complete_markers],
        "policy_source": e.choice.source,
        "policy_warning": e.choice.warning,
        "daemon": {"running": e.held, **(e.holder or {})},
        "foreign": e.foreign,
        "rules": [{"name": r.name, "applies": r.applies, "detail": r.detail,
                   "verdict": "delete" if r.delete else "keep"} for r in e.rules],
        "decision": None if e.decision is None else {
            "action": e.decision.action, "reason": e.decision.reason.value},
        "relieved": list(e.relieved),
    }


def as_text(explanation: Explanation) -> list[str]:
    """The lines a person reads: the decision, the policy, then one line per rule."""
    e = explanation
    source = {"holder": "the running janitor's", "flags": "from the flags given",
              "defaults": "the defaults"}[e.choice.source]
    markers = " or ".join(map(protocol.printable, e.choice.options.complete_markers))
    if e.decision is None:
        head = f"{e.path}: foreign, never touched ({e.foreign})"
    else:
        head = f"{e.path}: {e.decision.action} ({e.decision.reason.value})"
    lines = [head, f"  policy:  {e.choice.policy}; complete when {markers} ({source})"]
    if e.choice.warning:
        lines.append(f"  warning: {e.choice.warning}")
    if e.relieved:
        lines.append("  relieve:  --pressure relieve deletes " +
                     ", ".join(f"step {n}" for n in e.relieved) + " here (oldest soft-kept first)")
    width = max((len(r.name) for r in e.rules), default=0)
    decided = False
    for rule in e.rules:
        mark = "applies" if rule.applies else "-"
        note = ""
        if rule.applies and not decided:
            decided, note = True, "   <- decides"
        lines.append(f"  {mark:<7}  {rule.name:<{width}}  {rule.detail}{note}")
    if e.decision is not None:
        lines.append(f"decision: {e.decision.action}, reason {e.decision.reason.value}")
    return lines
