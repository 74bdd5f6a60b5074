"""Reserved names verified after opening (issue 10, points 1, 3 and 5).

Every name the janitor reserves (trash, lock, consumer markers, pins, completion markers,
staging directories) is planted as every kind of object an attacker can make: a directory, a
regular file, a hard link to an outside file, symlinks (dangling, to outside, to itself), a FIFO,
a socket, a bind mount of an outside directory or file, mode 000, owned by another user. Then the
real `janitor` runs (sweep, dry run, status, run --once), as root and as uid 65534. Whatever it
meets: files outside the tree keep their content, nothing at or above the loaded step nor the
newest complete step is deleted, a pinned step stays, a dry run or status changes nothing, and the
command neither hangs nor prints a traceback. The exact cases the attacker found come first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.daemon import Daemon
from helpers.run import can_drop_privileges, run_janitor, shared_dir
from helpers.safety import bind_mount, build, check_whole, publish_marker, tmpfs, unmount
from helpers.tree import step_numbers, trash_names, tree_state
from helpers.wait import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janitor import protocol
from janitor.fs.lock import LockHeldError
from janitor.model import ScanOptions
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts and chown need root")

NOBODY_UID = 65534
PRECIOUS = b"outside data the janitor must never touch\n"
STEPS = range(6)  # step_0 .. step_5, all complete; LOADED_STEP = 4
LOADED = 4


@contextlib.contextmanager
def scene(fs: str = "disk") -> Iterator[tuple[Path, Path]]:
    """(managed directory, outside directory) side by side, on one filesystem (so an outside file
    can be hard-linked in), in a directory uid 65534 can reach. With `fs` other than "disk" both
    are on a small tmpfs of their own (see `degrade`)."""
    with shared_dir("janitor-reserved-") as shared, contextlib.ExitStack() as stack:
        base = shared
        if fs != "disk":
            base = stack.enter_context(tmpfs(shared / "fs", "size=2m,mode=0755"))
        outside = base / "outside"
        (outside / "dir").mkdir(parents=True)
        (outside / "precious.bin").write_bytes(PRECIOUS)
        (outside / "dir" / "also.bin").write_bytes(PRECIOUS)
        yield base / "tree", outside


def degrade(tree: Path, fs: str) -> None:
    """Make the tmpfs under `tree` read-only, or fill it to the last byte (real ENOSPC)."""
    if fs == "tmpfs-ro":
        done = subprocess.run(["mount", "-o", "remount,ro", str(tree.parent)],
                              capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
    elif fs == "tmpfs-full":
        filler_path = tree.parent / "filler"
        with contextlib.suppress(OSError), filler_path.open("wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 65536)


def plant(where: Path, kind: str, outside: Path, mounted: list[Path], *,
          stranger: int) -> None:
    """Make `where` an object of `kind`; `stranger` is a uid that is not the janitor's."""
    if kind == "directory":
        where.mkdir()
        (where / "inside.bin").write_bytes(b"i")
    elif kind == "file":
        where.write_bytes(protocol.format_marker(LOADED))
    elif kind == "hardlink-outside":
        os.link(outside / "precious.bin", where)
    elif kind == "symlink-dangling":
        where.symlink_to(outside / "absent")
    elif kind == "symlink-outside-file":
        where.symlink_to(outside / "precious.bin")
    elif kind == "symlink-outside-dir":
        where.symlink_to(outside / "dir", target_is_directory=True)
    elif kind == "symlink-self":
        where.symlink_to(where.name)
    elif kind == "fifo":
        os.mkfifo(where)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(where))
    elif kind in ("bind-dir", "bind-file"):
        source = outside / ("dir" if kind == "bind-dir" else "precious.bin")
        if kind == "bind-dir":
            where.mkdir()
        else:
            where.write_bytes(b"")
        done = subprocess.run(["mount", "--bind", str(source), str(where)],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount: {done.stderr.decode().strip()}")
        mounted.append(where)
    elif kind == "mode000-file":
        where.write_bytes(protocol.format_marker(LOADED))
        where.chmod(0)
    elif kind == "mode000-dir":
        where.mkdir()
        where.chmod(0)
    elif kind == "stranger-file":
        where.write_bytes(protocol.format_marker(LOADED))
        os.chown(where, stranger, stranger)
    elif kind == "stranger-dir":
        where.mkdir(mode=0o755)
        os.chown(where, stranger, stranger)
    else:
        raise AssertionError(kind)


KINDS = ("directory", "file", "hardlink-outside", "symlink-dangling", "symlink-outside-file",
         "symlink-outside-dir", "symlink-self", "fifo", "socket", "bind-dir", "bind-file",
         "mode000-file", "mode000-dir", "stranger-file", "stranger-dir")
# Names inside step_1 are planted before the marker is published (a later change would keep
# step_1 as changed-after-marker and the object would never be put to the test).
IN_STEP = (f"step_1/{protocol.PIN_FILE}", f"step_1/{protocol.DEFAULT_COMPLETE_MARKER}")
TOP = (protocol.TRASH_DIR, protocol.LOCK_FILE, protocol.LOADED_MARKER,
       f"{protocol.LOADED_MARKER}.eval", f"{protocol.STAGING_PREFIX}7.abc",
       # An entry left in a real trash (a killed run's leftover), as any kind of object: a bind
       # mount ON it must not be walked, a symlink not followed, a hard link only unlinked.
       f"{protocol.TRASH_DIR}/5.1.1.0")
COMMANDS = (("sweep",), ("sweep", "--dry-run"), ("status",), ("run", "--once"))


def marker_counts(name: str, kind: str, as_nobody: bool) -> bool:
    """Whether a planted consumer marker is a valid one: a readable regular file of its own on
    the tree's mount (an independent statement of invariants 5 and 6, not the code's)."""
    if not name.startswith(protocol.LOADED_MARKER):
        return True
    if kind in ("file", "stranger-file"):
        return True
    return kind == "mode000-file" and not as_nobody


def run_scenario(name: str, kind: str, command: tuple[str, ...], as_nobody: bool,
                 nofile: int | None = None, fs: str = "disk") -> None:
    mounted: list[Path] = []
    with scene(fs) as (tree, outside):
        try:
            build(tree, STEPS)
            if as_nobody:
                _chown_tree(tree)
            if name in IN_STEP:
                (tree / name).unlink(missing_ok=True)
                _plant_as(tree / name, kind, outside, mounted, as_nobody)
            publish_marker(tree, LOADED)
            if name in TOP:
                if name == protocol.LOADED_MARKER:
                    (tree / name).unlink()
                if "/" in name:
                    (tree / protocol.TRASH_DIR).mkdir(0o700)
                    if as_nobody:
                        os.chown(tree / protocol.TRASH_DIR, NOBODY_UID, NOBODY_UID)
                _plant_as(tree / name, kind, outside, mounted, as_nobody)
            degrade(tree, fs)
            outside_before = tree_state(outside)
            tree_before = tree_state(tree)
            extra = ["--audit-log", "off"] if command[0] in ("sweep", "run") else []
            ran = run_janitor(*command, tree, "--partial-grace", "0", *extra,
                              as_nobody=as_nobody, timeout_s=60, nofile=nofile)
            where = (f"{name} as {kind}, {' '.join(command)}, "
                     f"{'uid 65534' if as_nobody else 'root'}, nofile {nofile}, {fs}")
            assert "Traceback" not in ran.stderr, (where, ran.stderr)
            assert ran.code in (0, 3, 4, 5), (where, ran)
            if command[0] != "run":
                assert all(line.startswith("janitor: ") for line in ran.err_lines), (where, ran)
            assert tree_state(outside) == outside_before, where
            left = set(step_numbers(tree))
            assert {LOADED, max(STEPS)} <= left, (where, left, ran)
            if name == IN_STEP[0]:
                assert 1 in left, (where, "a pin of any kind pins its step")
            if not marker_counts(name, kind, as_nobody):
                assert left == set(STEPS), (where, "an unusable marker halts the directory")
            if command[0] == "status" or "--dry-run" in command:
                assert tree_state(tree) == tree_before, (where, "read-only commands change nothing")
            assert check_whole(tree) == [], where
        finally:
            for where in reversed(mounted):
                unmount(where)


def _chown_tree(tree: Path) -> None:
    """Give the whole tree to uid 65534, before anything is planted in it."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(entry, NOBODY_UID, NOBODY_UID, follow_symlinks=False)


def _plant_as(where: Path, kind: str, outside: Path, mounted: list[Path],
              as_nobody: bool) -> None:
    """Plant as the janitor's user would own it; a stranger's objects belong to the other uid."""
    plant(where, kind, outside, mounted, stranger=0 if as_nobody else NOBODY_UID)
    if as_nobody and not kind.startswith(("stranger-", "bind-")):
        os.chown(where, NOBODY_UID, NOBODY_UID, follow_symlinks=False)


@pytest.mark.slow
@settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(TOP + IN_STEP), kind=st.sampled_from(KINDS),
       command=st.sampled_from(COMMANDS), as_nobody=st.booleans(),
       nofile=st.sampled_from([None, None, 64, 1024]),
       fs=st.sampled_from(["disk", "disk", "disk", "tmpfs-ro", "tmpfs-full"]))
def test_every_reserved_name_as_every_kind_of_object(name: str, kind: str,
                                                     command: tuple[str, ...],
                                                     as_nobody: bool, nofile: int | None,
                                                     fs: str) -> None:
    """Also under a low fd limit (RLIMIT_NOFILE 64 or 1024), as another user, on a read-only
    filesystem and on a full one."""
    if as_nobody and not can_drop_privileges():
        pytest.skip("needs setpriv to drop to uid 65534")
    run_scenario(name, kind, command, as_nobody, nofile, fs)


# ---- the cases the attacker found --------------------------------------------------------------

@pytest.mark.parametrize("command", [("sweep",), ("run", "--once")])
def test_trash_bind_mounted_from_outside_is_refused_and_the_outside_survives(
        command: tuple[str, ...]) -> None:
    with scene() as (tree, outside):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        before = tree_state(outside)
        with bind_mount(outside / "dir", tree / protocol.TRASH_DIR):
            ran = run_janitor(*command, tree, "--audit-log", "off")
            assert tree_state(outside) == before
            assert set(step_numbers(tree)) == set(STEPS)
        assert ran.code == 4 if command == ("sweep",) else ran.code in (0, 5), ran
        assert "Traceback" not in ran.stderr
        if command == ("sweep",):
            assert ran.err_lines == [
                f"janitor: {tree}: {protocol.TRASH_DIR} is a mount point (another mount, perhaps "
                "a bind mount); move it away by hand (look inside first: it should hold only "
                "trashed steps)"]
        else:
            assert "is a mount point" in ran.stderr


def test_lock_hard_linked_to_an_outside_file_is_refused_and_never_written() -> None:
    with scene() as (tree, outside):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        os.link(outside / "precious.bin", tree / protocol.LOCK_FILE)
        ran = run_janitor("sweep", tree, "--audit-log", "off")
        assert (outside / "precious.bin").read_bytes() == PRECIOUS
        assert set(step_numbers(tree)) == set(STEPS)
        assert ran.code == 4, ran
        assert ran.err_lines == [
            f"janitor: {tree}: {protocol.LOCK_FILE} is a hard link (2 names for one file); "
            "remove it by hand (it holds only the holder's record)"]


@pytest.mark.parametrize("command", [("status",), ("sweep",), ("sweep", "--dry-run")])
def test_lock_as_a_fifo_never_hangs(command: tuple[str, ...]) -> None:
    with scene() as (tree, _):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        os.mkfifo(tree / protocol.LOCK_FILE)
        ran = run_janitor(*command, tree, timeout_s=20)
        assert "Traceback" not in ran.stderr
        if command != ("sweep", "--dry-run"):  # a dry run takes no lock: it need not look
            assert f"{protocol.LOCK_FILE} is a FIFO, not a regular file" in ran.stderr, ran
            assert ran.code in (4, 5), ran
        assert set(step_numbers(tree)) == set(STEPS)


def test_future_dated_marker_licenses_nothing_rewritten_after_its_real_write() -> None:
    """`touch -d tomorrow LOADED_STEP`, then the trainer (resumed) rewrites step_2: the marker's
    licence is its ctime (the real write), so step_2 is kept as changed-after-marker."""
    with scene() as (tree, _):
        build(tree, STEPS)
        marker = publish_marker(tree, LOADED)
        tomorrow = marker.stat().st_mtime + 86400
        os.utime(marker, (tomorrow, tomorrow))
        licence = marker.stat().st_ctime_ns

        def rewritten() -> bool:
            (tree / "step_2" / "rewritten.bin").write_bytes(b"new weights")
            return (tree / "step_2" / "rewritten.bin").stat().st_ctime_ns > licence

        wait_until(rewritten, 5.0, "a rewrite strictly after the marker's ctime", interval_s=0.001)
        ran = run_janitor("sweep", "--json", tree, "--audit-log", "off")
        assert ran.code == 3, ran
        assert set(step_numbers(tree)) == {2, 4, 5}
        assert '"reason": "changed-after-marker"' in ran.stdout


def test_any_consumer_beyond_the_newest_step_halts_even_when_another_is_lower() -> None:
    with scene() as (tree, _):
        build(tree, STEPS)
        publish_marker(tree, 2)
        publish_marker(tree, 99, consumer="eval")
        ran = run_janitor("sweep", tree, "--audit-log", "off")
        assert ran.code == 4, ran
        assert set(step_numbers(tree)) == set(STEPS)
        assert ran.err_lines == [
            f"janitor: {tree}: LOADED_STEP.eval: loaded step 99 is beyond the newest step 5 "
            "(a marker left from another run?); deleting nothing here until the consumer writes "
            "a valid marker"]


def test_trash_removed_by_hand_while_the_daemon_runs_is_recreated() -> None:
    with scene() as (tree, _):
        build(tree, range(12))
        publish_marker(tree, 3)
        daemon = Daemon(["--rescan-interval", "60", "--audit-log", "off", tree])
        try:
            daemon.wait_event("ready")
            wait_until(lambda: set(step_numbers(tree)) == set(range(3, 12)), 10.0,
                       "steps 0-2 deleted")
            wait_until(lambda: trash_names(tree) == [], 10.0, "the trash reclaimed")
            (tree / protocol.TRASH_DIR).rmdir()
            publish_marker(tree, 9)
            wait_until(lambda: set(step_numbers(tree)) == set(range(9, 12)), 10.0,
                       "steps 3-8 deleted through a new trash")
            assert not daemon.named("deletion_postponed", why="already gone")
            wait_until(lambda: trash_names(tree) == [], 10.0, "the new trash reclaimed")
        finally:
            assert daemon.stop() == 0


# ---- a reserved name removed or replaced while in use -----------------------------------------

def _managed(tree: Path) -> ManagedDirectory:
    return ManagedDirectory(str(tree), dry_run=False, policy=Policy(), options=ScanOptions())


def test_lock_removed_while_held_and_taken_by_another_janitor_stops_the_first() -> None:
    """An flock lives on an inode: once `.janitor.lock` is removed, a second janitor creates and
    locks a new file. The first must notice before its next rename and delete nothing more."""
    with scene() as (tree, _):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        first = _managed(tree)
        try:
            (tree / protocol.LOCK_FILE).unlink()
            with _managed(tree) as second:
                with pytest.raises(LockHeldError):
                    first.reconcile()
                assert set(step_numbers(tree)) == set(STEPS)
                result = second.reconcile()
                assert sorted(t.entry.number for t in result.trashed) == [0, 1, 2, 3]
        finally:
            first.close()


def test_lock_removed_while_held_is_taken_again_when_nobody_else_has_it() -> None:
    with scene() as (tree, _):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        with _managed(tree) as directory:
            (tree / protocol.LOCK_FILE).unlink()
            result = directory.reconcile()
            assert sorted(t.entry.number for t in result.trashed) == [0, 1, 2, 3]
            assert f'"pid": {os.getpid()}' in (tree / protocol.LOCK_FILE).read_text()


def test_daemon_whose_lock_file_is_replaced_gives_the_directory_up() -> None:
    with scene() as (tree, _):
        build(tree, STEPS)
        publish_marker(tree, 1)
        first = Daemon(["--rescan-interval", "60", "--audit-log", "off", tree])
        try:
            first.wait_event("ready")
            (tree / protocol.LOCK_FILE).unlink()
            with _managed(tree) as other:  # another janitor takes the new lock file
                publish_marker(tree, LOADED)
                first.wait_event("lock_lost", directory=str(tree))
                assert set(step_numbers(tree)) == set(range(1, 6))
                assert other.reconcile().trashed
        finally:
            assert first.stop() == 0


@pytest.mark.parametrize("command", [("sweep",), ("run", "--once")])
def test_bind_mount_on_a_trash_entry_is_never_walked(command: tuple[str, ...]) -> None:
    """Found by our own pass: a mount ON a leftover trash entry (not inside it) was walked and the
    outside directory emptied; the mount table check looked only strictly inside entries."""
    with scene() as (tree, outside):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        (tree / protocol.TRASH_DIR).mkdir(0o700)
        before = tree_state(outside)
        with bind_mount(outside / "dir", tree / protocol.TRASH_DIR / "5.1.1.0"):
            ran = run_janitor(*command, tree, "--audit-log", "off")
            assert tree_state(outside) == before
        assert "Traceback" not in ran.stderr
        assert "holds a mount point" in ran.stderr, ran
        assert set(step_numbers(tree)) == {4, 5}


@pytest.mark.parametrize("kind", ["fifo", "hardlink-outside", "symlink-outside-file", "socket"])
@pytest.mark.parametrize("given", ["explicit", "auto"])
def test_audit_log_path_as_a_hostile_object_never_hangs_nor_writes_through(
        kind: str, given: str) -> None:
    """The audit log is a file the janitor writes: a FIFO with no reader would hang the first
    deletion, a hard link or symlink would append to another file. Explicit: a usage error at
    start. auto: every deletion is refused (fail-closed), each with one line."""
    with scene() as (tree, outside):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        state = tree.parent / "state"
        log = state / "ckpt-janitor" / "audit.jsonl"
        log.parent.mkdir(parents=True)
        plant(log, kind, outside, [], stranger=NOBODY_UID)
        before = tree_state(outside)
        args = ["--audit-log", str(log)] if given == "explicit" else []
        ran = run_janitor("sweep", tree, *args, env={"XDG_STATE_HOME": str(state)},
                          timeout_s=20)
        assert tree_state(outside) == before
        assert set(step_numbers(tree)) == set(STEPS)
        assert "Traceback" not in ran.stderr
        if given == "explicit":
            assert ran.code == 2, ran
            assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith(
                f"janitor: error: --audit-log {log} is "), ran
        else:
            assert ran.code == 5, ran
            assert len(ran.err_lines) == 4, ran  # steps 0-3, one line each
            assert all("audit log unwritable" in line for line in ran.err_lines)


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
@pytest.mark.parametrize("hostile", ["trash-fifo", "trash-bind-mount", "lock-hard-link"])
def test_a_refusal_repeated_on_every_pass_keeps_the_daemons_fds_flat(hostile: str) -> None:
    """100 passes, each refusing the same reserved name again: not one fd more at the end."""
    with scene() as (tree, outside):
        build(tree, STEPS)
        publish_marker(tree, LOADED)
        mounted: list[Path] = []
        if hostile == "trash-fifo":
            os.mkfifo(tree / protocol.TRASH_DIR)
            event = "reconcile_failed"
        elif hostile == "trash-bind-mount":
            plant(tree / protocol.TRASH_DIR, "bind-dir", outside, mounted, stranger=0)
            event = "reconcile_failed"
        else:
            os.link(outside / "precious.bin", tree / protocol.LOCK_FILE)
            event = "directory_unmanageable"
        # Debug: a fault is logged once at its level, and each repeat at debug, which counts
        # the passes here.
        daemon = Daemon(["--rescan-interval", "0.1", "--audit-log", "off", "--log-level",
                         "debug", tree])
        try:
            daemon.wait_event("ready")
            wait_until(lambda: len(daemon.named(event)) >= 5, 20.0, f"5 {event} events")
            baseline = _open_fds(daemon.pid)
            wait_until(lambda: len(daemon.named(event)) >= 105, 60.0, f"100 more {event}")
            # A pass in flight holds an fd or two for an instant (the lock being opened, a
            # /proc read); a leak of one fd a pass would add 100.
            assert _open_fds(daemon.pid) <= baseline + 2
            assert set(step_numbers(tree)) == set(STEPS)
            assert (outside / "precious.bin").read_bytes() == PRECIOUS
        finally:
            assert daemon.stop() == 0
            for where in mounted:
                unmount(where)
