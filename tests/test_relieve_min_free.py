"""--min-free under --pressure relieve (issue 14, point 3), on real size-limited tmpfs mounts:
a filesystem short of the watermark loses the steps kept only by soft rules, oldest first, only
where the consumer gate lets them go, never one a hard rule keeps (a pin, an --interval-to-keep
multiple, the newest complete step, the steps at or above the loaded one), until it is 5% of the
watermark above it; directories sharing the filesystem give their steps oldest completion first
across them. Sweep and the daemon."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.safety import tmpfs
from helpers.tree import newest_change_ns, step_numbers, trash_names, wait_for_fs_clock
from helpers.wait import wait_until

KIB = 1024
STEP = 384 * KIB
# --keep-last 12 keeps every step (a soft rule beyond the newest); --interval-to-keep 3 and a
# pin on step 2 are hard, and so are 11 (at the loaded step) and 12 (the newest).
POLICY = ["--keep-last", "12", "--interval-to-keep", "3", "--audit-log", "off"]
HARD = {2, 3, 6, 9, 11, 12}
SOFT_ONLY = [1, 4, 5, 7, 8, 10]  # kept by --keep-last alone, below the loaded step 11


def _step(tree: Path, number: int, size: int = STEP, *, pin: bool = False) -> None:
    step = tree / f"step_{number}"
    step.mkdir(parents=True)
    (step / "w.bin").write_bytes(os.urandom(size))
    if pin:
        (step / ".janitor-pin").write_text("")
    (step / "STABLE").write_text("")


def _tree(tree: Path) -> None:
    for number in range(1, 13):
        _step(tree, number, pin=number == 2)
    publish_marker(tree, 11)


def avail(path: Path) -> int:
    vfs = os.statvfs(path)
    return vfs.f_bavail * vfs.f_frsize


def du(step: Path) -> int:
    done = subprocess.run(["du", "-s", "-B1", str(step)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[0])


def target_of(want: int) -> int:
    """Where relief stops: 5% of the watermark above it."""
    return want + math.ceil(want * 0.05)


def oldest_enough(steps: list[Path], deficit: int) -> tuple[list[Path], int]:
    """The shortest prefix of `steps` (oldest first) whose bytes (du) cover `deficit`, and the
    bytes of its last step."""
    taken: list[Path] = []
    freed = last = 0
    for step in steps:
        if freed >= deficit:
            break
        taken.append(step)
        last = du(step)
        freed += last
    return taken, last


def numbers(steps: list[Path]) -> set[int]:
    return {int(step.name.removeprefix("step_")) for step in steps}


def test_sweep_relieves_a_short_filesystem_oldest_soft_kept_first(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        tree = mount / "run"
        _tree(tree)
        # The lock file a sweep writes is there before the free space is read.
        assert run_janitor("sweep", *POLICY, str(tree)).code == 0
        free = avail(mount)
        want = free + 1536 * KIB  # short by 1.5 MiB
        expected, last = oldest_enough([tree / f"step_{n}" for n in SOFT_ONLY],
                                       target_of(want) - free)
        assert 0 < len(expected) < len(SOFT_ONLY)

        budget = ["--min-free", str(want), "--pressure", "relieve"]
        dry = json.loads(run_janitor("sweep", *POLICY, *budget, "--dry-run", "--json",
                                     str(tree)).stdout)["directories"][0]
        assert dry["deleted"] == [p.name for p in expected]
        assert {d["reason"] for d in dry["decisions"] if d["action"] == "delete"} == {"relieved"}

        ran = run_janitor("sweep", *POLICY, *budget, str(tree))
        assert ran.code == 3, ran.stderr
        assert set(step_numbers(tree)) == set(range(1, 13)) - numbers(expected)
        assert set(step_numbers(tree)) >= HARD
        # Back above the watermark by its 5% margin, and one step fewer would not have been.
        assert avail(mount) >= target_of(want) > avail(mount) - last
        assert "pressure" not in ran.stderr


def test_sweep_says_what_holds_a_filesystem_it_cannot_relieve(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        tree = mount / "run"
        _tree(tree)
        publish_marker(tree, 1)  # a stalled consumer: the gate holds every step
        ran = run_janitor("sweep", *POLICY, "--min-free", "90%", "--pressure", "relieve",
                          str(tree))
        assert ran.code == 0 and step_numbers(tree) == list(range(1, 13))
        line = next(line for line in ran.err_lines if "pressure:" in line)
        assert "short of --min-free" in line and "held by at-or-above-loaded" in line
        assert "the consumer is behind: LOADED_STEP=1, newest complete 12, lag 11 steps" in line
        assert line.startswith("janitor: ")


def _interleaved(mount: Path, order: list[tuple[str, int]]) -> None:
    """Steps completed in `order` (directory, number), each strictly after the one before on
    the filesystem clock; then each directory's marker at its newest step."""
    for name, number in order:
        wait_for_fs_clock(mount, newest_change_ns(mount))
        _step(mount / name, number, 256 * KIB)
    for name in {name for name, _ in order}:
        publish_marker(mount / name, max(n for d, n in order if d == name))


