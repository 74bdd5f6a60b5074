"""Dependencies between steps: a step that is a delta over others keeps them while it is kept.

A step names the steps it needs in a `DEPENDS_ON` file (ASCII step numbers, one per line), and in
prime-rl's sparse broadcasts its `sparse_update_manifest.json` names a `base_step` (the patch
applies on top of that step's weights). A kept step keeps its dependencies transitively: the
hard rule `depended-on`, which no pressure overrides. A dependency file that cannot be read or
parsed keeps its own step (`dependency-problem`) and halts nothing else; a dependency on a step
that is not here, and a cycle, are reported. Step 0 absent is the model the run started from
(prime-rl's first patch names base step 0), not a missing step.

Pure: parsing returns values or an Invalid reason; `held` and `find_cycle` walk the graph through
callables, so the sweep (a whole snapshot) and the daemon's index (only the steps that may go)
share them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from janitor.protocol import (
    DEPENDS_FILE,
    MAX_DEPENDS,
    MAX_DEPENDS_BYTES,
    Invalid,
    parse_step_number,
    printable,
)

# prime-rl's sparse filesystem broadcast (src/prime_rl/utils/sparse_update.py): the manifest of a
# patch, and the patch file it describes (a patch without its manifest: its base is unknown).
SPARSE_MANIFEST = "sparse_update_manifest.json"
SPARSE_PATCH = "sparse_update_patch.safetensors"
MAX_MANIFEST_BYTES = 64 << 20
INITIAL_STEP = 0  # absent, the model the run started from


@dataclass(frozen=True, slots=True)
class DependencySource:
    """A file inside a step that names the steps it depends on: `lines` (DEPENDS_ON's grammar)
    or `json` (an object whose `key` holds one step number). `companion`: a file whose presence
    without this one means the dependencies are unknown (a patch without its manifest)."""

    filename: str
    kind: str = "lines"
    key: str = ""
    companion: str | None = None

    @property
    def limit(self) -> int:
        return MAX_DEPENDS_BYTES if self.kind == "lines" else MAX_MANIFEST_BYTES

    def parse(self, data: bytes) -> tuple[int, ...] | Invalid:
        return parse_lines(data) if self.kind == "lines" else parse_json_step(data, self.key)


DEPENDS_ON = DependencySource(DEPENDS_FILE)
SPARSE_BASE = DependencySource(SPARSE_MANIFEST, "json", "base_step", companion=SPARSE_PATCH)


def parse_lines(data: bytes) -> tuple[int, ...] | Invalid:
    """DEPENDS_ON: canonical ASCII step numbers, one per line, each line ending in a newline
    (the last may not); an empty file names none. Anything else is malformed."""
    if len(data) > MAX_DEPENDS_BYTES:
        return Invalid(f"more than {MAX_DEPENDS_BYTES} bytes")
    if not data:
        return ()
    body = data[:-1] if data.endswith(b"\n") else data
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return Invalid("not ASCII")
    lines = text.split("\n")
    if len(lines) > MAX_DEPENDS:
        return Invalid(f"names more than {MAX_DEPENDS} steps")
    steps: list[int] = []
    for at, line in enumerate(lines, 1):
        number = parse_step_number(line)
        if isinstance(number, Invalid):
            return Invalid(f"line {at}: {printable(line[:40])!r}: {number.reason}")
        steps.append(number)
    return tuple(dict.fromkeys(steps))


def parse_json_step(data: bytes, key: str) -> tuple[int, ...] | Invalid:
    """The one step a JSON object names under `key` (prime-rl's `base_step`)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return Invalid("not JSON (half-written?)")
    if not isinstance(document, dict) or key not in document:
        return Invalid(f"no {key!r}")
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**19:
        return Invalid(f"{key!r} is not a step number: {printable(repr(value)[:40])}")
    return (value,)


class Graph(Protocol):
    """The dependency edges among the steps present: a whole snapshot's (`EdgeMap`) or the
    daemon's index, kept as steps come and go."""

    @property
    def has_edges(self) -> bool: ...

    def depends(self, step: int) -> Iterable[int]: ...

    def dependents(self, step: int) -> Iterable[int]: ...

    def present(self, step: int) -> bool: ...


class EdgeMap:
    """A Graph built from (step, the steps it depends on) pairs: for a sweep's whole snapshot,
    and for tests. Edges to steps not present are kept (the reverse edge names the dependent)
    but lead nowhere."""

    def __init__(self, steps: Iterable[tuple[int, tuple[int, ...]]]) -> None:
        self._depends: dict[int, tuple[int, ...]] = {}
        self._dependents: dict[int, list[int]] = {}
        for step, depends in steps:
            self._depends[step] = depends
            for dependency in depends:
                self._dependents.setdefault(dependency, []).append(step)

    @property
    def has_edges(self) -> bool:
        return bool(self._dependents)

    def depends(self, step: int) -> Iterable[int]:
        return self._depends.get(step, ())

    def dependents(self, step: int) -> Iterable[int]:
        return self._dependents.get(step, ())

    def present(self, step: int) -> bool:
        return step in self._depends


def held(starts: Iterable[int], kept: Callable[[int], bool],
         dependents: Callable[[int], Iterable[int]],
         depends: Callable[[int], Iterable[int]], present: Callable[[int], bool]) -> set[int]:
    """The steps among `starts` (those that may go: every step in a sweep, the candidates in
    the daemon) that a kept step needs, directly or through other needed steps.

    A start is held when a step depending on it is `kept` (by its own rules) or is itself held;
    a held step's own dependencies are then held too. Cost: the starts' reverse edges, plus the
    dependencies of what is held; never the whole tree."""
    found: set[int] = set()
    work = [s for s in starts if any(k != s and kept(k) for k in dependents(s))]
    while work:
        step = work.pop()
        if step in found or not present(step):
            continue
        found.add(step)
        work.extend(d for d in depends(step) if d not in found)
    return found


def missing(step: int, depends: Iterable[int], present: Callable[[int], bool]) -> list[int]:
    """The dependencies of `step` that are not here (step 0 absent is the initial model)."""
    return [d for d in depends if d != INITIAL_STEP and not present(d) and d != step]


def find_cycle(sources: Iterable[int], depends: Callable[[int], Iterable[int]],
               limit: int = 100_000) -> list[int] | None:
    """A dependency cycle reachable from `sources` (the steps around it, the first repeated at
    the end), or None. At most `limit` steps are visited: a chain longer than that is not
    followed to its end (no cycle is claimed)."""
    done: set[int] = set()
    visited = 0
    for source in sources:
        if source in done:
            continue
        path: list[int] = [source]
        on_path = {source: 0}
        stack: list[Iterator[int]] = [iter(depends(source))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                finished = path.pop()
                del on_path[finished]
                done.add(finished)
                continue
            if child in on_path:
                return [*path[on_path[child]:], child]
            if child in done:
                continue
            visited += 1
            if visited > limit:
                return None
            on_path[child] = len(path)
            path.append(child)
            stack.append(iter(depends(child)))
    return None


def cycle_through(step: int, dependents: Callable[[int], Iterable[int]],
                  limit: int = 100_000) -> list[int] | None:
    """A dependency cycle through `step` (step, what it depends on, ..., step), or None: a walk
    up the reverse edges, so a new step that nothing names yet costs one lookup, whatever the
    length of the chain below it. At most `limit` steps are visited."""
    parent: dict[int, int] = {}
    work = [step]
    while work:
        node = work.pop()
        for dependent in dependents(node):
            if dependent == step:  # `step` depends on `node`: close the loop
                path = [step, node]
                while path[-1] != step:
                    path.append(parent[path[-1]])
                return path
            if dependent not in parent:
                if len(parent) >= limit:
                    return None
                parent[dependent] = node
                work.append(dependent)
    return None


def cycle_text(cycle: list[int]) -> str:
    return "dependency cycle: " + " -> ".join(f"step {n}" for n in cycle) + \
        " (each names the next as a dependency); they are kept while any of them is needed"


@dataclass(frozen=True, slots=True)
class Note:
    """Something about a step's dependencies a person should hear once: `event` is the log
    event's name (dependency_missing, dependency_cycle), `text` the line."""

    step: int
    event: str
    text: str


def notes(steps: Iterable[int], graph: Graph, *, whole: bool = False) -> list[Note]:
    """What is wrong with the dependencies of `steps`: those naming a step that is not here,
    and cycles through them. `whole` (a sweep's every step): one walk finds a cycle anywhere;
    else (the daemon's new steps) a walk up from each, which costs what names it."""
    found: list[Note] = []
    chosen = list(steps)
    for step in chosen:
        gone = missing(step, graph.depends(step), graph.present)
        if gone:
            names = ", ".join(f"step {n}" for n in gone)
            found.append(Note(step, "dependency_missing",
                              f"step {step} depends on {names}, not here (a load of step {step} "
                              "from disk may fail)"))
    cycles = [find_cycle(chosen, graph.depends)] if whole else \
        [cycle_through(step, graph.dependents) for step in chosen]
    seen: set[frozenset[int]] = set()
    for cycle in cycles:
        if cycle is not None and frozenset(cycle) not in seen:
            seen.add(frozenset(cycle))
            found.append(Note(cycle[0], "dependency_cycle", cycle_text(cycle)))
    return found
