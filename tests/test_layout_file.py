"""`--layout-file`: a user's layout in TOML, validated strictly (issue 13, point 3).

A valid file works end to end (sweep and the daemon); every refused file, generated as well as
listed, is one `janitor: error: --layout-file ...` line, exit 2, and the tree untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janitor import layout_file

GOOD = b'''name = "mytrainer"
step = "ckpt-{N}.d"
complete = ["DONE"]
trackers = ["latest.txt"]
temporary = ["ckpt-{N}.d.tmp*"]
'''


def _tree(base: Path) -> Path:
    tree = base / "run"
    for number in range(1, 6):
        step = tree / f"ckpt-{number}.d"
        step.mkdir(parents=True)
        (step / "DONE").write_text("")
    (tree / "latest.txt").write_text("5\n")
    (tree / "ckpt-6.d.tmp123").mkdir()
    return tree


def test_a_layout_file_works_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "layout.toml").write_bytes(GOOD)
    tree = _tree(tmp_path)
    ran = run_janitor("sweep", "--no-gate", "--layout-file", str(tmp_path / "layout.toml"),
                      "--json", str(tree))
    assert ran.code == 3, ran.stderr
    doc = json.loads(ran.stdout)["directories"][0]
    assert doc["layout"] == "mytrainer"
    reasons = {d["name"]: d["reason"] for d in doc["decisions"]}
    assert reasons["ckpt-5.d"] == "pointed-to" and reasons["ckpt-6.d.tmp123"] == "in-progress"
    assert sorted(os.listdir(tree)) == [".janitor-trash", ".janitor.lock", "ckpt-5.d",
                                        "ckpt-6.d.tmp123", "latest.txt"]


def test_the_daemon_runs_a_layout_file(spawn: Spawn, tmp_path: Path) -> None:
    (tmp_path / "layout.toml").write_bytes(GOOD)
    tree = _tree(tmp_path / "root")
    publish_marker(tree, 3)
    daemon = spawn(str(tmp_path / "root"), "--layout-file", str(tmp_path / "layout.toml"),
                   "--audit-log", "off", "--log-format", "json")
    assert daemon.wait_event("directory_adopted")["layout"] == "mytrainer"
    wait_until(lambda: not (tree / "ckpt-2.d").exists(), 10, "1 and 2 to go")
    assert (tree / "ckpt-3.d").exists() and (tree / "ckpt-5.d").exists()
    assert daemon.stop()[0] == 0


REFUSED = [
    (b"", "key 'name'"),
    (b"name = 'x'\nstep = 'a-{N}'\n", "give 'complete' or 'trackers'"),
    (GOOD + b"extra = 1\n", "unknown key 'extra'"),
    (GOOD.replace(b'"ckpt-{N}.d"', b'"ckpt-{N}-{N}"'), "exactly one {N}"),
    (GOOD.replace(b'"ckpt-{N}.d"', b'"{N}"'), "would claim every numbered directory"),
    (GOOD.replace(b'"ckpt-{N}.d"', b'"a/{N}"'), "may hold only"),
    (GOOD.replace(b'"ckpt-{N}.d"', b'".hidden-{N}"'), "may not start with '.'"),
    (GOOD.replace(b'"ckpt-{N}.d"', b'"LOADED_STEP{N}"'), "may not start with"),
    (GOOD.replace(b'"mytrainer"', b'"hf"'), "not a built-in layout's name"),
    (GOOD.replace(b'"mytrainer"', b'"My Trainer"'), "key 'name'"),
    (GOOD.replace(b'["DONE"]', b'["../DONE"]'), "not a plain file name"),
    (GOOD.replace(b'["DONE"]', b'[".janitor-pin"]'), "the janitor's own names"),
    (GOOD.replace(b'["DONE"]', b'"DONE"'), "a list of strings"),
    (GOOD.replace(b'["latest.txt"]', b'["ckpt-7.d"]'), "looks like a step name"),
    (GOOD.replace(b'["ckpt-{N}.d.tmp*"]', b'["*"]'), "would match"),
    (GOOD.replace(b'["ckpt-{N}.d.tmp*"]', b'["ckpt-{N}.d"]'), "matches step names"),
    (GOOD.replace(b'["ckpt-{N}.d.tmp*"]', b'["ckpt-{N}/x"]'), "not a name pattern"),
    (GOOD + b"digits = -1\n", "key 'digits'"),
    (GOOD + b"digits = true\n", "key 'digits'"),
    (GOOD + b"progress = 'sometimes'\n", "key 'progress'"),
    (b"\xff\xfe", "not UTF-8"),
    (b"name = [", "not valid TOML"),
    (b"# " + b"x" * (70 * 1024), "more than"),
]


@pytest.mark.parametrize(("data", "why"), REFUSED)
def test_each_refused_file_is_one_line_and_touches_nothing(tmp_path: Path, data: bytes,
                                                           why: str) -> None:
    (tmp_path / "layout.toml").write_bytes(data)
    tree = _tree(tmp_path)
    before = sorted(os.listdir(tree))
    ran = run_janitor("sweep", "--no-gate", "--layout-file", str(tmp_path / "layout.toml"),
                      str(tree))
    assert ran.code == 2
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("janitor: error: --layout-file")
    assert why in lines[0], lines[0]
    assert sorted(os.listdir(tree)) == before


def test_a_missing_file_and_layout_with_layout_file_are_usage_errors(tmp_path: Path) -> None:
    ran = run_janitor("sweep", "--layout-file", str(tmp_path / "none.toml"), str(tmp_path))
    assert ran.code == 2 and ran.stderr.count("\n") == 1
    (tmp_path / "layout.toml").write_bytes(GOOD)
    ran = run_janitor("sweep", "--layout", "hf", "--layout-file", str(tmp_path / "layout.toml"),
                      str(tmp_path))
    assert ran.code == 2 and "not both" in ran.stderr


_values = st.one_of(st.text(max_size=12), st.integers(-5, 30), st.booleans(),
                    st.lists(st.text(max_size=10), max_size=3), st.floats(allow_nan=False))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.dictionaries(st.sampled_from(["name", "step", "digits", "complete",
                                              "trackers", "temporary", "progress", "other"]),
                             _values, max_size=7))
def test_any_generated_file_is_a_layout_or_one_line(table: dict[str, object]) -> None:
    """Whatever the file says: a Layout whose own names never collide, or LayoutFileError."""
    lines = []
    for key, value in table.items():
        lines.append(f"{key} = {json.dumps(value)}")
    try:
        layout = layout_file.parse("\n".join(lines).encode())
    except layout_file.LayoutFileError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    number = 12345 if layout.digits is None else min(12345, 10**layout.digits - 1)
    name = layout.name_of(number)
    assert layout.parse(name) == number and not layout.is_temporary(name)
    assert not name.startswith(".") and "/" not in name
    for tracker in layout.trackers:
        assert layout.parse(tracker.filename) is None
