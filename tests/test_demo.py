"""The README's first command, as a real subprocess: the live demo ends with a clean summary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_to_a_clean_summary(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-m", "demo", "--seconds", "8",
                           "--dir", str(tmp_path / "demo")],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "load failures        0" in done.stdout, output
    assert "result: OK" in done.stdout, output
    deleted = re.search(r"steps deleted\s+(\d+)", done.stdout)
    assert deleted is not None, output
    assert int(deleted.group(1)) > 0, output
    written = re.search(r"steps written\s+(\d+)", done.stdout)
    assert written is not None and int(written.group(1)) > int(deleted.group(1)), output
