"""`--layout auto`: which layout a managed directory is in, from what is on disk.

A directory is in a layout when some of its children are that layout's complete steps (or it
holds that layout's tracker). Layouts sharing one grammar are told apart by their completion
files (`step_N` holding `.finished` is a prime-rl broadcast; `STABLE` with a `trainer/`
subdirectory a prime-rl checkpoint; else the janitor's own protocol). Names of several
grammars, or steps none of which is complete, match several or no layout: the directory is
refused with the reason (nothing is deleted there), never guessed.
"""

from __future__ import annotations

import os

from janitor import protocol
from janitor.fs.paths import holds_any
from janitor.layouts import BUILT_IN, Layout

# Looked into per grammar before deciding: detection stays cheap on a directory of 100,000 steps.
SAMPLE = 64
_STEP_FAMILY = ("step", "prime-rl-broadcasts", "prime-rl-checkpoints")


def detect(dir_fd: int) -> Layout | str:
    """The directory's layout, or why none can be chosen (one line)."""
    names = os.listdir(dir_fd)
    families: dict[str, list[str]] = {}
    for layout in BUILT_IN.values():
        if layout.name in _STEP_FAMILY[1:]:
            continue  # the step family is one grammar; told apart below
        steps = [n for n in names if isinstance(layout.parse(n), int)]
        tracked = any(n in layout.reserved for n in names)
        if steps or tracked:
            families[layout.name] = steps
    # Megatron and verl share a tracker name: a tracker alone says little where another
    # layout's steps are there (the grammar tells them apart).
    if any(families.values()):
        families = {name: steps for name, steps in families.items() if steps}
    if not families:
        return "no layout matches (no step names of any known layout)"
    if len(families) > 1:
        found = ", ".join(sorted(families))
        return f"matches several layouts ({found}); choose one with --layout"
    (name, steps), = families.items()
    if name == "step":
        return _step_family(dir_fd, steps)
    layout = BUILT_IN[name]
    if layout.trackers:
        if not any(n in layout.reserved for n in names):
            return (f"{layout.name} step names but no {layout.trackers[0].filename}: cannot "
                    f"tell which steps are complete; choose --layout {layout.name} to confirm")
        return layout
    if not any(holds_any(dir_fd, step, layout.complete) for step in steps[-SAMPLE:]):
        return (f"{layout.name} step names but none complete (no "
                f"{' or '.join(layout.complete)}): cannot tell; choose one with --layout")
    return layout


def _step_family(dir_fd: int, steps: list[str]) -> Layout | str:
    sample = sorted(steps, key=lambda n: (len(n), n))[-SAMPLE:]
    if any(holds_any(dir_fd, step, (protocol.FINISHED_MARKER,)) for step in sample):
        return BUILT_IN["prime-rl-broadcasts"]
    stable = [s for s in sample if holds_any(dir_fd, s, (protocol.DEFAULT_COMPLETE_MARKER,))]
    if stable and any(holds_any(dir_fd, s, ("trainer",)) for s in stable):
        return BUILT_IN["prime-rl-checkpoints"]
    return BUILT_IN["step"]
