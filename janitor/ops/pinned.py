"""A look at one managed directory for the commands an operator reads (sweep, status, explain):
the plan with every step's pin read, so a pinned step shows as `pinned` at once, whatever its
times.

Why: the scan reads a step's pin file only when the plan would delete the step (`deepen`), which
is all safety needs. But pinning a step below the loaded step changes its times (a new entry in
it), so until the consumer writes its marker again the step is kept as `changed-after-marker`
and never read in depth: the person who just pinned it would not see the pin. One lstat per
step settles it; these commands already measure every step's size.
"""

from __future__ import annotations

import dataclasses

from janitor.fs.pins import pinned_names
from janitor.model import Snapshot
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Plan, plan


def look_pinned(directory: ManagedDirectory) -> tuple[Snapshot, Plan]:
    """`directory.look()`, then every step not yet known pinned looked at for its pin and the
    plan made again if any is (which can only keep more); no change on disk."""
    snapshot, decided = directory.look()
    pins = pinned_names(directory.fd, [e.name for e in snapshot.steps if not e.pinned])
    if not pins:
        return snapshot, decided
    entries = tuple(dataclasses.replace(e, pinned=True) if e.name in pins else e
                    for e in snapshot.entries)
    snapshot = dataclasses.replace(snapshot, entries=entries)
    return snapshot, plan(snapshot, directory.policy)
