"""Operator commands (issue 12, point 5): `janitor pin`/`unpin`, `janitor explain`, and
`janitor sweep --quiet`, on real trees; a running daemon never deletes a step pinned after it
indexed the step; `policy.rules_for` agrees with `policy.decide` on generated snapshots.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.daemon import Daemon
from helpers.options import run_inprocess
from helpers.run import Ran, can_drop_privileges, run_janitor
from helpers.tree import make_steps, step_numbers, tree_state, write_marker
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_properties import (
    SCANNED_NS,
    S,
    consumers_strategy,
    policies,
    snapshot,
    staging,
    steps_strategy,
)

from janitor import protocol
from janitor.fs import pins
from janitor.model import Consumer, Entry, ScanOptions
from janitor.ops.incremental import TrackedDirectory
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy, Reason, decide, planned, rules_for

PIN = protocol.PIN_FILE


def _tree(where: Path, numbers: range = range(10), loaded: int | None = 5) -> Path:
    """Complete steps, then (strictly after them) LOADED_STEP=`loaded`."""
    make_steps(where, numbers, files=1)
    if loaded is not None:
        write_marker(where, loaded)
    return where


def _cli(*argv: str | Path, env: dict[str, str] | None = None) -> Ran:
    return run_inprocess([str(a) for a in argv], env)


def _one_line(ran: Ran, code: int, *words: str) -> str:
    assert ran.code == code, ran
    assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: "), ran
    assert ran.stdout == "" and "Traceback" not in ran.stderr, ran
    for word in words:
        assert word in ran.err_lines[0], ran
    return ran.err_lines[0]


def _status_decisions(tree: Path) -> dict[str, dict[str, int]]:
    ran = run_janitor("status", "--json", tree)
    assert ran.code == 0, ran
    (directory,) = json.loads(ran.stdout)["directories"]
    return directory["decisions"]


def _explain(step: Path, *flags: str) -> dict[str, object]:
    ran = _cli("explain", "--json", step, *flags)
    assert ran.code == 0 and ran.stderr == "", ran
    document = json.loads(ran.stdout)
    assert document["schema"] == 1
    return document


def _applying(document: dict[str, object]) -> list[str]:
    rules = document["rules"]
    assert isinstance(rules, list)
    return [r["name"] for r in rules if r["applies"]]


# ---- pin and unpin -----------------------------------------------------------------------------

def test_pin_shows_at_once_in_sweep_and_status_and_unpin_removes_only_the_pin(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run")
    step_2 = tree / "step_2"
    ran = _cli("pin", step_2)
    assert (ran.code, ran.stdout, ran.stderr) == (0, f"pinned: {step_2}\n", "")
    st_pin = os.lstat(step_2 / PIN)
    assert stat.S_ISREG(st_pin.st_mode) and st_pin.st_size == 0
    again = _cli("pin", step_2)
    assert (again.code, again.stdout) == (0, f"already pinned: {step_2}\n")
    assert os.lstat(step_2 / PIN).st_ino == st_pin.st_ino  # not re-created

    # The pin changed step_2's times after the marker; it shows as pinned all the same.
    dry = run_janitor("sweep", "--dry-run", tree)
    assert dry.code == 3, dry
    line = next(x for x in dry.stdout.splitlines() if x.split()[:1] == ["step_2"])
    assert line.split()[1:3] == ["keep", "pinned"], dry.stdout
    decisions = _status_decisions(tree)
    assert decisions["keep:pinned"]["count"] == 1
    assert decisions["delete:superseded"]["count"] == 4
    explained = _explain(step_2)
    assert explained["decision"] == {"action": "keep", "reason": "pinned"}
    assert _applying(explained)[0] == "pinned"

    ran = _cli("unpin", step_2)
    assert (ran.code, ran.stdout, ran.stderr) == (0, f"unpinned: {step_2}\n", "")
    assert not os.path.lexists(step_2 / PIN)
    assert sorted(os.listdir(step_2)) == ["STABLE", "shard_0.bin"]  # only the pin went
    again = _cli("unpin", step_2)
    assert (again.code, again.stdout) == (0, f"not pinned: {step_2}\n")
    # Unpinning changed the step after the marker: kept until a consumer writes it again.
    assert _explain(step_2)["decision"] == {"action": "keep", "reason": "changed-after-marker"}
    write_marker(tree, 5)
    assert _explain(step_2)["decision"] == {"action": "delete", "reason": "superseded"}


def test_a_real_sweep_keeps_the_pinned_step(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run", loaded=None)
    assert _cli("pin", tree / "step_3").code == 0
    write_marker(tree, 8)
    ran = run_janitor("sweep", "--audit-log", "off", tree)
    assert ran.code == 3, ran
    assert step_numbers(tree) == [3, 8, 9]
    assert os.path.isfile(tree / "step_3" / PIN)


def test_pin_name_that_is_not_a_regular_file_is_refused_never_followed_nor_removed(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run")
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    (tree / "step_1" / PIN).mkdir()
    (tree / "step_2" / PIN).symlink_to(outside)
    (tree / "step_3" / PIN).symlink_to(tmp_path / "dangling")
    os.mkfifo(tree / "step_4" / PIN)
    before = tree_state(tmp_path)
    for number, what in ((1, "a directory"), (2, "a symlink"), (3, "a symlink"), (4, "a FIFO")):
        for command in ("pin", "unpin"):
            line = _one_line(_cli(command, tree / f"step_{number}"), 4, what, PIN,
                             "not a regular file")
            assert "remove it by hand" in line
    assert tree_state(tmp_path) == before
    # Any entry of that name pins its step (docs/protocol.md): all four are kept.
    decisions = _status_decisions(tree)
    assert decisions["keep:pinned"]["count"] == 4


@pytest.mark.parametrize("command", ["pin", "unpin", "explain"])
def test_bad_step_paths_are_one_line_each(tmp_path: Path, command: str) -> None:
    tree = _tree(tmp_path / "run")
    (tree / "step_11").write_bytes(b"a file")
    (tree / "step_12").symlink_to("step_3")
    before = tree_state(tmp_path)
    cases = [
        (tree / "step_99", 2, "does not exist"),
        (tmp_path / "nowhere" / "step_1", 2, "does not exist"),
        (tree / "step_11", 2, "not a directory"),
        (tree / "step_12", 2, "is a symlink"),
        (tree / "step_11" / "step_1", 2, "not a directory"),
        (f"{tree}/step_3/", 2, "trailing slash"),
        (tree / "step_03", 2, "leading zero"),
        (tree / "STEP_3", 2, "not a step directory name"),
        (tree / "step_3" / "..", 2, "not a step directory name"),
    ]
    for path, code, words in cases:
        _one_line(_cli(command, path), code, words)
    assert tree_state(tmp_path) == before


# Names that look almost like steps, and paths built around the real ones.
_ALMOST = st.sampled_from([
    "step_01", "step_", "step_-1", "step_+1", "step_1 ", " step_1", "step_1\n", "step_\n1",
    "step_\u0661", "step_\uff11", "step_\u0967\u0968", "step_1.tmp", "step_1.0", "STEP_1",
    "Step_1", "step-1", "step1",
    "step_99999999999999999999", "step_1e3", "..", ".", "", "step_12", "step_13",
    ".janitor-pin", "LOADED_STEP", ".janitor-trash", "step_\udcff", "step_1\x00",
])
_SUFFIXES = st.sampled_from(["", "/", "//", "/.", "/..", "/./", "/../step_1", "\n", "/\n"])


@st.composite
def hostile_paths(draw: st.DrawFn) -> str:
    """A path in or near the tree that names no real step directory of it."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        path = "TREE/" + draw(_ALMOST)
    elif kind == 1:
        path = "TREE/step_" + draw(st.sampled_from(["1", "2", "3"])) + draw(_SUFFIXES.filter(bool))
    elif kind == 2:
        path = "TREE/" + draw(st.text(min_size=0, max_size=12))
    else:
        path = draw(st.sampled_from(["TREE/step_12/step_1", "TREE/step_13", "TREE/step_1/x",
                                     "TREE/missing/step_1", "TREE", "TREE/..", "step_1\nstep_2"]))
    return path


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=hostile_paths(), command=st.sampled_from(["pin", "unpin", "explain"]))
def test_hostile_step_paths_give_one_line_and_touch_nothing(tmp_path: Path, raw: str,
                                                            command: str) -> None:
    tree = tmp_path / "run"
    if not tree.exists():
        _tree(tree, range(4))
        (tree / "step_12").symlink_to("step_1")
        (tree / "step_13").symlink_to(tmp_path / "dangling")
    path = raw.replace("TREE", str(tree))
    name = path.rpartition("/")[2]
    if isinstance(protocol.parse_step_name(name), int) and os.path.isdir(path) \
            and not os.path.islink(path):
        return  # a real step after all (e.g. "/../step_1"): not hostile
    before = tree_state(tmp_path)
    ran = _cli(command, path)
    assert ran.code in (2, 4, 5), (path, ran)
    assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: "), (path, ran)
    assert ran.stdout == "" and "Traceback" not in ran.stderr, (path, ran)
    assert tree_state(tmp_path) == before, path


