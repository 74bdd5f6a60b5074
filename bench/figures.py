"""The benchmark figures that more than one document quotes, kept in one place: docs/figures.json.

    python bench/figures.py --record race RACE.json --measured 2026-11-25   # from a race.py run
    python bench/figures.py --record daemon DAEMON.json --measured DATE      # daemon_bench.py
    python bench/figures.py --record pressure PRESSURE.json --measured DATE  # pressure.py --out
    python bench/figures.py --write      # regenerate every figures block in the documents
    python bench/figures.py --check      # exit 1 if a block or a quoted figure is stale (CI)

docs/figures.json holds only what a benchmark run produced: `--record` copies the figures out of
the JSON that bench/race.py, bench/daemon_bench.py or bench/pressure.py wrote (bench/run_all.py
keeps the first two as race.json and daemon.json in its results folder; pressure.py needs root
and is run alone). The documents never state these figures by hand: each is generated between
`<!-- figures:NAME -->` and `<!-- /figures -->`, and `--check` fails when a block differs from
what figures.json gives, when a block is missing, or when docs/PERFORMANCE.md's summary table
(written by bench/run_all.py from the same run) quotes another value.

`run_all.py --publish` rewrites PERFORMANCE.md whole from its run: its race table comes between
the race-table markers, but figures.json still holds the previous run, so `--check` fails until
the same run's race.json and daemon.json are recorded and `--write` brings every other document
along.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIGURES = Path("docs") / "figures.json"
BLOCK = re.compile(r"<!-- figures:(?P<name>[a-z0-9-]+) -->(?P<body>.*?)<!-- /figures -->",
                   re.DOTALL)
# race.py's cleaner names, in the order its table lists them.
CLEANERS = ("inline-n2", "inline-gated", "janitor")
# pressure.py's two runs, in the order it makes them, and the least a published run lasts.
PRESSURE_RUNS = ("baseline", "wait_for_headroom")
PRESSURE_MIN_SECONDS = 30.0
PRESSURE_SETTINGS = ("seconds", "rate", "room", "step_bytes", "stall_scale", "stall_alpha",
                     "stall_max", "seed")
PRESSURE_FIGURES = ("written", "enospc", "waits", "wait_total_s", "wait_p50_s", "wait_p99_s",
                    "wait_max_s", "free_low_bytes", "free_low_steps", "lag_p50_steps",
                    "lag_p99_steps", "lag_max_steps", "loads", "stalls", "stall_p50_s",
                    "stall_p99_s", "stall_max_s", "lost")
Figures = dict[str, Any]


# ---- recording: from a benchmark's JSON into figures.json ---------------------------------------

def record_race(result: dict[str, Any], measured: str) -> dict[str, Any]:
    """The race figures from bench/race.py's JSON: per cleaner, what the documents quote."""
    if "--quick" in result.get("argv", []):
        raise ValueError("a --quick run: the documents quote a full run (bench/race.py)")
    rows = {row["cleaner"]: row for row in result["results"]}
    missing = [name for name in CLEANERS if name not in rows]
    if missing:
        raise ValueError(f"the race result has no run of {', '.join(missing)} "
                         "(record a run of all three cleaners)")
    return {
        "measured": measured,
        "source": "bench/race.py",
        "config": {key: result["config"][key] for key in
                   ("steps", "step_interval", "stall_chance", "interval_to_keep", "seed")
                   if key in result["config"]},
        "cleaners": {name: {
            "steps": rows[name]["steps_written"],
            "load_failures": rows[name]["load_failures"],
            "cleanup_s_mean": round(rows[name]["cleanup_s"]["mean"], 4),
            "peak_steps": rows[name]["peak_steps"],
            "leaked_steps": len(rows[name]["leaked_steps"]),
        } for name in CLEANERS},
    }


def record_daemon(result: dict[str, Any], measured: str) -> dict[str, Any]:
    """The idle figures from bench/daemon_bench.py's JSON."""
    idle = result["idle"]
    return {"measured": measured, "source": "bench/daemon_bench.py",
            "idle_rss_mb": round(idle["janitor_rss_mb"], 1),
            "sleeper_rss_mb": round(idle["sleeper_rss_mb"], 1)}


