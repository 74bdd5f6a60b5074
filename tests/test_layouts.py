"""Layouts (issue 13): every built-in grammar, trackers and best pointers, auto detection, and
the invariants in every layout, on real trees through the real command line and daemon.

The trees here are built from each format's documented names (janitor.layouts cites where each is
defined); tests/test_layouts_real.py sweeps trees the real libraries wrote. Steps are created
first and markers written after, as real writers do (ctime orders them).
"""

# Lookalike digits are the point of one test here:
# ruff: noqa: RUF001

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_properties import SCANNED_NS, consumers_strategy, steps_strategy

from janitor.index import DirectoryIndex
from janitor.layouts import BUILT_IN, STEP
from janitor.model import Entry, Pointer, Snapshot
from janitor.policy import Policy, Reason, plan, pointer_facts

# layout -> (how its steps are completed inside, tracker file and how it names step N)
COMPLETE: dict[str, tuple[str, ...]] = {
    "step": ("STABLE",), "prime-rl-checkpoints": ("STABLE",),
    "prime-rl-broadcasts": (".finished",), "hf": ("trainer_state.json",),
    "torchtitan": (".metadata",), "orbax": ("_CHECKPOINT_METADATA",),
    "megatron": (), "verl": (), "deepspeed": (),
}
TRACKER: dict[str, tuple[str, Callable[[int], str]]] = {
    "megatron": ("latest_checkpointed_iteration.txt", str),
    "verl": ("latest_checkpointed_iteration.txt", str),
    "deepspeed": ("latest", lambda n: f"global_step{n}"),
}
# What each layout names step N, written out here (the oracle), not taken from janitor.layouts.
NAMED: dict[str, Callable[[int], str]] = {
    "step": lambda n: f"step_{n}", "prime-rl-checkpoints": lambda n: f"step_{n}",
    "prime-rl-broadcasts": lambda n: f"step_{n}", "hf": lambda n: f"checkpoint-{n}",
    "torchtitan": lambda n: f"step-{n}", "orbax": str, "megatron": lambda n: f"iter_{n:07d}",
    "verl": lambda n: f"global_step_{n}", "deepspeed": lambda n: f"global_step{n}",
}
LAYOUTS = sorted(NAMED)


