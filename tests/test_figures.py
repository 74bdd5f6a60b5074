"""The benchmark figures the documents quote come from one place, docs/figures.json.

bench/figures.py generates every `<!-- figures:NAME -->` block from it; `--check` (run here on the
repository) fails when a block is stale or missing, or when PERFORMANCE.md's summary table quotes
another value. The other tests run the script on a copy of the documents in a temporary root, and
check that bench/run_all.py's published race table is the block figures.py regenerates.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "figures.py"
DOCUMENTS = ("docs/figures.json", "docs/PERFORMANCE.md", "docs/deploy.md",
             "docs/integrations/prime-rl.md", "docs/sizing.md")


def figures(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--root", str(root)] if root is not None else []
    return subprocess.run([sys.executable, str(SCRIPT), *args, *extra], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in DOCUMENTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def race_result(argv: list[str], failures: int) -> dict[str, Any]:
    """A result in bench/race.py's JSON format (the keys `--record race` reads)."""
    def row(key: str, cleaner: str, failed: int, peak: int) -> dict[str, Any]:
        return {"key": key, "cleaner": cleaner, "steps_written": 500, "load_failures": failed,
                "cleanup_s": {"mean": 0.01234567, "p99": 0.1}, "peak_steps": peak,
                "leaked_steps": [7] if cleaner == "inline-gated" else []}
    return {"config": {"steps": 500, "step_interval": 0.2, "seed": 7}, "argv": argv,
            "results": [row("a", "inline-n2", failures, 5), row("b", "inline-gated", 0, 77),
                        row("c", "janitor", 0, 66)]}