def test_a_path_through_dot_dot_names_the_step_the_kernel_finds(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run")
    ran = _cli("pin", f"{tree}/step_3/../step_4")
    assert ran.code == 0, ran
    assert os.path.isfile(tree / "step_4" / PIN)


def test_pin_refuses_as_another_user_in_one_line(shared_tmp: Path) -> None:
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv to run as uid 65534")
    tree = _tree(shared_tmp / "run")
    assert _cli("pin", tree / "step_7").code == 0
    before = tree_state(shared_tmp)
    ran = run_janitor("pin", tree / "step_2", as_nobody=True)
    _one_line(ran, 5, "permission denied", "create .janitor-pin", "run as a user who may write")
    ran = run_janitor("unpin", tree / "step_7", as_nobody=True)
    _one_line(ran, 5, "permission denied", "remove its .janitor-pin")
    assert tree_state(shared_tmp) == before
    # explain only reads: it works for that user, and says what the owner's tree holds.
    ran = run_janitor("explain", tree / "step_7", as_nobody=True)
    assert ran.code == 0 and ran.stdout.startswith(f"{tree}/step_7: keep (pinned)"), ran
    tree.chmod(0o700)
    for command in ("pin", "unpin", "explain"):
        _one_line(run_janitor(command, tree / "step_2", as_nobody=True), 5, "permission denied")
    tree.chmod(0o755)
    assert tree_state(shared_tmp) == before


def test_pin_and_unpin_on_a_read_only_filesystem(
        tmp_path: Path, tmpfs_mount: Callable[..., Path]) -> None:
    where = tmpfs_mount(tmp_path / "ro")
    tree = _tree(where / "run")
    assert _cli("pin", tree / "step_7").code == 0
    done = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.decode().strip()}")
    before = tree_state(where)
    _one_line(_cli("pin", tree / "step_2"), 5, "read-only filesystem")
    _one_line(_cli("unpin", tree / "step_7"), 5, "read-only filesystem")
    ran = _cli("pin", tree / "step_7")  # already pinned: nothing to write
    assert (ran.code, ran.stdout) == (0, f"already pinned: {tree}/step_7\n"), ran
    assert _explain(tree / "step_7")["decision"] == {"action": "keep", "reason": "pinned"}
    assert tree_state(where) == before


