"""`janitor sweep` through the real console script: dry run, JSON, every bad input of issue 2
(one stderr line, the documented exit code, nothing deleted it is unsure of), environment
configuration and the second-instance refusal.

Run with `-s` to see the table of bad inputs: `BAD-INPUT <case> exit=<code> <line>`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.run import Ran, can_drop_privileges, run_janitor
from helpers.tree import build_tree, make_step, step_numbers, tree_state, write_marker
from helpers.wait import wait_until

from janitor import exitcodes, protocol


def one_line(ran: Ran, case: str) -> str:
    """The single stderr line a bad input must print; recorded for the closing note's table."""
    assert len(ran.err_lines) == 1, f"{case}: expected one stderr line, got {ran.stderr!r}"
    line = ran.err_lines[0]
    assert line.startswith("janitor: "), line
    assert "Traceback" not in ran.stderr
    print(f"\nBAD-INPUT\t{case}\texit={ran.code}\t{line}")
    return line


def without_atimes_and_root(state: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {k: v for k, v in state.items() if k != "."}


# ---- dry run and JSON -------------------------------------------------------------------------

# The partial step and the staging dir of rich_tree count as abandoned only with no grace period.
NO_GRACE = {"JANITOR_PARTIAL_GRACE": "0"}


def rich_tree(path: Path) -> Path:
    """Deletable steps, kept steps, a pin, a partial, staging and foreign names."""
    build_tree(path, 6, loaded=None, files=3, size=3000, incomplete=(2,))
    (path / "step_3" / protocol.PIN_FILE).write_bytes(b"")
    (path / (protocol.STAGING_PREFIX + "old")).mkdir()
    (path / "step_01").mkdir()
    (path / "step_4x").write_bytes(b"")
    (path / "notes.txt").write_bytes(b"hello")
    write_marker(path, 5)
    write_marker(path, 6, "LOADED_STEP.eval")
    return path


def test_dry_run_changes_nothing_at_all(tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    (tree / "sub").mkdir()
    build_tree(tree / "sub", 3, loaded=3)
    before = tree_state(tree)
    ran = run_janitor("sweep", "--dry-run", tree, env=NO_GRACE)
    assert ran.code == exitcodes.DELETED, ran
    assert without_atimes_and_root(tree_state(tree)) == without_atimes_and_root(before)
    assert tree_state(tree)["."][:5] == before["."][:5]
    for directory in (tree, tree / "sub"):
        assert not (directory / protocol.TRASH_DIR).exists()
        assert not (directory / protocol.LOCK_FILE).exists()
    assert "would-delete" in ran.stdout
    assert "(dry run: nothing changed)" in ran.stdout
    # Also through JANITOR_DRY_RUN, and with leftover trash that a real run would reclaim.
    (tree / protocol.TRASH_DIR / "9.1.1.0").mkdir(parents=True)
    before = tree_state(tree)
    ran = run_janitor("sweep", tree, env={"JANITOR_DRY_RUN": "1", **NO_GRACE})
    assert ran.code == exitcodes.DELETED, ran
    assert tree_state(tree) == before


def test_dry_run_output_matches_the_real_run(tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    dry = run_janitor("sweep", "--dry-run", "--json", tree, env=NO_GRACE)
    real = run_janitor("sweep", "--json", tree, env=NO_GRACE)
    assert (dry.code, real.code) == (exitcodes.DELETED, exitcodes.DELETED), (dry, real)
    dry_doc, real_doc = json.loads(dry.stdout), json.loads(real.stdout)
    (dry_dir,), (real_dir,) = dry_doc["directories"], real_doc["directories"]
    assert dry_dir["deleted"] == real_dir["deleted"]
    assert [(d["name"], d["action"], d["reason"]) for d in dry_dir["decisions"]] == \
        [(d["name"], d["action"], d["reason"]) for d in real_dir["decisions"]]


def test_json_matches_the_tree(tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    ran = run_janitor("sweep", "--json", "--dry-run", tree, env=NO_GRACE)
    assert ran.code == exitcodes.DELETED, ran
    doc = json.loads(ran.stdout)
    assert doc["dry_run"] is True and doc["exit_code"] == exitcodes.DELETED
    assert doc["policy"]["keep_last"] == 1 and doc["policy"]["gated"] is True
    (directory,) = doc["directories"]
    assert directory["path"] == str(tree)
    assert directory["loaded_step"] == 5 and directory["newest_complete"] == 6
    assert [(c["file"], c["step"]) for c in directory["consumers"]] == [
        ("LOADED_STEP", 5), ("LOADED_STEP.eval", 6)]
    decisions = {d["name"]: (d["action"], d["reason"]) for d in directory["decisions"]}
    assert decisions == {
        "step_1": ("delete", "superseded"),
        "step_2": ("delete", "abandoned-partial"),
        "step_3": ("keep", "pinned"),
        "step_4": ("delete", "superseded"),
        "step_5": ("keep", "at-or-above-loaded"),
        "step_6": ("keep", "newest-complete"),
        protocol.STAGING_PREFIX + "old": ("delete", "abandoned-staging"),
    }
    assert {f["name"] for f in directory["foreign"]} == {"step_01", "step_4x"}
    assert sorted(directory["deleted"]) == sorted(
        ["step_1", "step_2", "step_4", protocol.STAGING_PREFIX + "old"])
    sizes = {d["name"]: d["bytes"] for d in directory["decisions"]}
    for name, size in sizes.items():
        blocks = sum(p.lstat().st_blocks * 512 for p in [tree / name, *(tree / name).rglob("*")])
        assert size == blocks, name
    assert directory["freed_bytes"] == doc["freed_bytes"] == sum(
        sizes[n] for n in directory["deleted"])
    assert doc["deleted"] == 4


def test_real_sweep_deletes_what_it_said(tmp_path: Path) -> None:
    tree = rich_tree(tmp_path / "tree")
    ran = run_janitor("sweep", tree, env=NO_GRACE)
    assert ran.code == exitcodes.DELETED, ran
    assert step_numbers(tree) == [3, 5, 6]
    assert not (tree / (protocol.STAGING_PREFIX + "old")).exists()
    assert sorted(os.listdir(tree / protocol.TRASH_DIR)) == []
    assert re.search(r"^total: freed \d", ran.stdout, re.MULTILINE)
    again = run_janitor("sweep", tree, env=NO_GRACE)
    assert again.code == exitcodes.NOTHING_TO_DO, again


# ---- bad markers: one line, exit 4, nothing deleted -----------------------------------------

def _marker_symlink(path: Path) -> None:
    (path / "real-marker").write_bytes(b"3\n")
    (path / "LOADED_STEP").symlink_to(path / "real-marker")


MARKER_CASES: dict[str, Callable[[Path], object]] = {
    "missing": lambda p: None,
    "empty": lambda p: write_marker(p, b""),
    "abc": lambda p: write_marker(p, b"abc"),
    "-3": lambda p: write_marker(p, b"-3"),
    "12abc": lambda p: write_marker(p, b"12abc"),
    "space-12": lambda p: write_marker(p, b" 12"),
    "arabic-indic-12": lambda p: write_marker(p, "١٢".encode()),
    "25-digits": lambda p: write_marker(p, b"1" * 25),
    "directory": lambda p: (p / "LOADED_STEP").mkdir(),
    "symlink": _marker_symlink,
    "fifo": lambda p: os.mkfifo(p / "LOADED_STEP"),
    "half-written-tmp-only": lambda p: write_marker(p, b"", "LOADED_STEP.tmp"),
    "second-consumer-bad": lambda p: (write_marker(p, 3),
                                      write_marker(p, b"x", "LOADED_STEP.eval")),
    "beyond-newest-step": lambda p: write_marker(p, 99),
}


@pytest.mark.parametrize("case", list(MARKER_CASES))
def test_bad_marker_refuses_and_deletes_nothing(tmp_path: Path, case: str) -> None:
    build_tree(tmp_path, 3, loaded=None)
    MARKER_CASES[case](tmp_path)
    before = tree_state(tmp_path)
    ran = run_janitor("sweep", tmp_path)
    line = one_line(ran, f"marker {case}")
    assert ran.code == exitcodes.REFUSED
    assert line.startswith(f"janitor: {tmp_path}: ")
    assert "deleting nothing here" in line
    assert step_numbers(tmp_path) == [1, 2, 3]
    after = tree_state(tmp_path)
    assert {k: v for k, v in after.items() if protocol.looks_like_step(k.split("/")[0])} == \
        {k: v for k, v in before.items() if protocol.looks_like_step(k.split("/")[0])}


def test_unreadable_marker_as_non_root(shared_tmp: Path) -> None:
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv to run the janitor as uid 65534")
    build_tree(shared_tmp, 3, loaded=3)
    (shared_tmp / "LOADED_STEP").chmod(0o000)
    for dirpath, dirnames, filenames in os.walk(shared_tmp):
        for name in [".", *dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), 65534, 65534)
    ran = run_janitor("sweep", shared_tmp, as_nobody=True)
    line = one_line(ran, "marker unreadable (mode 000, uid 65534)")
    assert ran.code == exitcodes.REFUSED
    assert "LOADED_STEP: unreadable (permission denied)" in line
    assert step_numbers(shared_tmp) == [1, 2, 3]


# ---- foreign step names: one line each, never touched, the rest proceeds --------------------

def _foreign_symlink(path: Path) -> None:
    outside = path.parent / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"p")
    (path / "step_5").symlink_to(outside, target_is_directory=True)


NAME_CASES: dict[str, Callable[[Path], object]] = {
    "step_01": lambda p: make_step(p, 1, files=1).rename(p / "step_01"),
    "step_1.tmp": lambda p: (p / "step_1.tmp").mkdir(),
    "step_": lambda p: (p / "step_").mkdir(),
    "step_-1": lambda p: (p / "step_-1").mkdir(),
    "STEP_3": lambda p: (p / "STEP_3").mkdir(),
    "file step_4": lambda p: (p / "step_4").write_bytes(b"not a directory"),
    "symlink step_5": _foreign_symlink,
    "step_1 newline": lambda p: (p / "step_1\n").mkdir(),
    "step_ invalid utf-8": lambda p: os.mkdir(os.path.join(os.fsencode(p), b"step_\xff")),
}


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_foreign_name_is_reported_once_and_never_touched(tmp_path: Path, case: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    NAME_CASES[case](tree)
    for number in (10, 11):
        make_step(tree, number)
    write_marker(tree, 11)
    foreign_before = {k: v for k, v in tree_state(tmp_path).items()
                      if not k.startswith(("tree/step_1", "tree/step_10", "tree/step_11"))
                      or k.startswith(("tree/step_1.", "tree/step_1\n"))}
    foreign_before.pop("tree", None)
    foreign_before.pop(".", None)
    ran = run_janitor("sweep", tree)
    line = one_line(ran, f"name {case}")
    assert ran.code == exitcodes.DELETED  # step_10 is below the loaded step: still deleted
    assert step_numbers(tree) == [11]
    assert "never touched" in line
    after = tree_state(tmp_path)
    for key, value in foreign_before.items():
        if key.startswith("tree/" + protocol.TRASH_DIR):
            continue
        assert after.get(key) == value, key


# ---- trees --------------------------------------------------------------------------------------

def test_path_does_not_exist(tmp_path: Path) -> None:
    ran = run_janitor("sweep", tmp_path / "missing")
    one_line(ran, "tree does not exist")
    assert ran.code == exitcodes.USAGE


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    ran = run_janitor("sweep", tmp_path / "file")
    one_line(ran, "tree is a file")
    assert ran.code == exitcodes.USAGE


@pytest.mark.parametrize("root", ["/", "/root", "/home", "/tmp", "/usr"])
def test_system_roots_are_refused(root: str) -> None:
    ran = run_janitor("sweep", root)
    line = one_line(ran, f"tree is {root}")
    assert ran.code == exitcodes.REFUSED
    assert "point the janitor at the checkpoint directory itself" in line


def test_home_directory_root_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    build_tree(home, 3, loaded=3)
    before = tree_state(home)
    ran = run_janitor("sweep", home, env={"HOME": str(home)})
    line = one_line(ran, "tree is a home directory ($HOME)")
    assert ran.code == exitcodes.REFUSED
    assert "is a home directory" in line
    assert tree_state(home) == before


def test_unwritable_tree_as_non_root(shared_tmp: Path) -> None:
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv to run the janitor as uid 65534")
    build_tree(shared_tmp, 3, loaded=3)
    before = tree_state(shared_tmp)
    ran = run_janitor("sweep", shared_tmp, as_nobody=True)
    line = one_line(ran, "tree unwritable (uid 65534, root-owned)")
    assert ran.code == exitcodes.ERROR
    assert "permission denied" in line
    assert tree_state(shared_tmp) == before
    dry = run_janitor("sweep", "--dry-run", shared_tmp, as_nobody=True)
    assert dry.code == exitcodes.DELETED, dry


def test_read_only_filesystem(tmp_path: Path, tmpfs_mount: Callable[..., Path]) -> None:
    tree = tmpfs_mount(tmp_path / "ro")
    build_tree(tree, 3, loaded=3)
    done = subprocess.run(["mount", "-o", "remount,ro", str(tree)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.decode().strip()}")
    before = tree_state(tree)
    ran = run_janitor("sweep", tree)
    line = one_line(ran, "tree on a read-only filesystem")
    assert ran.code == exitcodes.ERROR
    assert "read-only filesystem" in line
    assert tree_state(tree) == before


def test_mount_point_inside_a_doomed_step(tmp_path: Path,
                                          tmpfs_mount: Callable[..., Path]) -> None:
    build_tree(tmp_path, 3, loaded=None)
    inner = tmpfs_mount(tmp_path / "step_1" / "mnt")
    (inner / "data.bin").write_bytes(b"d" * 100)
    write_marker(tmp_path, 3)
    mounted = tree_state(inner)
    ran = run_janitor("sweep", tmp_path)
    line = one_line(ran, "mount point inside step_1")
    # A step that cannot be moved is an operation failure (sweep._code, commit 10372aa): 5.
    assert ran.code == exitcodes.ERROR
    assert "step_1" in line and "mount point" in line
    assert step_numbers(tmp_path) == [1, 3]
    assert os.path.ismount(inner) and tree_state(inner) == mounted


def test_step_that_is_a_mount_point(tmp_path: Path, tmpfs_mount: Callable[..., Path]) -> None:
    build_tree(tmp_path, 3, loaded=None)
    inner = tmpfs_mount(tmp_path / "step_2")
    (inner / "data.bin").write_bytes(b"d")
    make_step(tmp_path, 4)
    write_marker(tmp_path, 4)
    ran = run_janitor("sweep", tmp_path)
    line = one_line(ran, "step_2 is a mount point")
    assert "step_2" in line and "mount point" in line
    assert ran.code == exitcodes.DELETED
    assert step_numbers(tmp_path) == [2, 4]
    assert (inner / "data.bin").read_bytes() == b"d"


# ---- options and environment --------------------------------------------------------------------

@pytest.mark.parametrize(("case", "args", "env"), [
    ("--interval-to-keep 0", ["--interval-to-keep", "0"], {}),
    ("--interval-to-keep -2", ["--interval-to-keep", "-2"], {}),
    ("--keep-last -1", ["--keep-last", "-1"], {}),
    ("--keep-last 0", ["--keep-last", "0"], {}),
    ("--keep-last abc", ["--keep-last", "abc"], {}),
    ("--partial-grace -1", ["--partial-grace", "-1"], {}),
    ("--complete-marker a/b", ["--complete-marker", "a/b"], {}),
    ("--no-such-option", ["--no-such-option"], {}),
    ("JANITOR_KEEP_LAST=abc", [], {"JANITOR_KEEP_LAST": "abc"}),
    ("JANITOR_KEEP_LAST=0", [], {"JANITOR_KEEP_LAST": "0"}),
    ("JANITOR_INTERVAL_TO_KEEP=-1", [], {"JANITOR_INTERVAL_TO_KEEP": "-1"}),
    ("JANITOR_INTERVAL_TO_KEEP=x", [], {"JANITOR_INTERVAL_TO_KEEP": "x"}),
    ("JANITOR_GATE=maybe", [], {"JANITOR_GATE": "maybe"}),
])
def test_bad_options_are_usage_errors(tmp_path: Path, case: str, args: list[str],
                                      env: dict[str, str]) -> None:
    build_tree(tmp_path, 3, loaded=3)
    before = tree_state(tmp_path)
    ran = run_janitor("sweep", *args, tmp_path, env=env)
    line = one_line(ran, case)
    assert ran.code == exitcodes.USAGE
    assert line.startswith("janitor: error: ")
    assert tree_state(tmp_path) == before


def test_no_path_is_a_usage_error() -> None:
    ran = run_janitor("sweep")
    one_line(ran, "no PATH")
    assert ran.code == exitcodes.USAGE


@pytest.mark.parametrize(("env", "kept"), [
    ({}, [8, 9]),
    ({"JANITOR_INTERVAL_TO_KEEP": "3"}, [3, 6, 8, 9]),
    ({"JANITOR_KEEP_LAST": "4"}, [6, 7, 8, 9]),
    ({"JANITOR_GATE": "false", "JANITOR_KEEP_LAST": "1"}, [9]),
    ({"JANITOR_COMPLETE_MARKER": ".finished"}, list(range(1, 10))),
])
def test_environment_configures_the_sweep(tmp_path: Path, env: dict[str, str],
                                          kept: list[int]) -> None:
    build_tree(tmp_path, 9, loaded=8)
    ran = run_janitor("sweep", tmp_path, env={**env, "JANITOR_PARTIAL_GRACE": "0"})
    assert ran.stderr == "", ran
    assert step_numbers(tmp_path) == kept


def test_env_roots(tmp_path: Path) -> None:
    build_tree(tmp_path, 3, loaded=3)
    ran = run_janitor("sweep", env={"JANITOR_ROOTS": str(tmp_path)})
    assert ran.code == exitcodes.DELETED, ran
    assert step_numbers(tmp_path) == [3]


# ---- one deleter per tree -----------------------------------------------------------------------

_HOLDER = """
import sys
from janitor.fs import lock
from janitor.fs.scan import open_directory
fd = open_directory(sys.argv[1])
held = lock.acquire(fd, sys.argv[1], {"keep_last": 1})
print("held", flush=True)
sys.stdin.read()
"""


def test_second_instance_is_refused_while_dry_run_still_works(tmp_path: Path) -> None:
    build_tree(tmp_path, 4, loaded=4)
    repo = str(Path(__file__).resolve().parent.parent)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": repo})
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        before = tree_state(tmp_path)
        ran = run_janitor("sweep", tmp_path)
        line = one_line(ran, "second instance (lock held)")
        assert ran.code == exitcodes.REFUSED
        assert f"pid {holder.pid} on " in line
        assert "another janitor holds .janitor.lock" in line
        assert tree_state(tmp_path) == before
        dry = run_janitor("sweep", "--dry-run", tmp_path)
        assert dry.code == exitcodes.DELETED, dry
        assert dry.stderr == ""
        assert tree_state(tmp_path) == before
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    ran = run_janitor("sweep", tmp_path)
    assert ran.code == exitcodes.DELETED, ran
    assert step_numbers(tmp_path) == [4]


def test_lock_of_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    build_tree(tmp_path, 2, loaded=2)
    repo = str(Path(__file__).resolve().parent.parent)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": repo})
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    holder.kill()
    holder.wait(timeout=30)
    wait_until(lambda: holder.returncode is not None, 5, "the holder to die")
    ran = run_janitor("sweep", tmp_path)
    assert ran.code == exitcodes.DELETED, ran
