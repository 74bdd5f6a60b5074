"""What the daemon sees without the rescan: new managed directories found by polling the directories
on the way down (poll mode, and a real FUSE mount where inotify is blind), and a new
`.receiver_ready` sentinel inside a step (inotify watches on the steps above the loaded one, or a
stat per poll).

Real `janitor run` processes on real trees. The rescan timer is 60 s, far beyond every deadline
here, so whatever is found was found by a poll or an event. Writers do what real ones do: steps
first, then the marker or sentinel. Each test prints the reaction it measured (`pytest -s`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path

import pytest
from helpers.daemon import Spawn, inotify_instances, inotify_watches, publish_marker
from helpers.tree import make_steps, step_numbers
from helpers.wait import wait_until
from watchdog.events import FileCreatedEvent, FileMovedEvent

from janitor.daemon import Daemon, DaemonConfig
from janitor.daemon import fleet as fleet_module
from janitor.daemon.notify import Notifier
from janitor.daemon.watch import Target, _DirHandler
from janitor.fs.paths import Discovery
from janitor.layouts import Layout
from janitor.model import ScanOptions
from janitor.policy import Policy

SLOW_TIMER = ("--rescan-interval", "60")
POLL = ("--watch", "poll", "--poll-interval", "0.2")
RECEIVER_READY = ("--progress", "receiver-ready", "--complete-marker", ".finished")
SENTINEL = ".receiver_ready"


def _report(what: str, seconds: float) -> None:
    print(f"\n  {what}: {seconds:.3f} s")


def _gone_within(directory: Path, expected: set[int], since: float, timeout_s: float,
                 what: str) -> float:
    """Wait until `directory` holds exactly the steps `expected`; seconds since `since`."""
    wait_until(lambda: set(step_numbers(directory)) == expected, timeout_s, what)
    return time.monotonic() - since


# ---- new managed directories, polled ------------------------------------------------------------

def _new_runs_are_adopted(daemon_args: Iterable[str], spawn: Spawn, root: Path, write: Path,
                          deadline_s: float, label: str) -> None:
    """`root` is what the daemon watches; `write` is where the test writes the same tree (the
    root itself, or a FUSE mount's backing directory: another host writing to NFS)."""
    make_steps(write / "run1" / "broadcasts", range(1, 3))
    publish_marker(write / "run1" / "broadcasts", 1)
    (write / "team").mkdir()  # exists, empty, at start: a directory on the way down, polled
    daemon = spawn(str(root), *daemon_args, *SLOW_TIMER)
    daemon.wait_event("ready")
    cases = [
        ("run2/broadcasts", "a new run under the root"),
        ("group/run3/broadcasts", "a new run two levels deeper, parents new too"),
        ("team/run4/broadcasts", "a new run under a directory that existed at start"),
    ]
    for relative, what in cases:
        written = write / relative
        started = time.monotonic()
        make_steps(written, range(1, 8))
        published = publish_marker(written, 6)
        watched = root / relative
        adopted = daemon.wait_event("directory_adopted", directory=str(watched),
                                    timeout_s=deadline_s)
        _report(f"{label}: {what}, first write to adopted", adopted["_seen"] - started)
        took = _gone_within(written, {6, 7}, published, deadline_s, f"steps 1-5 of {relative}")
        _report(f"{label}: {what}, marker to doomed steps deleted", took)
        assert adopted["watch"] == "poll"
    assert not daemon.named("fatal")
    assert daemon.not_json == []


def test_poll_mode_adopts_new_managed_directories_before_the_rescan(spawn: Spawn,
                                                                     tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    # A couple of poll intervals (0.2 s), with room for a loaded machine; the rescan is 60 s.
    _new_runs_are_adopted(POLL, spawn, root, root, 2.0, "poll 0.2 s")


def test_poll_mode_releases_a_run_deleted_and_adopts_it_recreated(spawn: Spawn,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 4))
    publish_marker(managed, 1)
    daemon = spawn(str(root), *POLL, *SLOW_TIMER)
    daemon.wait_event("ready")
    shutil.rmtree(root / "run")
    daemon.wait_event("directory_released", directory=str(managed), timeout_s=2.0)
    make_steps(managed, range(10, 14))
    publish_marker(managed, 12)
    wait_until(lambda: set(step_numbers(managed)) == {12, 13}, 2.0,
               "the re-created run's steps 10-11")
    assert len(daemon.named("directory_adopted", directory=str(managed))) == 2


@pytest.fixture
def bindfs_mount(tmp_path: Path) -> Iterator[Callable[[Path, Path], None]]:
    """Mount `backing` at `where` with bindfs (a FUSE filesystem); skip when impossible."""
    mounted: list[Path] = []

    def mount(backing: Path, where: Path) -> None:
        if shutil.which("bindfs") is None:
            pytest.skip("bindfs is not installed (apt-get install -y bindfs)")
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["bindfs", str(backing), str(where)], capture_output=True,
                              check=False, timeout=30)
        if done.returncode != 0:
            pytest.skip(f"cannot mount bindfs here (needs /dev/fuse and the right to mount): "
                        f"{done.stderr.decode().strip()}")
        mounted.append(where)

    yield mount
    for where in reversed(mounted):
        for command in (["fusermount", "-u", str(where)], ["umount", "-l", str(where)]):
            if subprocess.run(command, capture_output=True, check=False).returncode == 0:
                break