def record_pressure(result: dict[str, Any], measured: str) -> dict[str, Any]:
    """bench/pressure.py's JSON (--out): its settings and, per run, what docs/sizing.md quotes."""
    settings = result["args"]
    if float(settings["seconds"]) < PRESSURE_MIN_SECONDS:
        raise ValueError(f"a trial of {settings['seconds']:g} s: the documents quote a run of "
                         f"{PRESSURE_MIN_SECONDS:g} s or more (bench/pressure.py --seconds)")
    runs = {run["name"]: run for run in result["runs"]}
    missing = [name for name in PRESSURE_RUNS if name not in runs]
    if missing:
        raise ValueError(f"the pressure result has no {', '.join(missing)} run")
    return {
        "measured": measured,
        "source": "bench/pressure.py",
        "commit": result.get("machine", {}).get("commit", ""),
        "config": {key: settings[key] for key in PRESSURE_SETTINGS},
        "runs": {name: {key: runs[name][key] for key in PRESSURE_FIGURES}
                 for name in PRESSURE_RUNS},
    }


RECORDERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "race": record_race, "daemon": record_daemon, "pressure": record_pressure}


# ---- rendering: the blocks the documents hold ---------------------------------------------------

def race_table(f: Figures) -> str:
    """docs/PERFORMANCE.md, "The race": the same table bench/run_all.py renders."""
    lines = ["| cleaner | steps | load failures | trainer cleanup s/step (mean) "
             "| peak steps on disk | leaked steps |", "|---|---|---|---|---|---|"]
    for name in CLEANERS:
        c = f["race"]["cleaners"][name]
        lines.append(f"| {name} | {c['steps']} | {c['load_failures']} | "
                     f"{c['cleanup_s_mean']:.4f} | {c['peak_steps']} | {c['leaked_steps']} |")
    return "\n" + "\n".join(lines) + "\n"


def race_headroom(f: Figures) -> str:
    """docs/integrations/prime-rl.md, "Disk headroom": the peaks and the N-2 rule's failures."""
    race = f["race"]
    c = race["cleaners"]
    steps = c["janitor"]["steps"]
    return (f"({race['measured']}, docs/PERFORMANCE.md \"The race\": {steps} steps, a consumer\n"
            f"with random stalls): the gated cleaners peaked at {c['janitor']['peak_steps']} "
            f"(the janitor) and {c['inline-gated']['peak_steps']} (gated inline) steps\n"
            f"on disk against {c['inline-n2']['peak_steps']} for the N-2 rule, which failed "
            f"{c['inline-n2']['load_failures']} loads")


def idle_rss(f: Figures) -> str:
    """docs/deploy.md, the sidecar's resources: what the daemon holds when idle."""
    daemon = f["daemon"]
    return (f"{daemon['idle_rss_mb']:.1f} MB resident when idle (docs/PERFORMANCE.md, "
            f"{daemon['measured']})")


def _paragraph(text: str) -> str:
    """A generated paragraph on lines of the documents' width, on its own between the markers."""
    return "\n" + textwrap.fill(text, width=99, break_on_hyphens=False,
                                 break_long_words=False) + "\n"


def race_sizing(f: Figures) -> str:
    """docs/sizing.md, worked example 1: the race's peaks, in steps."""
    race = f["race"]
    c = race["cleaners"]
    return _paragraph(
        f"The published run ({race['measured']}, docs/PERFORMANCE.md \"The race\", "
        f"{c['janitor']['steps']} steps): under the janitor the directory peaked at "
        f"{c['janitor']['peak_steps']} steps on disk, with {c['janitor']['load_failures']} "
        f"failed loads. Deleting below `LOADED_STEP` inside the trainer peaked at "
        f"{c['inline-gated']['peak_steps']} steps. The N-2 rule held "
        f"{c['inline-n2']['peak_steps']} and failed {c['inline-n2']['load_failures']} loads. "
        f"Sized from this run, the disk needs {c['janitor']['peak_steps']} x S plus the trash "
        "and the reserve.")


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"