def test_the_documents_hold_what_figures_json_gives() -> None:
    result = figures("--check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_stale_block_fails_the_check_and_write_regenerates_it(root: Path) -> None:
    performance = root / "docs" / "PERFORMANCE.md"
    original = performance.read_text()
    row = "| inline-n2 | 1000 | 44 |"
    assert row in original
    performance.write_text(original.replace(row, "| inline-n2 | 1000 | 45 |"))
    result = figures("--check", root=root)
    assert result.returncode == 1
    assert "docs/PERFORMANCE.md: a figures block is not what docs/figures.json gives" \
        in result.stderr
    assert figures("--write", root=root).returncode == 0
    assert performance.read_text() == original


def test_a_lost_block_and_a_disagreeing_summary_row_fail_the_check(root: Path) -> None:
    """What a republish by bench/run_all.py of another run than the recorded one looks like."""
    performance = root / "docs" / "PERFORMANCE.md"
    text = performance.read_text()
    text = text.replace("<!-- figures:race-table -->\n", "").replace("<!-- /figures -->\n", "")
    text = text.replace("| Consumer load failures, inline-n2 (1000 steps) | 44 |",
                        "| Consumer load failures, inline-n2 (1000 steps) | 12 |")
    performance.write_text(text)
    result = figures("--check", root=root)
    assert result.returncode == 1
    assert "docs/PERFORMANCE.md: no <!-- figures:race-table --> block" in result.stderr
    assert "'Consumer load failures, inline-n2 (steps, failures)' says 1000 12, " \
        "docs/figures.json 1000 44" in result.stderr


def test_record_race_then_write_updates_every_document(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "race.json"
    run.write_text(json.dumps(race_result(["--steps", "500"], failures=9)))
    result = figures("--record", "race", str(run), "--measured", "2026-12-01", root=root)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((root / "docs" / "figures.json").read_text())["race"]
    assert recorded["measured"] == "2026-12-01"
    assert recorded["cleaners"]["inline-n2"] == {
        "steps": 500, "load_failures": 9, "cleanup_s_mean": 0.0123, "peak_steps": 5,
        "leaked_steps": 0}
    assert recorded["cleaners"]["inline-gated"]["leaked_steps"] == 1
    result = figures("--write", root=root)
    # The blocks follow; PERFORMANCE.md's summary table is bench/run_all.py's, from another run.
    problems = result.stderr.splitlines()
    assert result.returncode == 1
    assert problems and all("the summary row 'Consumer load failures" in p for p in problems)
    performance = (root / "docs" / "PERFORMANCE.md").read_text()
    assert "| inline-n2 | 500 | 9 | 0.0123 | 5 | 0 |" in performance
    headroom = (root / "docs" / "integrations" / "prime-rl.md").read_text()
    assert "peaked at 66 (the janitor) and 77 (gated inline)" in headroom
    assert "against 5 for the N-2 rule, which failed 9 loads" in headroom
    assert "(2026-12-01, docs/PERFORMANCE.md" in headroom


def test_record_refuses_a_quick_run_and_a_missing_date(root: Path, tmp_path: Path) -> None:
    before = (root / "docs" / "figures.json").read_text()
    run = tmp_path / "race.json"
    run.write_text(json.dumps(race_result(["--quick"], failures=1)))
    result = figures("--record", "race", str(run), "--measured", "2026-12-01", root=root)
    assert result.returncode == 1
    assert "a --quick run" in result.stderr
    result = figures("--record", "race", str(run), root=root)
    assert result.returncode == 2
    assert "--measured YYYY-MM-DD" in result.stderr
    assert (root / "docs" / "figures.json").read_text() == before


def pressure_result(seconds: float) -> dict[str, Any]:
    """A result in bench/pressure.py's JSON format (--out; the keys `--record pressure` reads)."""
    def run(name: str, enospc: int, waits: int) -> dict[str, Any]:
        return {"name": name, "back_pressure": name != "baseline", "written": 900 + waits,
                "enospc": enospc, "waits": waits, "wait_total_s": 1.5 * waits,
                "wait_p50_s": 0.25, "wait_p99_s": 1.25, "wait_max_s": 2.5,
                "free_low_bytes": 3 << 19, "free_low_steps": 1.5, "lag_p50_steps": 4.0,
                "lag_p99_steps": 15.0, "lag_max_steps": 16, "loads": 500, "stalls": 500,
                "stall_p50_s": 0.125, "stall_p99_s": 1.75, "stall_max_s": 4.0, "lost": 0,
                "samples": [[0.0, 20 << 20, -1, -1]]}
    return {"args": {"seconds": seconds, "rate": 10.0, "room": 20, "step_bytes": 1 << 20,
                     "stall_scale": 0.05, "stall_alpha": 1.2, "stall_max": 5.0, "seed": 7},
            "argv": ["--seconds", str(seconds)], "machine": {},
            "runs": [run("baseline", 33, 0), run("wait_for_headroom", 0, 11)]}


def test_record_pressure_then_write_updates_the_sizing_guide(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "pressure.json"
    run.write_text(json.dumps(pressure_result(60)))
    result = figures("--record", "pressure", str(run), "--measured", "2026-12-09", root=root)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((root / "docs" / "figures.json").read_text())["pressure"]
    assert recorded["config"]["seconds"] == 60
    assert recorded["runs"]["baseline"]["enospc"] == 33
    assert "samples" not in recorded["runs"]["baseline"]
    result = figures("--write", root=root)
    assert result.returncode == 0, result.stderr
    sizing = (root / "docs" / "sizing.md").read_text()
    assert "Measured 2026-12-09, as root" in sizing
    assert "bench/pressure.py --seconds 60 --rate 10 --room 20" in sizing
    assert ("| wait_for_headroom | 911 | 0 | 11 | 16.50 s | 0.250 s / 1.25 s / 2.50 s "
            "| 1.50 MiB (1.5 steps) | 4 / 15 / 16 steps | 0 |") in sizing
    assert "| baseline | 900 | 33 | 0 | 0.00 s | - |" in sizing
    assert "and 33 saves failed with ENOSPC" in " ".join(sizing.split())
    assert figures("--check", root=root).returncode == 0


def test_record_pressure_refuses_a_short_trial(root: Path, tmp_path: Path) -> None:
    before = (root / "docs" / "figures.json").read_text()
    run = tmp_path / "pressure.json"
    run.write_text(json.dumps(pressure_result(15)))
    result = figures("--record", "pressure", str(run), "--measured", "2026-12-09", root=root)
    assert result.returncode == 1
    assert "a trial of 15 s" in result.stderr
    assert (root / "docs" / "figures.json").read_text() == before


def bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module(name)


def test_a_published_race_table_is_the_block_figures_py_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/run_all.py --publish writes the race table between the race-table markers, so
    recording the same run (figures.py --record race) leaves the block as published."""
    run_all = bench_module("run_all", monkeypatch)
    figures_py = bench_module("figures", monkeypatch)
    race = race_result(["--steps", "500"], failures=3)
    published = "\n".join(run_all.race_details(race))
    assert "<!-- figures:race-table -->" in published
    recorded = {"race": figures_py.record_race(race, "2026-12-01")}
    assert figures_py.rendered(published, recorded) == published