def test_fuse_mount_written_behind_its_back_is_polled(spawn: Spawn, tmp_path: Path,
                                                      bindfs_mount: Callable[[Path, Path], None]
                                                      ) -> None:
    """The backing directory, written directly, is another host writing to a network filesystem:
    inotify on the mount sees none of it. `--watch auto` must poll there, roots included."""
    backing = tmp_path / "backing"
    backing.mkdir()
    root = tmp_path / "mnt"
    bindfs_mount(backing, root)
    # bindfs caches attributes for 1 s (like an NFS client's attribute cache): the poll sees a
    # change up to that late, plus the 0.2 s interval.
    _new_runs_are_adopted(("--watch", "auto", "--poll-interval", "0.2"), spawn, root, backing,
                          5.0, "FUSE, auto")


def test_fuse_mount_gets_no_inotify_watch_under_auto(spawn: Spawn, tmp_path: Path,
                                                     bindfs_mount: Callable[[Path, Path], None]
                                                     ) -> None:
    backing = tmp_path / "backing"
    make_steps(backing / "run" / "broadcasts", range(1, 4))
    publish_marker(backing / "run" / "broadcasts", 1)
    root = tmp_path / "mnt"
    bindfs_mount(backing, root)
    daemon = spawn(str(root), "--watch", "auto", "--poll-interval", "0.2", *SLOW_TIMER)
    daemon.wait_event("ready")
    assert daemon.wait_event("directory_adopted")["watch"] == "poll"
    assert inotify_watches(daemon.pid) == 0, "blind watches on a FUSE mount are no use"
    publish_marker(backing / "run" / "broadcasts", 3)
    wait_until(lambda: set(step_numbers(backing / "run" / "broadcasts")) == {3}, 5.0,
               "a marker published behind the mount's back to be polled")


def test_a_poll_lists_no_managed_directory(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll is stats only: a managed directory that changed is reconciled (the scan lists
    it), never listed again for discovery; only a changed directory on the way down is."""
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    make_steps(managed, range(1, 4))
    publish_marker(managed, 1)
    config = DaemonConfig(roots=(str(root),), policy=Policy(), options=ScanOptions(),
                          watch="poll", dry_run=True)
    daemon = Daemon(config, Notifier(None, None))
    try:
        daemon.fleet.discover(at_start=True)
        daemon._full_pass()
        looked: list[str] = []
        real = fleet_module.discover_below

        def counting(path: str, depth_left: int, known: Container[str],
                     *layouts: tuple[Layout, ...]) -> Discovery:
            looked.append(path)
            return real(path, depth_left, known, *layouts)

        monkeypatch.setattr(fleet_module, "discover_below", counting)
        make_steps(managed, [4])
        daemon.fleet.poll()
        daemon._reconcile_dirty()
        assert looked == [], "a step added to a managed directory lists it only in the scan"
        (root / "run" / "notes").mkdir()
        daemon.fleet.poll()
        daemon._reconcile_dirty()
        assert looked == [str(root / "run")], "only the directory that changed is listed"
        daemon.fleet.poll()
        daemon._reconcile_dirty()
        assert looked == [str(root / "run")], "an unchanged tree costs no listing at all"
        assert str(root / "run" / "notes") in daemon.tree
    finally:
        daemon._shutdown()


# ---- receiver-ready sentinels -------------------------------------------------------------------

def _make_finished_steps(directory: Path, numbers: Iterable[int]) -> None:
    """Steps the way a trainer with prime-rl's newer layout writes them: `.finished` last."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        step = directory / f"step_{number}"
        step.mkdir()
        (step / "weights.safetensors").write_bytes(b"w" * 64)
        (step / ".finished").touch()


def _write_sentinel(directory: Path, step: int, clock_probe: Path) -> float:
    """Create `step_<step>/.receiver_ready` in place, as a receiver does, once the filesystem
    clock is past every step's change time (invariant 4: a sentinel in the same tick as the
    steps below it licenses nothing). Returns time.monotonic() at the creation."""
    newest = 0
    for step_dir in directory.glob("step_*"):
        for path in (step_dir, *step_dir.iterdir()):
            st = path.lstat()
            newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)

    def past() -> bool:
        clock_probe.touch()
        return clock_probe.stat().st_mtime_ns > newest

    wait_until(past, 5.0, "the filesystem clock to pass the newest step", interval_s=0.001)
    created = time.monotonic()
    fd = os.open(directory / f"step_{step}" / SENTINEL, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o644)
    os.close(fd)
    return created