def pressure_table(f: Figures) -> str:
    """docs/sizing.md: bench/pressure.py's published run, its command and its table."""
    p = f["pressure"]
    cfg = p["config"]
    mib = cfg["step_bytes"] / (1 << 20)
    command = (f".venv/bin/python bench/pressure.py --seconds {cfg['seconds']:g} --rate "
               f"{cfg['rate']:g} --room {cfg['room']} \\\n    --step-bytes {cfg['step_bytes']} "
               f"--stall-scale {cfg['stall_scale']:g} --stall-alpha {cfg['stall_alpha']:g} "
               f"--stall-max {cfg['stall_max']:g} --seed {cfg['seed']} \\\n"
               "    --out RESULT.json --plot docs/img/pressure_free_space.png")
    at = f" (janitor and trainer_hooks at commit {p['commit']})" if p.get("commit") else ""
    lines = [
        _paragraph(f"Measured {p['measured']}{at}, as root (it mounts the tmpfs), with:"), "```",
        command, "```", _paragraph(
            f"A writer publishes a {mib:g} MiB step {cfg['rate']:g} times a second into a tmpfs "
            f"of {cfg['room']} steps ({cfg['room'] * mib:g} MiB) beside `janitor run` "
            "(`--keep-last 1`, nothing else kept). The consumer loads the newest complete "
            f"step, stalls {cfg['stall_scale']:g} s x Pareto({cfg['stall_alpha']:g}) (at most "
            f"{cfg['stall_max']:g} s), then writes `LOADED_STEP`. Each run lasts "
            f"{cfg['seconds']:g} s, with the same seed."),
        "| run | steps written | ENOSPC | waits | wait total | wait p50 / p99 / max "
        "| free low point | lag p50 / p99 / max | protected lost |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name in PRESSURE_RUNS:
        r = p["runs"][name]
        waits = ("-" if not r["waits"] else
                 f"{_seconds(r['wait_p50_s'])} / {_seconds(r['wait_p99_s'])} / "
                 f"{_seconds(r['wait_max_s'])}")
        low = r["free_low_bytes"] / (1 << 20)
        lines.append(
            f"| {name} | {r['written']} | {r['enospc']} | {r['waits']} | "
            f"{r['wait_total_s']:.2f} s | {waits} | {low:.2f} MiB ({r['free_low_steps']:g} "
            f"steps) | {r['lag_p50_steps']:g} / {r['lag_p99_steps']:g} / "
            f"{r['lag_max_steps']:g} steps | {r['lost']} |")
    stalls = "; ".join(
        f"{name}, {p['runs'][name]['loads']} loads, stalls p50 "
        f"{_seconds(p['runs'][name]['stall_p50_s'])}, p99 "
        f"{_seconds(p['runs'][name]['stall_p99_s'])}, max "
        f"{_seconds(p['runs'][name]['stall_max_s'])}" for name in PRESSURE_RUNS)
    lines.append(_paragraph(f"The consumer in each run: {stalls}."))
    return "\n".join(lines)


def pressure_example(f: Figures) -> str:
    """docs/sizing.md, worked example 2: the formula against the pressure run."""
    p = f["pressure"]
    cfg = p["config"]
    base, back = p["runs"]["baseline"], p["runs"]["wait_for_headroom"]
    rate = cfg["rate"]
    longest = base["stall_max_s"]
    return _paragraph(
        f"With S = {cfg['step_bytes'] / (1 << 20):g} MiB, {rate:g} saves/s, `--keep-last 1` "
        "and nothing else kept, D = lag + 1 + W, and W = 1 while a save is being written. In "
        f"the baseline run the lag was {base['lag_p50_steps']:g} steps at p50, "
        f"{base['lag_p99_steps']:g} at p99 and {base['lag_max_steps']:g} at most, so the formula "
        f"asks for {base['lag_p99_steps'] + 2:g} steps at p99 and {base['lag_max_steps'] + 2:g} "
        f"at the worst, against a disk of {cfg['room']}. The fullest moment left "
        f"{base['free_low_steps']:g} steps free, and {base['enospc']} saves failed with ENOSPC. "
        f"With `wait_for_headroom` (one step needed, one step of reserve) the writer waited "
        f"{back['waits']} times, {back['wait_total_s']:.2f} s in all (the longest "
        f"{_seconds(back['wait_max_s'])}), had {back['enospc']} ENOSPC failures and wrote "
        f"{back['written']} steps against the baseline's {base['written']}. Protected steps "
        f"lost: {base['lost']} and {back['lost']}. The lag could not grow past what the disk "
        f"held. The consumer's longest stall, {_seconds(longest)}, is {rate * longest:g} saves "
        f"of lag by itself, so a disk that never made this writer wait would hold at least "
        f"{rate * longest + 2:g} steps.")


RENDERERS: dict[str, Callable[[Figures], str]] = {
    "race-table": race_table, "race-headroom": race_headroom, "idle-rss": idle_rss,
    "race-sizing": race_sizing, "pressure-table": pressure_table,
    "pressure-example": pressure_example}
# Where each block must be: a document that lost one (a republish) fails the check.
PLACES: dict[str, tuple[str, ...]] = {
    "docs/PERFORMANCE.md": ("race-table",),
    "docs/integrations/prime-rl.md": ("race-headroom",),
    "docs/deploy.md": ("idle-rss",),
    "docs/sizing.md": ("race-sizing", "pressure-table", "pressure-example"),
}


def quoted(f: Figures) -> dict[str, list[tuple[str, str, str]]]:
    """Figures bench/run_all.py writes into PERFORMANCE.md's summary table from the same run,
    outside any block: (row, pattern, the value figures.json gives) for --check to compare."""
    race, daemon = f["race"]["cleaners"], f["daemon"]
    probes = [(f"Consumer load failures, {name} (steps, failures)",
               rf"^\| Consumer load failures, {re.escape(name)} \((\d+) steps\) \| (\d+) \|",
               f"{c['steps']} {c['load_failures']}") for name, c in race.items()]
    probes.append(("Idle RSS (MB)", r"^\| Idle RSS \| ([\d.]+) MB \|",
                   f"{daemon['idle_rss_mb']:.1f}"))
    return {"docs/PERFORMANCE.md": probes}


# ---- the documents ------------------------------------------------------------------------------

def load(root: Path) -> Figures:
    figures: Figures = json.loads((root / FIGURES).read_text(encoding="utf-8"))
    return figures


def rendered(text: str, figures: Figures) -> str:
    def body(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise ValueError(f"unknown figures block {name!r} (known: {', '.join(RENDERERS)})")
        return f"<!-- figures:{name} -->{RENDERERS[name](figures)}<!-- /figures -->"
    return BLOCK.sub(body, text)


def problems(root: Path, figures: Figures) -> list[str]:
    """What --check reports: stale or missing blocks, and quoted figures that disagree."""
    found = []
    for place, names in PLACES.items():
        text = (root / place).read_text(encoding="utf-8")
        present = [m["name"] for m in BLOCK.finditer(text)]
        found += [f"{place}: no <!-- figures:{name} --> block" for name in names
                  if name not in present]
        if rendered(text, figures) != text:
            found.append(f"{place}: a figures block is not what {FIGURES} gives "
                         "(run bench/figures.py --write)")
    for place, probes in quoted(figures).items():
        text = (root / place).read_text(encoding="utf-8")
        for row, pattern, want in probes:
            match = re.search(pattern, text, re.MULTILINE)
            got = " ".join(match.groups()) if match else "no such row"
            if got != want:
                found.append(f"{place}: the summary row {row!r} says {got}, {FIGURES} {want} "
                             "(publish and record the same run)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/figures.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", nargs=2, metavar=("BENCH", "RESULT_JSON"),
                        help=f"copy a benchmark's figures into {FIGURES} "
                             f"(BENCH: {', '.join(RECORDERS)})")
    action.add_argument("--write", action="store_true", help="regenerate every figures block")
    action.add_argument("--check", action="store_true", help="exit 1 if anything is stale")
    parser.add_argument("--measured", help="with --record: the run's date (YYYY-MM-DD)")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.record:
        bench, source = args.record
        if bench not in RECORDERS:
            parser.error(f"--record takes one of {', '.join(RECORDERS)}, not {bench!r}")
        if not args.measured or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.measured):
            parser.error("--record needs --measured YYYY-MM-DD, the day of the run")
        figures = load(root)
        try:
            figures[bench] = RECORDERS[bench](json.loads(Path(source).read_text()),
                                              args.measured)
        except (OSError, ValueError, KeyError) as exc:
            print(f"figures: cannot record {source}: {exc!r}", file=sys.stderr)
            return 1
        (root / FIGURES).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"figures: recorded {bench} into {FIGURES}; now run bench/figures.py --write")
        return 0
    figures = load(root)
    if args.write:
        for place in PLACES:
            path = root / place
            text = path.read_text(encoding="utf-8")
            new = rendered(text, figures)
            if new != text:
                path.write_text(new, encoding="utf-8")
                print(f"figures: rewrote {place}")
    stale = problems(root, figures)
    for line in stale:
        print(f"figures: {line}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