# ---- explain -----------------------------------------------------------------------------------

def test_explain_lists_every_rule_that_applies_with_its_values(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    make_steps(tree, range(13), files=1)
    make_steps(tree, [13], complete=False)
    (tree / "LOADED_STEP.eval").write_bytes(b"11\n")
    write_marker(tree, 10)
    flags = ("--interval-to-keep", "5", "--keep-last", "3")

    ten = _explain(tree / "step_10", *flags)
    assert ten["decision"] == {"action": "keep", "reason": "interval-multiple"}
    assert _applying(ten) == ["interval-multiple", "keep-last", "at-or-above-loaded",
                              "superseded"]
    rules = {r["name"]: r for r in ten["rules"]}  # type: ignore[union-attr]
    assert rules["interval-multiple"]["detail"] == "10 % 5 = 0"
    assert rules["keep-last"]["detail"].startswith("number 3 of 13 complete steps")
    assert rules["at-or-above-loaded"]["detail"] == \
        "step 10 >= loaded step 10 (the lowest of LOADED_STEP=10, LOADED_STEP.eval=11)"
    assert rules["no-valid-marker"]["detail"] == \
        "every marker valid: LOADED_STEP=10, LOADED_STEP.eval=11"
    assert ten["policy_source"] == "flags" and ten["daemon"] == {"running": False}

    seven = _explain(tree / "step_7", *flags)
    assert seven["decision"] == {"action": "delete", "reason": "superseded"}
    assert _applying(seven) == ["superseded"]
    rules = {r["name"]: r for r in seven["rules"]}  # type: ignore[union-attr]
    assert rules["changed-after-marker"]["detail"].startswith("changed 2")
    assert " < marker written " in rules["changed-after-marker"]["detail"]
    assert rules["interval-multiple"]["detail"] == "7 % 5 = 2"

    thirteen = _explain(tree / "step_13", *flags)
    assert thirteen["decision"] == {"action": "keep", "reason": "in-progress"}
    rules = {r["name"]: r for r in thirteen["rules"]}  # type: ignore[union-attr]
    assert rules["in-progress"]["detail"] == \
        "incomplete (no STABLE), newer than the newest complete step 12"
    assert _explain(tree / "step_12", *flags)["decision"]["reason"] == "newest-complete"  # type: ignore[index]

    text = _cli("explain", tree / "step_10", *flags)
    assert text.code == 0, text
    lines = text.stdout.splitlines()
    assert lines[0] == f"{tree}/step_10: keep (interval-multiple)"
    assert lines[-1] == "decision: keep, reason interval-multiple"
    rule_lines = [x for x in lines if x.startswith(("  applies", "  -"))]
    assert len(rule_lines) == 17  # every rule of decide: pointed-to, dependencies, relief too
    assert [x.split()[1] for x in rule_lines if x.startswith("  applies")] == _applying(ten)
    assert sum("<- decides" in x for x in rule_lines) == 1
    assert "<- decides" in next(x for x in rule_lines if "interval-multiple" in x)

    (tree / "LOADED_STEP.eval").write_bytes(b"99\n")
    halted = _explain(tree / "step_7")
    assert halted["decision"] == {"action": "keep", "reason": "no-valid-marker"}
    rules = {r["name"]: r for r in halted["rules"]}  # type: ignore[union-attr]
    assert "beyond the newest step 13" in rules["no-valid-marker"]["detail"]


def test_explain_a_foreign_step_and_outside_a_managed_directory(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run")
    inner = tree / "step_3" / "step_1"
    inner.mkdir()
    _one_line(_cli("explain", inner), 2, "not in a managed directory")
    trash_like = tree / protocol.TRASH_DIR / "step_1"
    trash_like.mkdir(parents=True)
    _one_line(_cli("explain", trash_like), 2, "not in a managed directory")
    os.rmdir(trash_like)
    os.rmdir(tree / protocol.TRASH_DIR)
    unreadable = tree / "step_4"
    if os.geteuid() == 0:  # root reads anything: a mount point is foreign for everyone
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                               str(unreadable)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        try:
            document = _explain(unreadable)
        finally:
            subprocess.run(["umount", "-l", str(unreadable)], check=False)
        assert document["decision"] is None and document["rules"] == []
        assert document["foreign"] == "a mount point (another filesystem)"


# ---- sweep --quiet -----------------------------------------------------------------------------

def test_sweep_quiet_prints_only_deletions_and_problems(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run")
    (tree / "step_01").mkdir()
    dry = run_janitor("sweep", "--dry-run", "--quiet", tree)
    assert dry.code == 3, dry
    assert [x.split()[:3] for x in dry.stdout.splitlines()] == [
        [f"{tree}/step_{n}", "would-delete", "superseded"] for n in range(5)]
    assert dry.err_lines == [f"janitor: {tree}: step_01: foreign, never touched "
                             "(step number: leading zero (not canonical))"]
    by_env = run_janitor("sweep", "--dry-run", tree, env={"JANITOR_QUIET": "yes"})
    assert by_env.stdout == dry.stdout
    assert _one_line(run_janitor("sweep", "--dry-run", tree, env={"JANITOR_QUIET": " "}), 2,
                     "JANITOR_QUIET")
    real = run_janitor("sweep", "-q", "--audit-log", "off", tree)
    assert real.code == 3, real
    assert [x.split()[:3] for x in real.stdout.splitlines()] == [
        [f"{tree}/step_{n}", "deleted", "superseded"] for n in range(5)]
    assert step_numbers(tree) == [5, 6, 7, 8, 9]
    nothing = run_janitor("sweep", "-q", "--audit-log", "off", tree)
    assert (nothing.code, nothing.stdout) == (0, ""), nothing
    # --json is unchanged by --quiet.
    document = json.loads(run_janitor("sweep", "--json", "-q", "--dry-run", tree).stdout)
    assert len(document["directories"][0]["decisions"]) == 5


# ---- rules_for agrees with decide ----------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(steps=steps_strategy(), consumers=consumers_strategy(), policy=policies,
       stage=st.lists(st.integers(-2000, 10), max_size=3),
       relieved=st.sets(st.integers(0, 60), max_size=6))
def test_the_first_applying_rule_is_decides_reason(steps: list[Entry], consumers: list[Consumer],
                                                   policy: Policy, stage: list[int],
                                                   relieved: set[int]) -> None:
    entries = steps + [staging(f"{i}.x", SCANNED_NS + ago * S) for i, ago in enumerate(stage)]
    snap = snapshot(entries, consumers)
    # Any set of steps chosen by --pressure relieve (decide relieves only the soft-kept ones
    # the gate lets go; rules_for must say the same).
    decided, context, complete = planned(snap, policy, frozenset(relieved))
    for decision in decided.decisions:
        rules = rules_for(decision.entry, policy, context, complete_desc=complete,
                          consumers=snap.consumers, complete_markers=("STABLE",))
        assert decide(decision.entry, policy, context) == decision
        first = next(r for r in rules if r.applies)
        assert first.verdict == decision.reason, (decision, rules)
        assert first.delete == decision.delete
        assert rules[-1].applies and rules[-1].delete  # the deletion rule closes every list
        assert len({r.name for r in rules}) == len(rules) == 17
        assert all(r.detail and "\n" not in r.detail for r in rules)


# ---- a running daemon and a pin made after it indexed the step -----------------------------------

@pytest.mark.slow
def test_a_running_daemon_never_deletes_a_step_pinned_after_it_indexed_it(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path / "run", loaded=0)
    daemon = Daemon(["--log-level", "debug", "--rescan-interval", "3600", "--audit-log", "off",
                     tree])
    try:
        daemon.wait_event("ready")
        assert step_numbers(tree) == list(range(10))  # marker at 0: nothing deletable yet
        ran = run_janitor("pin", tree / "step_2")
        assert ran.code == 0, ran
        write_marker(tree, 5)  # after the pin: by its times alone step_2 would be deletable
        wait_until(lambda: step_numbers(tree) == [2, 5, 6, 7, 8, 9], 20, "steps 0, 1, 3, 4 to go")
        decided = wait_until(lambda: [e for e in daemon.named("pass_decided")
                                      if e["reasons"].get("pinned")], 10, "a pinned decision")
        assert decided[-1]["reasons"] == {"pinned": 1, "superseded": 4}
        wait_until(lambda: {e["step"] for e in daemon.named("deleted")} == {0, 1, 3, 4}, 20,
                   "the reclaim of steps 0, 1, 3, 4 to be logged")
        held = _status_decisions(tree)
        assert held["keep:pinned"]["count"] == 1
        explained = _explain(tree / "step_2")
        assert explained["policy_source"] == "holder"
        assert explained["decision"] == {"action": "keep", "reason": "pinned"}

        ran = run_janitor("unpin", tree / "step_2")
        assert ran.code == 0, ran
        # The unpin changed step_2 after marker 5: kept until the consumer writes again.
        assert _explain(tree / "step_2")["decision"]["reason"] == "changed-after-marker"  # type: ignore[index]
        write_marker(tree, 6)  # now deletable (the daemon may act before any look of ours)
        wait_until(lambda: step_numbers(tree) == [6, 7, 8, 9], 20, "step_2 and step_5 to go")
        gone = wait_until(lambda: daemon.named("deleted", step=2), 20, "step_2's deleted event")
        assert gone[0]["reason"] == "superseded"
    finally:
        assert daemon.stop() == 0
        daemon.kill()


def test_a_pin_made_between_the_plan_and_the_rename_is_kept_and_read_again(
        tmp_path: Path) -> None:
    """The daemon's own path, step by step: the plan dooms step_2, the pin lands before its
    rename, the rename-time check skips it (changed since the scan), and every later pass
    reads it again from disk and keeps it: as changed after the marker, then as pinned."""
    tree = _tree(tmp_path / "run", loaded=0)
    policy, options = Policy(), ScanOptions()
    managed = ManagedDirectory(str(tree), dry_run=False, policy=policy, options=options)
    with TrackedDirectory(managed) as tracked:
        assert tracked.full_pass().trashed == []
        write_marker(tree, 5)
        tracked.index.put("LOADED_STEP", tracked._read("LOADED_STEP"))
        snap, decided = tracked._look(time.time_ns(), {"LOADED_STEP"})
        assert {d.entry.number for d in decided.doomed} == {0, 1, 2, 3, 4}
        assert pins.pin(str(tree / "step_2"))
        result = managed.execute(snap, decided)
        assert {t.entry.number for t in result.trashed} == {0, 1, 3, 4}
        assert [(s.entry.name, s.why) for s in result.skipped] == [
            ("step_2", "changed since the scan")]
        for trashed in result.trashed:
            tracked.index.put(trashed.entry.name, None)

        again = tracked.changed_pass([])  # any later pass: read again, kept
        assert again is not None and again.trashed == []
        reasons = {d.entry.name: d.reason for d in again.plan.decisions}
        assert reasons["step_2"] == Reason.CHANGED_AFTER_MARKER
        write_marker(tree, 6)
        after = tracked.changed_pass(["LOADED_STEP"])
        assert after is not None
        reasons = {d.entry.name: d.reason for d in after.plan.decisions}
        assert reasons["step_2"] == Reason.PINNED
        assert {t.entry.number for t in after.trashed} == {5}
    assert step_numbers(tree) == [2, 6, 7, 8, 9]


def test_pin_says_so_when_the_step_was_moved_away_while_it_was_pinned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A janitor's rename into the trash between `pin`'s open and its last check: the pin went
    into a step that is gone from the tree, and `pin` says so instead of "pinned"."""
    tree = _tree(tmp_path / "run")
    real_fsync, moved = os.fsync, []

    def fsync_then_move(fd: int) -> None:
        real_fsync(fd)
        if not moved:
            os.rename(tree / "step_2", tree / "elsewhere")
            moved.append(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_move)
    with pytest.raises(pins.PinError) as refused:
        pins.pin(str(tree / "step_2"))
    assert refused.value.code == 5
    assert "was moved away (deleted by a janitor?) while it was being pinned" in refused.value.line


def test_explain_under_pressure_is_the_sweeps_decision(tmp_path: Path) -> None:
    """explain --pressure relieve decides every step as `sweep --dry-run` with the same budget
    does, and names the relieved rule for the steps it takes."""
    tree = tmp_path / "run"
    for number in range(1, 9):
        step = tree / f"step_{number}"
        step.mkdir(parents=True)
        (step / "w.bin").write_bytes(os.urandom(200 * 1024))
        (step / "STABLE").touch()
    write_marker(tree, 8)
    flags = ("--keep-last", "6", "--max-bytes", "1M", "--pressure", "relieve")
    swept = json.loads(run_janitor("sweep", "--dry-run", "--json", "--audit-log", "off", *flags,
                                   tree).stdout)
    reasons = {d["step"]: d["reason"] for d in swept["directories"][0]["decisions"]}
    assert "relieved" in reasons.values()
    for number, reason in reasons.items():
        explained = _explain(tree / f"step_{number}", *flags)
        assert explained["decision"]["reason"] == reason  # type: ignore[index]
        assert explained["relieved"] == sorted(n for n, r in reasons.items() if r == "relieved")
        if reason == "relieved":
            assert _applying(explained)[0] == "relieved"
    plain = _explain(tree / "step_3", "--keep-last", "6")
    assert plain["decision"]["reason"] == "keep-last" and plain["relieved"] == []  # type: ignore[index]
