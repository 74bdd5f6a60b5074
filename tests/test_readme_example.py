"""The README's `janitor sweep --dry-run` example, replayed: the docs cannot drift from the tool."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SIZE = re.compile(r"\s+\d+(\.\d+)? (B|KiB|MiB)$")


def _readme_example() -> tuple[list[str], list[str]]:
    """The shell commands and the expected output of the README's sweep example."""
    text = README.read_text()
    section = text[text.index("## Use it by hand"):]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    commands = next(b for lang, b in blocks if lang == "sh").splitlines()
    expected = next(b for lang, b in blocks if lang == "text").splitlines()
    return commands, expected


def _wait_until_clock_passes(path: Path) -> None:
    """The marker must be written after the steps (invariant 4): wait until the clock moved on."""
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in path.rglob("*"))
    deadline = time.monotonic() + 5
    while time.time_ns() <= newest + 20_000_000:
        assert time.monotonic() < deadline, "the clock did not advance"


def test_readme_sweep_example_matches_the_tool(tmp_path: Path) -> None:
    commands, expected = _readme_example()
    assert any("janitor sweep /tmp/demo/broadcasts" in c for c in commands)
    tree = tmp_path / "demo" / "broadcasts"
    tree.mkdir(parents=True)
    for n in range(13):
        (tree / f"step_{n}").mkdir()
        (tree / f"step_{n}" / "model.bin").write_bytes(b"\0" * 102400)
        (tree / f"step_{n}" / "STABLE").touch()
    (tree / "step_13").mkdir()
    (tree / "step_01").mkdir()
    _wait_until_clock_passes(tree)
    (tree / "LOADED_STEP").write_text("10\n")
    janitor = Path(sys.executable).with_name("janitor")
    ran = subprocess.run([str(janitor), "sweep", str(tree), "--interval-to-keep", "5",
                          "--dry-run"], capture_output=True, text=True, timeout=60,
                         check=False, env={**os.environ, "JANITOR_AUDIT_LOG": "off"})
    assert ran.returncode == 3, ran.stderr
    got = [line.replace(str(tree), "/tmp/demo/broadcasts") for line in ran.stdout.splitlines()]
    # Sizes depend on the filesystem's block accounting; decisions, reasons and totals must not.
    assert [SIZE.sub("", line) for line in got] == [SIZE.sub("", line) for line in expected]
    assert got[-1].startswith("total: would free") and "in 8 steps" in got[-1]
