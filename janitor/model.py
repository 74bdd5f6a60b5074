"""The data the janitor decides on: what a scan saw in one managed directory, as plain values.

No I/O here: `scan` fills these from the filesystem, the pure `policy` reads them, and tests build
them by hand. Keeping them apart lets the policy import nothing that touches a disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from janitor import protocol
from janitor.layouts import STEP, Layout


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What counts as complete and pinned; which progress source to read."""

    complete_markers: tuple[str, ...] = (protocol.DEFAULT_COMPLETE_MARKER,)
    pin_file: str = protocol.PIN_FILE
    # Also read per-step `.receiver_ready` sentinels (the handshake some trainers use instead of
    # LOADED_STEP); costs one stat per step, so only when asked.
    receiver_ready: bool = False
    # How steps are named, completed and pointed at (janitor.layouts); `step` is the protocol.
    layout: Layout = STEP
    # With --layout auto and no --progress: each directory reads its detected layout's source.
    progress_from_layout: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """A step directory (number set) or a trainer_hooks staging directory (number None)."""

    name: str
    number: int | None
    complete: bool
    pinned: bool
    # Newest mtime/ctime seen on the directory, its completion marker and its direct children: a
    # rewrite of the step (a new file, or a shard overwritten in place) moves this forward.
    changed_ns: int
    dev: int
    ino: int
    receiver_ready_ns: int | None = None
    # The steps it names in its dependency files (janitor.dependencies: DEPENDS_ON, a sparse
    # patch's base step), and why they could not be read, if so (then the step is kept).
    depends: tuple[int, ...] = ()
    depends_problem: str | None = None

    @property
    def staging(self) -> bool:
        return self.number is None


@dataclass(frozen=True, slots=True)
class Foreign:
    """A `step_*`-looking entry the janitor will never touch, and why."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Consumer:
    """One consumer marker file: `LOADED_STEP` (name "") or `LOADED_STEP.<name>`."""

    name: str
    filename: str
    step: int | None
    problem: str | None
    mtime_ns: int
    # None where unknown (a marker that could not be read): then mtime alone is used.
    ctime_ns: int | None = None

    @property
    def licence_ns(self) -> int:
        """When this marker's value was written, conservatively: the EARLIER of its mtime and
        ctime. A future-dated mtime (`touch -d tomorrow`) would otherwise license deleting steps
        rewritten after the real write (invariant 4); ctime cannot be set back from user space."""
        return self.mtime_ns if self.ctime_ns is None else min(self.mtime_ns, self.ctime_ns)


@dataclass(frozen=True, slots=True)
class Pointer:
    """A file that names a step to keep: a trainer's tracker in the managed directory (then every
    step at or below it is complete) or the best checkpoint recorded in the newest complete step.
    `problem` says why it names nothing usable; the directory then deletes nothing."""

    filename: str
    step: int | None
    problem: str | None
    complete_through: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `policy.plan` needs about one managed directory at one moment."""

    path: str
    dev: int
    scanned_ns: int
    entries: tuple[Entry, ...]
    foreign: tuple[Foreign, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    trash_present: bool = False
    pointers: tuple[Pointer, ...] = ()
    steps: tuple[Entry, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(e for e in self.entries if not e.staging))


class Trash:
    """What one name in a managed directory is when it is the janitor's own trash directory."""

    __slots__ = ()


TRASH = Trash()

# What one name in a managed directory is, as `fs.scan.classify` reads it (None: nothing the
# janitor decides about, e.g. its lock file or a stranger's file).
Item = Entry | Foreign | Consumer | Pointer | Trash | None