ORDER = [("b", 1), ("a", 1), ("b", 2), ("a", 2), ("b", 3), ("a", 3), ("b", 4), ("a", 4),
         ("a", 5), ("b", 5), ("a", 6), ("b", 6)]


def test_sweep_shares_a_filesystem_oldest_completion_first(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        _interleaved(mount, ORDER)
        policy = ["--keep-last", "6", "--audit-log", "off"]
        assert run_janitor("sweep", *policy, str(mount)).code == 0  # the locks, written
        free = avail(mount)
        want = free + 1024 * KIB
        # Relievable: every step below each directory's newest (6), oldest completion first
        # across both directories, whichever directory it is in.
        expected, last = oldest_enough([mount / d / f"step_{n}" for d, n in ORDER if n < 6],
                                       target_of(want) - free)
        assert {p.parent.name for p in expected} == {"a", "b"} and len(expected) >= 4
        ran = run_janitor("sweep", *policy, "--min-free", str(want), "--pressure", "relieve",
                          str(mount))
        assert ran.code == 3, ran.stderr
        for name in ("a", "b"):
            gone = {int(p.name[5:]) for p in expected if p.parent.name == name}
            assert step_numbers(mount / name) == sorted(set(range(1, 7)) - gone), name
        assert avail(mount) >= target_of(want) > avail(mount) - last


def test_the_daemon_relieves_a_short_filesystem_and_stops_at_the_margin(
        spawn: Spawn, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        tree = mount / "run"
        _tree(tree)
        publish_marker(tree, 1)  # a stalled consumer: nothing may go yet
        free = avail(mount)
        want = free + 1536 * KIB
        daemon = spawn(str(mount), *POLICY, "--min-free", str(want), "--pressure", "relieve",
                       "--rescan-interval", "0.5", "--log-format", "json", "--log-level", "debug")
        alert = daemon.wait_event("pressure", filesystem=str(mount))
        assert alert["mode"] == "relieve"
        free = avail(mount)  # with the daemon's lock file
        expected, last = oldest_enough([tree / f"step_{n}" for n in SOFT_ONLY],
                                       target_of(want) - free)
        assert step_numbers(tree) == list(range(1, 13))  # the gate holds everything
        publish_marker(tree, 11)  # the consumer catches up: soft-kept steps may go
        left = sorted(set(range(1, 13)) - numbers(expected))
        wait_until(lambda: step_numbers(tree) == left and not trash_names(tree), 20,
                   "relief down to the margin, reclaimed")
        assert set(left) >= HARD
        assert avail(mount) >= target_of(want) > avail(mount) - last
        wait_until(lambda: len(daemon.named("deleted")) >= len(expected), 10, "each logged")
        deleted = daemon.named("deleted")
        assert sorted(e["step"] for e in deleted) == sorted(numbers(expected))
        assert {e["reason"] for e in deleted} == {"relieved"}
        # Nothing more goes once it is reclaimed: the next passes (the marker again, a rescan
        # every 0.5 s) and free-space checks (each second) find it above the margin.
        seen = len(daemon.named("pass_decided"))
        publish_marker(tree, 11)
        wait_until(lambda: len(daemon.named("pass_decided")) > seen + 3, 10, "more passes")
        assert step_numbers(tree) == left and len(daemon.named("deleted")) == len(deleted)
        daemon.wait_event("pressure_cleared", filesystem=str(mount))
        assert daemon.stop()[0] == 0


def test_the_daemon_shares_a_filesystem_oldest_completion_first(
        spawn: Spawn, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=8m") as mount:
        _interleaved(mount, ORDER)
        policy = ["--keep-last", "6", "--audit-log", "off"]
        assert run_janitor("sweep", *policy, str(mount)).code == 0  # the locks, written
        free = avail(mount)
        want = 3 << 20  # met now; short by 1 MiB once the filler below leaves 2 MiB
        assert free > target_of(want)
        daemon = spawn(str(mount), *policy, "--min-free", str(want), "--pressure", "relieve",
                       "--log-format", "json")
        daemon.wait_event("ready")
        # Something outside the managed directories takes the space: the free-space check
        # (each second) shares the deficit out by completion time across both directories.
        filler = mount / "filler.bin"
        filler.write_bytes(os.urandom(free - (2 << 20)))
        free -= du(filler)
        expected, last = oldest_enough([mount / d / f"step_{n}" for d, n in ORDER if n < 6],
                                       target_of(want) - free)
        assert {p.parent.name for p in expected} == {"a", "b"}
        for name in ("a", "b"):
            gone = {int(p.name[5:]) for p in expected if p.parent.name == name}
            left = sorted(set(range(1, 7)) - gone)
            wait_until(lambda n=name, k=left: step_numbers(mount / n) == k
                       and not trash_names(mount / n), 20, f"relief in {name}")
        assert avail(mount) >= target_of(want) > avail(mount) - last
        wait_until(lambda: len(daemon.named("deleted")) >= len(expected), 10, "each logged")
        assert {e["reason"] for e in daemon.named("deleted")} == {"relieved"}
        assert daemon.stop()[0] == 0
