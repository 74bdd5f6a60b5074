"""The benchmark figures that more than one document quotes, kept in one place: docs/figures.json.

    python bench/figures.py --record race RACE.json --measured 2026-11-25   # from a race.py run
    python bench/figures.py --record daemon DAEMON.json --measured DATE      # daemon_bench.py
    python bench/figures.py --write      # regenerate every figures block in the documents
    python bench/figures.py --check      # exit 1 if a block or a quoted figure is stale (CI)

docs/figures.json holds only what a benchmark run produced: `--record` copies the figures out of
the JSON that bench/race.py or bench/daemon_bench.py wrote (bench/run_all.py keeps them as
race.json and daemon.json in its results folder). The documents never state these figures by
hand: each is generated between `<!-- figures:NAME -->` and `<!-- /figures -->`, and `--check`
fails when a block differs from what figures.json gives, when a block is missing, or when
docs/PERFORMANCE.md's summary table (written by bench/run_all.py from the same run) quotes
another value. After `run_all.py --publish`, record its race.json and daemon.json and run
`--write`: the publish rewrites PERFORMANCE.md whole, without the blocks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIGURES = Path("docs") / "figures.json"
BLOCK = re.compile(r"<!-- figures:(?P<name>[a-z0-9-]+) -->(?P<body>.*?)<!-- /figures -->",
                   re.DOTALL)
# race.py's cleaner names, in the order its table lists them.
CLEANERS = ("inline-n2", "inline-gated", "janitor")
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


RECORDERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "race": record_race, "daemon": record_daemon}


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


RENDERERS: dict[str, Callable[[Figures], str]] = {
    "race-table": race_table, "race-headroom": race_headroom, "idle-rss": idle_rss}
# Where each block must be: a document that lost one (a republish) fails the check.
PLACES: dict[str, tuple[str, ...]] = {
    "docs/PERFORMANCE.md": ("race-table",),
    "docs/integrations/prime-rl.md": ("race-headroom",),
    "docs/deploy.md": ("idle-rss",),
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
