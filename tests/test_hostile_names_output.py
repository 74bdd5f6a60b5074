"""Every command prints every path and entry name through protocol.printable (issue 10, point 6):
a managed directory or step name that is not UTF-8 or holds control characters never makes
`sweep` or `status` traceback, under PYTHONIOENCODING=utf-8 or LANG=C; each problem is one line,
and JSON output parses and holds no lone surrogate.

Run with `--hypothesis-show-statistics` to see the example counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from helpers.run import Ran, run_janitor
from helpers.tree import make_step, step_numbers, write_marker
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from janitor import protocol
from janitor.protocol import Invalid

ENVS = {"utf-8": {"PYTHONIOENCODING": "utf-8"}, "C": {"LANG": "C", "LC_ALL": "C"},
        "ascii": {"PYTHONIOENCODING": "ascii"}}


def _raw(path: Path) -> bytes:
    return os.fsencode(path)


def _tree(parent: Path, name: bytes, foreign: list[bytes]) -> Path:
    """steps 1..4 and the `foreign` step-like names in parent/name, then LOADED_STEP=3 last."""
    directory = Path(os.fsdecode(os.path.join(_raw(parent), name)))
    directory.mkdir()
    for number in range(1, 5):
        make_step(directory, number, files=1, size=8)
    for entry in foreign:
        os.mkdir(os.path.join(_raw(directory), entry))
    write_marker(directory, 3)
    return directory


def _check_lines(ran: Ran) -> None:
    assert "Traceback" not in ran.stderr, ran.stderr
    for line in ran.stdout.splitlines() + ran.err_lines:
        assert line.isprintable(), repr(line)


def _check_json(ran: Ran) -> dict[str, Any]:
    _check_lines(ran)
    document: dict[str, Any] = json.loads(ran.stdout)
    json.dumps(document, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
    return document


def test_a_directory_that_is_not_utf8_under_pythonioencoding_utf8(tmp_path: Path) -> None:
    directory = _tree(tmp_path, b"ckpt-\xff", [b"step_\xfe"])
    shown = f"{tmp_path}/ckpt-\\xff"
    env = ENVS["utf-8"]

    dry = run_janitor("sweep", "--dry-run", tmp_path, env=env)
    _check_lines(dry)
    assert dry.code == 3
    assert dry.err_lines == [f"janitor: {shown}: step_\\xfe: foreign, never touched "
                             "(step number: not canonical ASCII decimal)"]
    assert f"{shown}: loaded step 3 (LOADED_STEP=3), newest complete 4" in dry.stdout
    assert "  step_\\xfe  foreign" in dry.stdout

    status = run_janitor("status", tmp_path, env=env)
    _check_lines(status)
    assert status.code == 0 and status.stderr == ""
    assert status.stdout.splitlines()[0] == shown
    as_json = _check_json(run_janitor("status", "--json", tmp_path, env=env))
    assert [d["path"] for d in as_json["directories"]] == [shown]

    audit = tmp_path / "audit.jsonl"
    real = run_janitor("sweep", "--json", "--audit-log", audit, tmp_path, env=env)
    document = _check_json(real)
    assert real.code == 3 and len(real.err_lines) == 1
    assert document["directories"][0]["path"] == shown
    assert document["directories"][0]["deleted"] == ["step_1", "step_2"]
    assert step_numbers(directory) == [3, 4]
    verified = run_janitor("audit", "verify", audit, env=env)
    _check_lines(verified)
    assert (verified.code, verified.stdout) == (0, "2 records, 2 deletions checked, "
                                                   "0 violations\n")


def test_problem_lines_about_hostile_roots_are_one_line(tmp_path: Path) -> None:
    missing = Path(os.fsdecode(_raw(tmp_path) + b"/gone\n\xff"))
    afile = Path(os.fsdecode(_raw(tmp_path) + b"/file\x1b[31m"))
    afile.write_bytes(b"")
    empty = Path(os.fsdecode(_raw(tmp_path) + b"/empty\r\xfe"))
    empty.mkdir()
    for env in ENVS.values():
        ran = run_janitor("sweep", "--dry-run", missing, afile, empty, env=env)
        _check_lines(ran)
        assert ran.code == 2
        assert ran.err_lines == [
            f"janitor: {tmp_path}/gone\\n\\xff does not exist; check the path (is the volume "
            "mounted?)",
            f"janitor: {tmp_path}/file\\x1b[31m is not a directory; give the directory that "
            "holds the step_* directories",
            f"janitor: {tmp_path}/empty\\r\\xfe: no step_* directory or LOADED_STEP marker "
            "within depth 3; nothing to do"]
        status = run_janitor("status", missing, env=env)
        _check_lines(status)
        assert status.code == 2 and len(status.err_lines) == 1


def test_an_ascii_terminal_gets_no_traceback(tmp_path: Path) -> None:
    """click re-wraps an ASCII stdout as UTF-8; stderr and every other stream escape (below)."""
    _tree(tmp_path, "ckpt-é".encode(), [b"step_\xe9"])
    ran = run_janitor("status", tmp_path, env=ENVS["ascii"])
    _check_lines(ran)
    assert ran.code == 0 and ran.stdout.splitlines()[0] == f"{tmp_path}/ckpt-é"
    dry = run_janitor("sweep", "--dry-run", tmp_path, env=ENVS["ascii"])
    _check_lines(dry)
    assert dry.code == 3 and f"{tmp_path}/ckpt-é: loaded step 3" in dry.stdout
    assert len(dry.err_lines) == 1 and "step_\\xe9: foreign" in dry.stderr


def test_main_makes_stdout_and_stderr_escape_what_they_cannot_encode() -> None:
    """The backstop for a name some future code prints without protocol.printable."""
    script = ("import sys\nfrom janitor.cli import main\nsys.argv = ['janitor', '--version']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print('\\udcff', sys.stdout.errors, sys.stderr.errors)\n"
              "print('\\udcff', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[-1] == "\\udcff backslashreplace backslashreplace"
    assert done.stderr == b"\\udcff\n"


def test_printable_is_one_printable_line_for_any_name() -> None:
    for name in ["a\ud800b", "\udcff", "x\u2028y\x00", "\udcff\n", "step_1", "é\t"]:
        shown = protocol.printable(name)
        assert shown.isprintable() and protocol.printable(shown) == shown
        shown.encode("utf-8")
    assert protocol.printable(b"ckpt-\xff\n") == "ckpt-\\xff\\n"
    assert protocol.printable("a\ud800b") == "a\\ud800b"


# --- generated names ---------------------------------------------------------------------------

_NAME_BYTES = st.binary(min_size=1, max_size=12).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
_CONTROL = st.sampled_from([b"\n", b"\r", b"\t", b"\x1b[2J", b"\x7f", b"\xc2\x85", b"\xe2\x80\xa8",
                            b"\xff", b"\xed\xa0\x80", b"\\xff", b"\xf0\x9f\x92\xa9", b" "])


@st.composite
def _name(draw: st.DrawFn, prefix: bytes = b"") -> bytes:
    parts = draw(st.lists(_NAME_BYTES | _CONTROL, min_size=1, max_size=4))
    return prefix + b"".join(parts)


def _directory_name(name: bytes) -> bool:
    """A subdirectory discovery descends into and that is not itself step- or marker-like."""
    text = os.fsdecode(name)
    return (not name.startswith(b".") and not protocol.looks_like_step(text)
            and protocol.consumer_of(text) is None)


def _foreign(name: bytes) -> bool:
    return isinstance(protocol.parse_step_name(os.fsdecode(name)), Invalid)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(directory=_name().filter(_directory_name),
       foreign=st.lists(_name(b"step_").filter(_foreign), max_size=3, unique=True),
       env=st.sampled_from(sorted(ENVS)), pass_parent=st.booleans())
def test_generated_hostile_names_never_break_sweep_or_status(directory: bytes,
                                                             foreign: list[bytes], env: str,
                                                             pass_parent: bool) -> None:
    event(f"env {env}")
    event("foreign names" if foreign else "no foreign name")
    with tempfile.TemporaryDirectory() as where:
        parent = Path(where)
        tree = _tree(parent, directory, foreign)
        root = parent if pass_parent else tree
        shown = protocol.printable(str(tree))
        variables = ENVS[env]

        dry = run_janitor("sweep", "--dry-run", root, env=variables)
        _check_lines(dry)
        assert dry.code == 3, dry.stderr
        assert len(dry.err_lines) == len(foreign), dry.stderr  # one line per foreign name
        assert all(line.startswith("janitor: ") for line in dry.err_lines)

        dry_json = _check_json(run_janitor("sweep", "--dry-run", "--json", root, env=variables))
        [report] = dry_json["directories"]
        assert report["path"] == shown
        assert sorted(f["name"] for f in report["foreign"]) == sorted(
            protocol.printable(os.fsdecode(n)) for n in foreign)

        status = run_janitor("status", root, env=variables)
        _check_lines(status)
        assert status.code == 0 and status.stderr == ""
        status_json = _check_json(run_janitor("status", "--json", root, env=variables))
        assert [d["path"] for d in status_json["directories"]] == [shown]

        real = run_janitor("sweep", "--audit-log", "off", root, env=variables)
        _check_lines(real)
        assert real.code == 3 and len(real.err_lines) == len(foreign)
        assert step_numbers(tree) == [3, 4]
        assert all(os.path.isdir(os.path.join(_raw(tree), n)) for n in foreign)