@pytest.mark.parametrize(("mode", "deadline_s"), [("inotify", 2.0), ("poll", 2.0)])
def test_new_sentinel_above_the_loaded_step_is_seen_before_the_rescan(
        spawn: Spawn, tmp_path: Path, mode: str, deadline_s: float) -> None:
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    _make_finished_steps(managed, range(1, 7))
    probe = tmp_path / "clock-probe"
    _write_sentinel(managed, 1, probe)
    watch = POLL if mode == "poll" else ("--watch", "inotify")
    daemon = spawn(str(root), *RECEIVER_READY, *watch, *SLOW_TIMER)
    daemon.wait_event("ready")
    if mode == "inotify":
        # root, run, broadcasts, and steps 2-6: the steps above the loaded one.
        wait_until(lambda: inotify_watches(daemon.pid) == 3 + 5, 5.0, "the sentinel watches")
    else:
        assert inotify_instances(daemon.pid) == 0
    created = _write_sentinel(managed, 4, probe)
    took = _gone_within(managed, {4, 5, 6}, created, deadline_s,
                        "steps 1-3 to go after the sentinel in step 4")
    _report(f"{mode}: sentinel in step 4 to steps 1-3 deleted", took)
    # A step written after the start, then its sentinel: watched (or statted) as it appears,
    # and the watches follow the loaded step up.
    _make_finished_steps(managed, [7])
    if mode == "inotify":
        wait_until(lambda: inotify_watches(daemon.pid) == 3 + 3, 5.0,
                   "watches on steps 5-7 only, above the new loaded step 4")
    created = _write_sentinel(managed, 7, probe)
    took = _gone_within(managed, {7}, created, deadline_s,
                        "steps 4-6 to go after the sentinel in step 7")
    _report(f"{mode}: sentinel in a step made after the start", took)
    if mode == "inotify":
        wait_until(lambda: inotify_watches(daemon.pid) == 3, 5.0,
                   "no step watch once no step is above the loaded one")
    assert not daemon.named("fatal")
    assert daemon.not_json == []


def test_sentinel_watches_are_bounded(spawn: Spawn, tmp_path: Path) -> None:
    """A stalled receiver with many steps piled up above it: at most SENTINEL_STEPS watches, the
    lowest half above the loaded step and the newest half (a receiver restarted at the newest
    step is seen at once too)."""
    root = tmp_path / "ckpt"
    managed = root / "run" / "broadcasts"
    _make_finished_steps(managed, range(1, 41))
    probe = tmp_path / "clock-probe"
    _write_sentinel(managed, 2, probe)
    daemon = spawn(str(root), *RECEIVER_READY, "--metrics-addr", "127.0.0.1:0", *SLOW_TIMER)
    daemon.wait_event("ready")
    bound = fleet_module.SENTINEL_STEPS
    wait_until(lambda: inotify_watches(daemon.pid) == 3 + bound, 5.0, "the bounded watches")
    assert daemon.metric("ckpt_janitor_watches") == 3 + bound
    for index in range(50):  # shards written into a watched step are no sentinel
        (managed / "step_3" / f"extra-{index}.bin").write_bytes(b"x")
    created = _write_sentinel(managed, 40, probe)
    took = _gone_within(managed, {40}, created, 2.0, "steps below 40 to go")
    _report("sentinel in the newest of 40 steps", took)
    wait_until(lambda: inotify_watches(daemon.pid) == 3, 5.0, "the step watches dropped")


def test_a_step_watch_reacts_to_its_sentinel_alone(tmp_path: Path) -> None:
    """Shards created or renamed into a watched step do not wake the loop; the sentinel does,
    created in place or renamed into place, and it names the managed directory and the step."""
    seen: list[tuple[str, str | None]] = []
    step = tmp_path / "broadcasts" / "step_3"
    handler = _DirHandler(Target(str(step.parent), frozenset({SENTINEL}), "step_3"),
                          lambda path, name: seen.append((path, name)), str(step))
    handler.on_any_event(FileCreatedEvent(str(step / "shard-0.bin")))
    handler.on_any_event(FileMovedEvent(str(step / ".tmp"), str(step / "shard-1.bin")))
    handler.on_any_event(FileCreatedEvent(str(step / f"{SENTINEL}.tmp")))
    assert seen == []
    handler.on_any_event(FileCreatedEvent(str(step / SENTINEL)))
    handler.on_any_event(FileMovedEvent(str(step / f"{SENTINEL}.tmp"), str(step / SENTINEL)))
    assert seen == [(str(step.parent), "step_3")] * 2


def test_a_directory_watch_names_the_child_that_changed(tmp_path: Path) -> None:
    """Events in a managed directory name the child (both names of a rename); an event on the
    directory itself names none, so all of it is looked at."""
    seen: list[tuple[str, str | None]] = []
    managed = str(tmp_path / "broadcasts")
    handler = _DirHandler(Target(managed), lambda path, name: seen.append((path, name)), managed)
    handler.on_any_event(FileMovedEvent(f"{managed}/LOADED_STEP.tmp", f"{managed}/LOADED_STEP"))
    handler.on_any_event(FileCreatedEvent(f"{managed}/step_4"))
    handler.on_any_event(FileCreatedEvent(managed))
    assert seen == [(managed, "LOADED_STEP.tmp"), (managed, "LOADED_STEP"),
                    (managed, "step_4"), (managed, None)]
