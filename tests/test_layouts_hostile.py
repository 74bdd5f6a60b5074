"""The hostile-input suite, in every layout's grammar (issue 13, point 4): generated trees of each
layout seeded with hostile entries (symlinked, file or non-canonical step names, completion files
and trackers that are symlinks, FIFOs, directories or garbage, temporaries pointing out of the
tree, bad markers, dependency files that name steps, or are symlinks out of the tree, FIFOs,
directories or garbage), swept by the real command line. Whatever the tree, the invariants hold:

- nothing outside the tree is touched, no symlink is followed, no foreign entry removed;
- nothing at or above the effective loaded step goes (gated), nor anything while a marker or a
  pointer is bad;
- the newest complete step, pinned steps and the step a tracker names survive, whole; so do a
  complete step whose dependency file cannot be read and every step a survivor depends on;
- the command ends 0, 3 or 4 with one-line problems, never a traceback, and never hangs.
"""

# Lookalike digits are the point of this suite:
# ruff: noqa: RUF001

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.run import run_janitor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_layouts import COMPLETE, NAMED, TRACKER

LAYOUTS = sorted(NAMED)
PRECIOUS = b"outside the tree: never touched"
HOSTILE = ("symlink-step", "file-step", "non-canonical", "marker-symlink", "marker-fifo",
           "marker-dir", "temporary-symlink", "pin-dir")
TRACKER_HOSTILE = ("symlink", "fifo", "dir", "garbage", "missing-step", "empty")
DEPENDS_KINDS = ("valid", "valid", "symlink", "fifo", "dir", "garbage")


@dataclass(frozen=True)
class Tree:
    layout: str
    steps: tuple[tuple[int, bool, bool], ...]  # (number, complete, pinned)
    hostile: tuple[tuple[str, int], ...]
    tracked: int | None
    tracker_hostile: str | None
    loaded: str | None  # the marker's content (None: no marker)
    gated: bool
    depends: tuple[tuple[int, str, int], ...] = ()  # (step, DEPENDS_ON kind, the step named)


@st.composite
def trees(draw: st.DrawFn, layout: str) -> Tree:
    numbers = sorted(draw(st.sets(st.integers(1, 30), min_size=1, max_size=10)))
    steps = tuple((n, draw(st.booleans()) or n == numbers[-1], draw(st.integers(0, 7)) == 0)
                  for n in numbers)
    hostile = tuple(draw(st.lists(st.tuples(st.sampled_from(HOSTILE), st.integers(31, 60)),
                                  max_size=4, unique_by=lambda h: h[1])))
    tracked = tracker_hostile = None
    if layout in TRACKER:
        tracked = draw(st.sampled_from(numbers))
        if draw(st.integers(0, 3)) == 0:
            tracker_hostile = draw(st.sampled_from(TRACKER_HOSTILE))
    loaded = draw(st.one_of(st.none(), st.integers(0, 35).map(lambda n: f"{n}\n"),
                            st.sampled_from(["", "abc\n", "٣\n", "07\n", "-1\n", "9" * 30])))
    depends = tuple(draw(st.lists(
        st.tuples(st.sampled_from(numbers), st.sampled_from(DEPENDS_KINDS),
                  st.sampled_from(numbers)), max_size=3, unique_by=lambda d: d[0])))
    return Tree(layout, steps, hostile, tracked, tracker_hostile, loaded, draw(st.booleans()),
                depends)


def _write(path: Path, data: bytes = b"x") -> None:
    path.write_bytes(data)


def build(base: Path, tree: Tree) -> tuple[Path, Path]:
    outside = base / "outside"
    outside.mkdir()
    _write(outside / "precious.bin", PRECIOUS)
    managed = base / "ckpt" / "run"
    managed.mkdir(parents=True)
    name = NAMED[tree.layout]
    for number, complete, pinned in tree.steps:
        step = managed / name(number)
        step.mkdir()
        _write(step / "shard.bin", b"s" * 32)
        if complete:
            for marker in COMPLETE[tree.layout]:
                _write(step / marker, b"{}")
        if tree.layout == "prime-rl-checkpoints":
            (step / "trainer").mkdir()
        if pinned:
            _write(step / ".janitor-pin", b"")
    for number, kind, target in tree.depends:
        _depends(managed / name(number) / "DEPENDS_ON", outside, kind, target)
    for kind, number in tree.hostile:
        _hostile(managed, outside, tree.layout, kind, number)
    if tree.layout in TRACKER:
        _tracker(managed, outside, tree)
    if tree.loaded is not None:
        _write(managed / "LOADED_STEP", tree.loaded.encode())  # after the steps
    return managed, outside


