"""Which policy a read-only command plans with: the running janitor's, as its lock records it,
or the flags given. `janitor status` and `janitor explain` both show the plan the running janitor
executes, not one made with their own defaults (issue 12, point 1); this is their one choice."""

from __future__ import annotations

from dataclasses import dataclass, replace

from janitor import protocol
from janitor.layouts import BUILT_IN, Layout
from janitor.model import ScanOptions
from janitor.policy import Policy, PolicyError


@dataclass(frozen=True, slots=True)
class Choice:
    """The policy a report plans with, where it came from, and any disagreement."""

    policy: Policy
    options: ScanOptions
    source: str  # "holder", "flags" or "defaults"
    warning: str | None = None


def choose(policy: Policy, options: ScanOptions, holder: dict[str, object] | None,
           explicit: bool, *, held: bool) -> Choice:
    """The running janitor's recorded policy, unless flags were given (then theirs, with a
    warning where the two differ). A record that cannot be read back is said, never guessed."""
    given = Choice(policy, options, "flags" if explicit else "defaults")
    if not held:
        return given
    try:
        recorded, recorded_options = recorded_policy(holder, options.layout)
    except PolicyError as exc:
        return replace(given, warning=f"the running janitor's policy cannot be read from "
                                      f"{protocol.LOCK_FILE} ({exc}); showing the plan for the "
                                      f"{given.source}")
    if not explicit:
        return Choice(recorded, recorded_options, "holder")
    if (recorded, recorded_options) != (policy, options):
        markers = ", ".join(map(protocol.printable, recorded_options.complete_markers))
        return replace(given, warning=f"the flags differ from the running janitor's policy "
                                      f"({recorded}; complete when {markers}); showing the "
                                      "plan for the flags given")
    return given


def recorded_policy(holder: dict[str, object] | None,
                    known: Layout | None = None) -> tuple[Policy, ScanOptions]:
    """The Policy and ScanOptions a lock file's holder record names; PolicyError if none.
    A layout from a --layout-file is known only by name: `known` is the one given here."""
    if holder is None:
        raise PolicyError("the record is torn or not JSON")
    record = holder.get("policy")
    policy = Policy.from_description(record)
    assert isinstance(record, dict)  # from_description refuses anything else
    layout = _recorded_layout(record.get("layout", "step"), known)
    markers = record.get("complete_markers")
    if not (isinstance(markers, list) and (markers or layout.trackers)
            and all(isinstance(m, str) and m for m in markers)):
        raise PolicyError("the recorded policy names no completion markers")
    return policy, ScanOptions(complete_markers=tuple(markers), layout=layout,
                               receiver_ready=policy.progress == "receiver-ready")


def _recorded_layout(name: object, known: Layout | None) -> Layout:
    if isinstance(name, str) and name in BUILT_IN:
        return BUILT_IN[name]
    if known is not None and name == known.name:
        return known
    raise PolicyError(f"it runs the layout {protocol.printable(str(name))!r} of a --layout-file; "
                      "give that file here")