def build(directory: Path, layout: str, numbers: range, *, tracked: int | None = None) -> Path:
    """Steps of `layout`, complete (its completion files, or a tracker naming `tracked`, by
    default the newest), each with a payload; prime-rl checkpoints hold trainer/."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        step = directory / NAMED[layout](number)
        step.mkdir()
        (step / "weights.bin").write_bytes(b"w" * 64)
        if layout == "prime-rl-checkpoints":
            (step / "trainer").mkdir()
        for name in COMPLETE[layout]:
            (step / name).write_text("{}")
    if layout in TRACKER:
        filename, text = TRACKER[layout]
        (directory / filename).write_text(text(numbers[-1] if tracked is None else tracked))
    return directory


def survivors(directory: Path, layout: str) -> list[int]:
    found = []
    for name in os.listdir(directory):
        for number in range(100):
            if NAMED[layout](number) == name:
                found.append(number)
    return sorted(found)


# ---- names ------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), number=st.integers(0, 10**12))
def test_every_layout_reads_back_the_names_it_writes(layout: str, number: int) -> None:
    if layout == "megatron" and number >= 10**7:
        return  # 7 digits, zero padded
    chosen = BUILT_IN[layout]
    assert chosen.name_of(number) == NAMED[layout](number)
    assert chosen.parse(NAMED[layout](number)) == number


@settings(max_examples=500, deadline=None)
@given(layout=st.sampled_from(LAYOUTS),
       name=st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=24),
                      st.from_regex(r"(step_|step-|checkpoint-|iter_|global_step_?|)"
                                    r"[0-9٠-٩０-９]{0,9}[a-z.]{0,3}", fullmatch=True)))
def test_a_name_is_a_step_only_in_its_canonical_form(layout: str, name: str) -> None:
    number = BUILT_IN[layout].parse(name)
    if isinstance(number, int):
        assert NAMED[layout](number) == name  # exactly one name per step, none lookalike


# ---- sweeping each layout ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_keeps_exactly_what_its_rules_say(tmp_path: Path, layout: str) -> None:
    tree = build(tmp_path / "run", layout, range(1, 7), tracked=4 if layout in TRACKER else None)
    ran = run_janitor("sweep", "--no-gate", "--keep-last", "2", "--layout", layout,
                      "--progress", "loaded-step", str(tree))
    assert ran.code == 3, ran.stderr
    if layout in TRACKER:  # 4 is the newest complete (and pointed at); 5, 6 are in progress
        assert survivors(tree, layout) == [3, 4, 5, 6]
    else:
        assert survivors(tree, layout) == [5, 6]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_gated_by_loaded_step(tmp_path: Path, layout: str) -> None:
    tree = build(tmp_path / "run", layout, range(1, 9))
    (tree / "LOADED_STEP").write_text("5\n")  # after the steps
    ran = run_janitor("sweep", "--layout", layout, "--progress", "loaded-step", str(tree))
    assert ran.code == 3, ran.stderr
    assert survivors(tree, layout) == [5, 6, 7, 8]


@pytest.mark.parametrize("layout", sorted(TRACKER))
def test_a_tracker_naming_a_missing_step_halts_the_directory(tmp_path: Path, layout: str) -> None:
    tree = build(tmp_path / "run", layout, range(1, 6), tracked=9)
    ran = run_janitor("sweep", "--no-gate", "--layout", layout, str(tree))
    assert ran.code == 4
    assert "names step 9, which is not here" in ran.stderr
    assert survivors(tree, layout) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("content", [b"", b"release\n", b"\xff\xfe", b"-1", b"1 2", b"9" * 5000])
def test_a_malformed_tracker_halts_with_its_reason(tmp_path: Path, content: bytes) -> None:
    tree = build(tmp_path / "run", "megatron", range(1, 6))
    (tree / "latest_checkpointed_iteration.txt").write_bytes(content)
    ran = run_janitor("sweep", "--no-gate", "--layout", "megatron", str(tree))
    assert ran.code == 4 and "latest_checkpointed_iteration.txt" in ran.stderr
    assert survivors(tree, "megatron") == [1, 2, 3, 4, 5]


def test_a_tracker_that_is_a_symlink_or_fifo_is_never_followed(tmp_path: Path) -> None:
    for kind in ("symlink", "fifo"):
        tree = build(tmp_path / kind, "deepspeed", range(1, 4))
        (tree / "latest").unlink()
        if kind == "symlink":
            (tmp_path / f"elsewhere-{kind}").write_text("global_step1")
            (tree / "latest").symlink_to(tmp_path / f"elsewhere-{kind}")
        else:
            os.mkfifo(tree / "latest")
        ran = run_janitor("sweep", "--no-gate", "--layout", "deepspeed", str(tree), timeout_s=30)
        assert ran.code == 4, ran.stderr
        assert survivors(tree, "deepspeed") == [1, 2, 3]


def test_hf_keeps_the_best_checkpoint_the_newest_state_names(tmp_path: Path) -> None:
    tree = build(tmp_path / "out", "hf", range(1, 7))
    (tree / "checkpoint-6" / "trainer_state.json").write_text(
        json.dumps({"best_model_checkpoint": "out/checkpoint-2", "global_step": 6}))
    ran = run_janitor("sweep", "--no-gate", "--layout", "hf", "--json", str(tree))
    assert ran.code == 3, ran.stderr
    assert survivors(tree, "hf") == [2, 6]
    doc = json.loads(ran.stdout)["directories"][0]
    assert doc["layout"] == "hf"
    assert {d["name"]: d["reason"] for d in doc["decisions"]}["checkpoint-2"] == "pointed-to"


@pytest.mark.parametrize("state", [
    b"{not json", json.dumps({"best_model_checkpoint": 5}).encode(),
    json.dumps({"best_model_checkpoint": "x/other-3"}).encode(),
    json.dumps({"best_model_checkpoint": "o/checkpoint-9"}).encode()])
def test_hf_halts_on_a_best_pointer_it_cannot_follow(tmp_path: Path, state: bytes) -> None:
    tree = build(tmp_path / "out", "hf", range(1, 5))
    (tree / "checkpoint-4" / "trainer_state.json").write_bytes(state)
    ran = run_janitor("sweep", "--no-gate", "--layout", "hf", str(tree))
    assert ran.code == 4, (ran.stdout, ran.stderr)
    assert survivors(tree, "hf") == [1, 2, 3, 4]


def test_temporaries_are_in_progress_then_abandoned_after_the_grace(tmp_path: Path) -> None:
    tree = build(tmp_path / "ckpt", "orbax", range(1, 4))
    (tree / "4.orbax-checkpoint-tmp-1733333333").mkdir()
    (tree / "4.orbax-checkpoint-tmp-1733333333" / "part").write_bytes(b"x")
    ran = run_janitor("sweep", "--no-gate", "--layout", "orbax", str(tree))
    assert (tree / "4.orbax-checkpoint-tmp-1733333333").exists(), ran.stdout
    ran = run_janitor("sweep", "--no-gate", "--layout", "orbax", "--partial-grace", "0",
                      str(tree))
    assert ran.code == 3
    assert not (tree / "4.orbax-checkpoint-tmp-1733333333").exists()
    assert survivors(tree, "orbax") == [3]


def test_other_layouts_names_are_never_touched(tmp_path: Path) -> None:
    """A tree of one layout swept with another: nothing is its step, nothing goes."""
    tree = build(tmp_path / "run", "hf", range(1, 5))
    (tree / "LOADED_STEP").write_text("4\n")
    for layout in ("step", "torchtitan", "orbax", "megatron"):
        run_janitor("sweep", "--no-gate", "--layout", layout, str(tree))
        assert survivors(tree, "hf") == [1, 2, 3, 4]
        assert (tree / "LOADED_STEP").read_text() == "4\n"


# ---- auto --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_auto_detects_each_layout_and_says_so(tmp_path: Path, layout: str) -> None:
    tree = build(tmp_path / "run", layout, range(1, 6))
    ran = run_janitor("sweep", "--dry-run", "--no-gate", "--layout", "auto", "--json", str(tree))
    assert ran.code == 3, ran.stderr
    assert json.loads(ran.stdout)["directories"][0]["layout"] == layout


def test_auto_refuses_a_directory_of_several_layouts_and_deletes_nothing(tmp_path: Path) -> None:
    tree = build(tmp_path / "run", "hf", range(1, 4))
    build(tree, "torchtitan", range(1, 4))
    before = sorted(os.listdir(tree))
    ran = run_janitor("sweep", "--no-gate", "--layout", "auto", str(tree))
    assert ran.code == 4
    assert "matches several layouts (hf, torchtitan)" in ran.stderr
    assert sorted(os.listdir(tree)) == before  # no lock either: not a directory it manages


def test_auto_refuses_steps_it_cannot_tell_complete(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    for number in range(1, 4):
        (tree / f"step-{number}").mkdir(parents=True)
    (tree / "LOADED_STEP").write_text("3\n")
    ran = run_janitor("sweep", "--no-gate", "--layout", "auto", str(tree))
    assert ran.code == 4 and "none complete" in ran.stderr
    assert len(os.listdir(tree)) == 4


def test_auto_does_not_take_numbered_folders_for_orbax_steps(tmp_path: Path) -> None:
    """Dated or numbered folders are not a checkpoint tree: nothing managed, nothing deleted."""
    for name in ("2024", "2025", "01"):
        (tmp_path / "data" / name).mkdir(parents=True)
    ran = run_janitor("sweep", "--no-gate", "--layout", "auto", str(tmp_path / "data"))
    assert ran.code == 0 and "nothing to do" in ran.stderr
    assert sorted(os.listdir(tmp_path / "data")) == ["01", "2024", "2025"]


def test_complete_marker_with_auto_is_a_usage_error(tmp_path: Path) -> None:
    ran = run_janitor("sweep", "--layout", "auto", "--complete-marker", "DONE", str(tmp_path))
    assert ran.code == 2
    assert ran.stderr.count("\n") == 1 and "--complete-marker" in ran.stderr


# ---- the daemon --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["megatron", "hf", "auto"])
def test_the_daemon_keeps_each_layout(spawn: Spawn, tmp_path: Path, layout: str) -> None:
    kind = "megatron" if layout == "auto" else layout
    root = tmp_path / "ckpt"
    tree = build(root / "run", kind, range(1, 6))
    publish_marker(tree, 2)
    daemon = spawn(str(root), "--layout", layout, "--audit-log", "off", "--log-format", "json")
    adopted = daemon.wait_event("directory_adopted")
    assert adopted["layout"] == kind
    wait_until(lambda: survivors(tree, kind) == [2, 3, 4, 5], 10, "step 1 to go")
    # The trainer saves 6 (and 7); its tracker (or the state) moves after each save.
    build(tree, kind, range(6, 8), tracked=7)
    publish_marker(tree, 6)
    wait_until(lambda: survivors(tree, kind) == [6, 7], 10, "steps 2-5 to go")
    assert not daemon.named("reconcile_failed")
    assert daemon.stop()[0] == 0


def test_the_daemon_halts_when_a_tracker_names_a_missing_step(spawn: Spawn,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    tree = build(root / "run", "deepspeed", range(1, 6))
    publish_marker(tree, 4)
    daemon = spawn(str(root), "--layout", "deepspeed", "--audit-log", "off",
                   "--log-format", "json")
    daemon.wait_event("ready")
    wait_until(lambda: survivors(tree, "deepspeed") == [4, 5], 10, "1-3 to go")
    (tree / "latest").write_text("global_step9")  # a save that is not on this disk
    publish_marker(tree, 5)
    halted = daemon.wait_event("deleting_nothing")
    assert "names step 9, which is not here" in halted["why"]
    assert survivors(tree, "deepspeed") == [4, 5]
    assert daemon.stop()[0] == 0


# ---- invariants, in every layout's terms (pure) ---------------------------------------------

@st.composite
def pointers_strategy(draw: st.DrawFn, numbers: list[int]) -> list[Pointer]:
    out = []
    for filename, through in (("latest", True), ("checkpoint-9/trainer_state.json", False)):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            continue
        if kind == 1:
            out.append(Pointer(filename, None, "not JSON (half-written?)", through))
        elif kind == 2 or not numbers:
            out.append(Pointer(filename, draw(st.integers(0, 70)), None, through))
        else:
            out.append(Pointer(filename, draw(st.sampled_from(numbers)), None, through))
    return out


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), gated=st.booleans(), keep_last=st.integers(1, 4))
def test_no_pointed_step_and_nothing_when_unsure_is_ever_deleted(data: st.DataObject,
                                                                 gated: bool,
                                                                 keep_last: int) -> None:
    steps = data.draw(steps_strategy())
    consumers = data.draw(consumers_strategy())
    numbers = [e.number for e in steps if e.number is not None]
    pointers = data.draw(pointers_strategy(numbers))
    snap = Snapshot("/tree", 1, SCANNED_NS, tuple(steps), (), tuple(consumers), False,
                    tuple(pointers))
    policy = Policy(gated=gated, keep_last=keep_last)
    decided = plan(snap, policy)
    doomed = {d.entry.number for d in decided.doomed}
    facts = pointer_facts(pointers, set(numbers).__contains__)
    if facts.problem is not None:
        assert not doomed  # a pointer that names nothing usable: nothing deleted
        return
    assert not doomed & facts.pointed
    through = facts.complete_through
    if through is not None:  # above the tracker's step, nothing is complete: never superseded
        assert all(n is not None and (n <= through or e.complete)
                   for d in decided.doomed if d.reason is Reason.SUPERSEDED
                   for e, n in [(d.entry, d.entry.number)])
    # The daemon's index derives the same context from its ordered numbers.
    index = DirectoryIndex.from_snapshot(snap, policy)
    ctx = index.context(SCANNED_NS, next((p for p in pointers if not p.complete_through), None))
    assert ctx.newest_complete == decided.newest_complete
    assert ctx.pointed == facts.pointed and ctx.complete_through == through


def test_step_layout_is_the_protocol_exactly() -> None:
    assert STEP.name_of(5) == "step_5" and STEP.complete == ("STABLE",)
    assert STEP.parse("step_05") is not None and not isinstance(STEP.parse("step_05"), int)
    entries = (Entry("step_1", 1, True, False, 0, 1, 1),)
    assert plan(Snapshot("/t", 1, SCANNED_NS, entries), Policy(gated=False)).doomed == ()


def test_status_says_which_layout_it_read_and_why_it_refused_one(tmp_path: Path) -> None:
    tree = build(tmp_path / "a" / "run", "torchtitan", range(1, 4))
    mixed = build(tmp_path / "b" / "run", "hf", range(1, 3))
    build(mixed, "torchtitan", range(1, 3))
    text = run_janitor("status", "--layout", "auto", str(tree))
    assert "  layout:    torchtitan" in text.stdout
    doc = json.loads(run_janitor("status", "--layout", "auto", "--json", str(mixed)).stdout)
    report = doc["directories"][0]
    assert report["layout_problem"].startswith("layout auto: matches several layouts")