def _hostile(managed: Path, outside: Path, layout: str, kind: str, number: int) -> None:
    name = NAMED[layout](number)
    if kind == "symlink-step":
        (managed / name).symlink_to(outside)
    elif kind == "file-step":
        _write(managed / name)
    elif kind == "non-canonical":
        # A leading zero; for Megatron's zero-padded names, an Arabic-Indic zero in place of
        # the first digit (one name per number: no two hostile entries collide).
        odd = name.replace(str(number), f"0{number}", 1) if layout != "megatron" else \
            name[:5] + "٠" + name[6:]
        (managed / odd).mkdir()
        _write(managed / odd / "shard.bin")
    elif kind.startswith("marker-") and COMPLETE[layout]:
        step = managed / name
        step.mkdir()
        marker = step / COMPLETE[layout][0]
        if kind == "marker-symlink":
            marker.symlink_to(outside / "precious.bin")
        elif kind == "marker-fifo":
            os.mkfifo(marker)
        else:
            marker.mkdir()
    elif kind == "temporary-symlink":
        temporary = {"orbax": f"{number}.orbax-checkpoint-tmp",
                     "hf": f"tmp-checkpoint-{number}"}.get(layout, f".janitor-staging.{number}.x")
        (managed / temporary).symlink_to(outside)
    elif kind == "pin-dir":
        step = managed / name
        step.mkdir()
        (step / ".janitor-pin").mkdir()


def _depends(path: Path, outside: Path, kind: str, target: int) -> None:
    """A dependency file inside a step (written after its completion file: the janitor may have
    it or not; either way it only ever keeps more)."""
    if kind == "valid":
        _write(path, f"{target}\n".encode())
    elif kind == "symlink":
        (outside / "depends").write_text(f"{target}\n")
        path.symlink_to(outside / "depends")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    else:
        _write(path, b"\x00\xffnot a step")


def _tracker(managed: Path, outside: Path, tree: Tree) -> None:
    filename, text = TRACKER[tree.layout]
    path = managed / filename
    assert tree.tracked is not None
    kind = tree.tracker_hostile
    if kind is None:
        _write(path, text(tree.tracked).encode())
    elif kind == "symlink":
        (outside / "tracker").write_text(text(tree.tracked))
        path.symlink_to(outside / "tracker")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "garbage":
        _write(path, b"\x00\xffnot a step")
    elif kind == "missing-step":
        _write(path, text(99).encode())
    else:
        _write(path, b"")


def _present(managed: Path, layout: str) -> set[int]:
    name = NAMED[layout]
    return {n for n in range(61) if (managed / name(n)).is_dir()
            and not (managed / name(n)).is_symlink()}


def check(tree: Tree, managed: Path, outside: Path, before: set[int], code: int,
          stderr: str) -> None:
    assert code in (0, 3, 4), stderr
    assert "Traceback" not in stderr
    assert all(line.startswith("janitor:") for line in stderr.splitlines()), stderr
    assert (outside / "precious.bin").read_bytes() == PRECIOUS
    assert set(os.listdir(outside)) <= {"precious.bin", "tracker", "depends"}
    name = NAMED[tree.layout]
    for kind, number in tree.hostile:  # foreign entries stay as they were
        path = managed / name(number)
        if kind == "symlink-step":
            assert path.is_symlink()
        elif kind == "file-step":
            assert path.is_file()
    after = _present(managed, tree.layout)
    gone = before - after
    for number in after:  # whatever survives is whole
        if number in {n for n, _, _ in tree.steps}:
            assert (managed / name(number) / "shard.bin").read_bytes() == b"s" * 32
    kept = {n for n, _, pinned in tree.steps if pinned}
    assert not gone & kept, "a pinned step went"
    halted = tree.tracker_hostile is not None
    text = (tree.loaded or "").removesuffix("\n")
    marker_ok = text.isascii() and text.isdigit() and text == str(int(text))
    if tree.gated and not marker_ok:
        halted = True
    if halted:
        assert not gone, f"deleted {sorted(gone)} while the directory should halt"
        return
    if tree.layout in TRACKER:
        assert tree.tracked not in gone, "the tracker's step went"
    complete = [n for n, c, _ in tree.steps if c] if tree.layout not in TRACKER else \
        [n for n, _, _ in tree.steps if tree.tracked is not None and n <= tree.tracked]
    for number, kind, target in tree.depends:
        if kind == "valid" and number in after and target != number:
            assert target not in gone, f"step {target}, which surviving step {number} needs, went"
        if kind != "valid" and number in complete:
            assert number not in gone, f"step {number}, whose DEPENDS_ON is {kind}, went"
    if complete:
        assert max(complete) not in gone, "the newest complete step went"
    if tree.gated:
        loaded = int(text)
        assert all(n < loaded for n in gone), "a step at or above the loaded step went"


SETTINGS = settings(max_examples=18, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_hostile_trees_in_every_layout_keep_every_invariant(layout: str) -> None:
    @SETTINGS
    @given(tree=trees(layout))
    def run(tree: Tree) -> None:
        base = Path(tempfile.mkdtemp(prefix="janitor-layout-hostile-"))
        try:
            managed, outside = build(base, tree)
            before = _present(managed, layout)
            args = ["sweep", "--layout", layout, "--partial-grace", "0", "--audit-log", "off"]
            if not tree.gated:
                args.append("--no-gate")
            if layout == "prime-rl-broadcasts":
                args += ["--progress", "loaded-step"]  # the LOADED_STEP drawn here gates it
            ran = run_janitor(*args, str(base / "ckpt"), timeout_s=60)
            check(tree, managed, outside, before, ran.code, ran.stderr)
            again = run_janitor("sweep", "--layout", "auto", "--dry-run", "--no-gate",
                                str(base / "ckpt"), timeout_s=60)
            assert again.code in (0, 3, 4) and "Traceback" not in again.stderr, again.stderr
        finally:
            shutil.rmtree(base, ignore_errors=True)

    run()
