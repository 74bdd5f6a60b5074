"""--pressure relieve for one directory: which soft-kept steps go, oldest first, to bring a
directory under --max-bytes or its filesystem back above --min-free (janitor.budget), and the
plan again with them deleted (reason `relieved`). `janitor sweep` executes that plan and
`janitor explain` shows it; the daemon relieves from its own measured sizes (daemon.loop).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from janitor.budget import Budget, Offer, share_deficit
from janitor.fs.scan import deepen
from janitor.fs.sizes import tree_size
from janitor.model import Snapshot
from janitor.ops.managed import ManagedDirectory
from janitor.ops.report import trash_usage
from janitor.policy import Context, Decision, Plan, Policy, plan, relieve, snapshot_context


@dataclass(frozen=True, slots=True)
class Share:
    """A directory's part of its filesystem's --min-free deficit (bytes to relieve), and the
    sizes measured to share it out, by name: (inode, change time, bytes)."""

    bytes: int
    sizes: dict[str, tuple[int, int, int]]


def relief_offers(decisions: Sequence[Decision], policy: Policy, context: Context,
                  size: Callable[[str], int | None]) -> list[Offer]:
    """The steps policy.relieve may take, in its order (oldest first), with their completion
    times and sizes (None: not measured yet)."""
    eligible = relieve(decisions, policy, context, lambda _name: 0, 1)  # freeing 0: all of them
    chosen = sorted((d for d in decisions if d.entry.number in eligible and not d.delete),
                    key=lambda d: d.entry.number or 0)
    return [Offer(d.entry.changed_ns, size(d.entry.name), d.entry.name) for d in chosen]


def relieved(directory: ManagedDirectory, snapshot: Snapshot, decided: Plan, budget: Budget,
             sizes: dict[str, int], share: Share | None = None) -> tuple[Snapshot, Plan]:
    """--pressure relieve: over --max-bytes, or on a filesystem short of --min-free, the plan
    again with the soft-kept steps chosen to go (oldest first, policy.relieve), those read in
    depth first (a pin found keeps one). The deficit is the larger of the two: both take a
    prefix of the same oldest-first order. Each entry's size is measured into `sizes` (the
    report's: not measured again after); `share` is this directory's part of a filesystem it
    shares (free_shares), else its deficit is worked out here."""
    known = share.sizes if share is not None else {}
    for entry in snapshot.entries:
        hit = known.get(entry.name)
        sizes[entry.name] = hit[2] if hit is not None and hit[:2] == (entry.ino, entry.changed_ns) \
            else tree_size(directory.fd, entry.name)
    doomed = {d.entry.name for d in decided.doomed}
    gone = sum(b for n, b in sizes.items() if n in doomed)
    deficit = budget.relieve_deficit(sum(sizes.values()) - gone)
    context, _ = snapshot_context(snapshot, directory.policy)
    if budget.relieves_free:
        deficit = max(deficit, share.bytes if share is not None else
                      _own_free_share(directory, decided, context, budget, sizes, gone))
    if not deficit:
        return snapshot, decided
    chosen = relieve(decided.decisions, directory.policy, context,
                     lambda name: sizes.get(name, 0), deficit)
    if not chosen:
        return snapshot, decided
    names = frozenset(e.name for e in snapshot.steps if e.number in chosen)
    snapshot = deepen(directory.fd, snapshot, names | doomed, directory.options)
    return snapshot, plan(snapshot, directory.policy, chosen)


def _own_free_share(directory: ManagedDirectory, decided: Plan, context: Context,
                    budget: Budget, sizes: dict[str, int], gone: int) -> int:
    """The --min-free deficit of a directory alone on its filesystem: what it must relieve to
    bring the filesystem HYSTERESIS above the watermark, counting what this sweep deletes anyway
    and what its trash holds as freed."""
    vfs = os.statvfs(directory.fd)
    avail, total = vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize
    deficit = budget.free_deficit(avail, total, gone + trash_usage(directory)[1],
                                  relieving=False)
    if not deficit:
        return 0
    offers = relief_offers(decided.decisions, directory.policy, context, sizes.get)
    return share_deficit({directory.path: offers}, deficit)[directory.path]
