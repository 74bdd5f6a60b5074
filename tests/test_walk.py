"""janitor.fs.walk, in-process on real trees: fd use bounded at any depth and width, every fd
closed, and a tree swapped mid-walk never redirects the walk (nor a reclaim) outside the trash
entry.

Run with `--hypothesis-show-statistics` to see the example counts.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.tree import tree_state
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from janitor.fs import reaper, sizes, walk

SLACK = 2  # a listing's dup'ed fd, and the one os.listdir('/proc/self/fd') itself opens


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def chain(parent: Path, depth: int, name: str = "d") -> None:
    """`parent/name/name/...`, `depth` levels, a file at each tenth: fd-relative (deep paths are
    longer than PATH_MAX)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if level % 10 == 0:
                file_fd = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(file_fd, b"x")
                os.close(file_fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def fd_limit(soft: int) -> Iterator[None]:
    """RLIMIT_NOFILE's soft limit lowered to `soft` for the block."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, saved[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def trash(scratch_fs: Path) -> Iterator[tuple[Path, int]]:
    where = scratch_fs / "trash"
    where.mkdir()
    with opened(where) as fd:
        yield where, fd


def test_fd_use_is_bounded_on_a_deep_chain_and_a_wide_directory(
        trash: tuple[Path, int]) -> None:
    where, fd = trash
    (where / "entry").mkdir()
    chain(where / "entry", 1500)
    for index in range(1500):
        (where / "entry" / f"w{index}").mkdir()
    before = open_fds()
    highest = before
    visits = 0
    with fd_limit(before + walk.MAX_FDS + SLACK):
        for _ in walk.walk(fd, "entry"):
            visits += 1
            if visits % 25 == 0:
                highest = max(highest, open_fds())
        size = sizes.tree_size(fd, "entry")
    assert visits == 1 + 1500 + 150 + 1500 + 1500 + 1500 + 1  # dirs, files, leaves
    assert highest <= before + walk.MAX_FDS + SLACK
    assert open_fds() == before
    assert size > 0

    with fd_limit(before + walk.MAX_FDS + SLACK):
        stats = reaper.reclaim(fd, ["entry"])
    assert (stats.pending, stats.problems, stats.failed) == ([], [], {})
    assert stats.directories == 1 + 1500 + 1500 and stats.files == 150
    assert stats.bytes == size
    assert os.listdir(where) == []
    assert open_fds() == before


def test_a_walk_stopped_mid_way_closes_every_fd(trash: tuple[Path, int]) -> None:
    """By an error policy that raises, or by its consumer raising at the deepest directory."""
    where, fd = trash
    chain(where, 100, name="entry")
    before = open_fds()

    def deepest(visit: walk.Visit) -> None:
        if visit.kind == "dir" and visit.st.st_nlink == 2:
            raise RuntimeError("stopped by the consumer")

    with pytest.raises(RuntimeError):
        for visit in walk.walk(fd, "entry"):
            deepest(visit)
    assert open_fds() == before

    def refuse(exc: OSError, where: str) -> None:
        raise exc

    def fail_listing(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "denied on purpose")

    walked = walk.walk(fd, "entry", onexc=refuse)
    next(walked)  # the top directory is open now
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "scandir", fail_listing)
        with pytest.raises(PermissionError):
            next(walked)
    assert open_fds() == before


def _hooked(monkeypatch: pytest.MonkeyPatch, when: Callable[[walk.Visit], bool],
            swap: Callable[[], None]) -> None:
    """Make reaper's walk call `swap()` once, at the first visit `when` accepts."""
    real = walk.walk
    done: list[bool] = []

    def hooked(*args: Any, **kwargs: Any) -> Iterator[walk.Visit]:
        for visit in real(*args, **kwargs):
            if not done and when(visit):
                done.append(True)
                swap()
            yield visit

    monkeypatch.setattr(walk, "walk", hooked)


def _before_opening(monkeypatch: pytest.MonkeyPatch, name: str, swap: Callable[[], None]) -> None:
    """Make the walk call `swap()` once, right before it opens the listed directory `name`:
    between its listing (and lstat) and its open, the window a racing attacker has."""
    real = walk._open_dir
    done: list[bool] = []

    def hooked(parent_fd: int, child: str, ino: int, own_modes: bool) -> int:
        if child == name and not done:
            done.append(True)
            swap()
        return real(parent_fd, child, ino, own_modes)

    monkeypatch.setattr(walk, "_open_dir", hooked)


def _entry_with_a_subdirectory(where: Path) -> None:
    (where / "entry" / "a" / "b").mkdir(parents=True)
    (where / "entry" / "a" / "f").write_bytes(b"listed before b is opened")
    (where / "entry" / "a" / "b" / "shard").write_bytes(b"trashed")


def _outside(base: Path) -> Path:
    outside = base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.bin").write_bytes(b"must survive")
    (outside / "sub" / "keep2.bin").write_bytes(b"must survive too")
    return outside


def test_a_directory_swapped_for_a_symlink_between_listing_and_open_is_not_followed(
        trash: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    where, fd = trash
    _entry_with_a_subdirectory(where)
    outside = _outside(where.parent)
    before = tree_state(outside)

    def swap() -> None:  # b, listed as a directory, becomes a symlink to outside
        (where / "entry" / "a" / "b").rename(where.parent / "moved")
        (where / "entry" / "a" / "b").symlink_to(outside, target_is_directory=True)

    _before_opening(monkeypatch, "b", swap)
    stats = reaper.reclaim(fd, ["entry"])

    assert tree_state(outside) == before
    assert os.listdir(where) == []  # the symlink itself was unlinked, never followed
    assert stats.failed == {}
    assert (where.parent / "moved" / "shard").read_bytes() == b"trashed"


def test_a_directory_replaced_between_listing_and_open_stops_that_entry_only(
        trash: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    where, fd = trash
    _entry_with_a_subdirectory(where)
    (where / "other").mkdir()
    (where / "other" / "x").write_bytes(b"reclaimed anyway")
    outside = _outside(where.parent)
    before = tree_state(outside)

    def swap() -> None:  # b is replaced by a real directory from outside the trash
        (where / "entry" / "a" / "b").rename(where.parent / "moved")
        outside.rename(where / "entry" / "a" / "b")

    _before_opening(monkeypatch, "b", swap)
    stats = reaper.reclaim(fd, ["entry", "other"])

    assert tree_state(where / "entry" / "a" / "b") == before  # walked into: never
    assert "entry" in stats.failed and "replaced during the walk" in stats.failed["entry"]
    assert stats.pending == ["entry"]
    assert not (where / "other").exists()  # the next entry was still reclaimed


def test_sizes_of_a_tree_swapped_mid_walk_end_quietly_or_raise_when_strict(
        trash: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """tree_size is a report (it ends quietly); newest_in_tree feeds a decision (it raises)."""
    where, fd = trash
    _entry_with_a_subdirectory(where)
    outside = _outside(where.parent)

    def swap() -> None:
        (where / "entry" / "a" / "b").rename(where.parent / "moved")
        outside.rename(where / "entry" / "a" / "b")

    fds = open_fds()
    _before_opening(monkeypatch, "b", swap)
    assert sizes.tree_size(fd, "entry") > 0
    (where / "entry" / "a" / "b").rename(outside)
    (where.parent / "moved").rename(where / "entry" / "a" / "b")
    _before_opening(monkeypatch, "b", swap)
    with pytest.raises(walk.TreeSwappedError):
        sizes.newest_in_tree(fd, "entry")
    assert open_fds() == fds


def test_an_ancestor_swapped_while_its_fd_was_closed_is_caught_on_reopen(
        trash: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    where, fd = trash
    (where / "entry").mkdir()
    chain(where / "entry", 60)
    outside = _outside(where.parent)
    before = tree_state(outside)
    monkeypatch.setattr(walk, "MAX_FDS", 3)
    fds_before = open_fds()

    def swap() -> None:  # the deepest directory is open; its ancestor at depth 3 is not
        third = where / "entry" / "d" / "d" / "d"
        third.rename(where.parent / "moved")
        outside.rename(third)

    _hooked(monkeypatch, lambda v: v.kind == "dir" and v.st.st_nlink == 2, swap)
    stats = reaper.reclaim(fd, ["entry"])

    assert tree_state(where / "entry" / "d" / "d" / "d") == before
    assert "replaced during the walk" in stats.failed["entry"]
    assert open_fds() == fds_before


# ---- random trees under a random low fd limit ---------------------------------------------------

_MODES = st.sampled_from([0o755, 0o700, 0o500, 0o600, 0o000, 0o311])
_LEAF = st.sampled_from(["file", "empty_dir", "symlink_dir", "symlink_file", "fifo",
                         "hardlink", "dangling"])
_TREE = st.recursive(_LEAF, lambda kids: st.tuples(_MODES, st.lists(kids, max_size=4)),
                     max_leaves=25)


def _build(path: Path, node: object, outside: Path, counter: list[int]) -> None:
    counter[0] += 1
    name = path / f"n{counter[0]}"
    if isinstance(node, tuple):
        mode, children = node
        name.mkdir()
        for child in children:
            _build(name, child, outside, counter)
        name.chmod(mode)
        return
    if node == "file":
        name.write_bytes(os.urandom(64))
    elif node == "empty_dir":
        name.mkdir()
    elif node == "symlink_dir":
        name.symlink_to(outside, target_is_directory=True)
    elif node == "symlink_file":
        name.symlink_to(outside / "keep.bin")
    elif node == "fifo":
        os.mkfifo(name)
    elif node == "hardlink":
        os.link(outside / "sub" / "keep2.bin", name)
    else:
        name.symlink_to(path / "nowhere")


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREE, depth=st.integers(0, 80), spare=st.integers(3, 40),
       workers=st.sampled_from([1, 1, 2, 3]))
def test_random_trees_are_reclaimed_within_bounded_fds_and_nothing_outside_changes(
        tree: object, depth: int, spare: int, workers: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="janitor-walk-", dir="/dev/shm"
                                 if os.path.isdir("/dev/shm") else None))
    try:
        outside = _outside(base)
        where = base / "trash"
        where.mkdir()
        (where / "entry").mkdir()
        _build(where / "entry", tree, outside, [0])
        chain(where / "entry", depth)
        before = tree_state(outside)
        with opened(where) as fd:
            fds = open_fds()
            with fd_limit(fds + spare):
                stats = reaper.reclaim(fd, ["entry"], workers=workers)
            assert open_fds() == fds
        assert tree_state(outside) == before
        gone = not (where / "entry").exists()
        event(f"reclaimed: {gone}")
        event(f"fds spare {'>= 24' if spare >= 24 else '< 24'}")
        if spare >= 24:
            assert gone, stats
        else:
            assert gone or "entry" in stats.failed, stats
        assert gone != (stats.pending == ["entry"])
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_a_same_filesystem_bind_mount_made_mid_walk_is_not_crossed(tmp_path: Path) -> None:
    """st_dev cannot tell a bind mount of the same filesystem, and the reclaim's mount-table
    check runs before the walk: each directory's mount ID is compared as it is entered."""
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "precious").write_bytes(b"p")
    (tmp_path / "trash" / "e" / "a").mkdir(parents=True)
    (tmp_path / "trash" / "e" / "z").mkdir()
    before = tree_state(outside)
    errors: list[tuple[str, str | None]] = []
    fd = os.open(tmp_path / "trash", os.O_RDONLY | os.O_DIRECTORY)
    try:
        visits = walk.walk(fd, "e", onexc=lambda exc, where: errors.append((where, exc.strerror)))
        assert next(visits).kind == "dir"  # `e` entered; its listing is read next
        done = subprocess.run(["mount", "--bind", str(outside), str(tmp_path / "trash/e/z")],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount: {done.stderr.decode().strip()}")
        try:
            seen = [(v.kind, v.name) for v in visits]
        finally:
            subprocess.run(["umount", str(tmp_path / "trash/e/z")], check=True)
    finally:
        os.close(fd)
    assert ("dir", "z") not in seen and ("entry", "precious") not in seen
    assert errors == [("e/z", "a mount point (a bind mount?), not crossed")]
    assert tree_state(outside) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_a_walk_root_or_opened_directory_that_is_a_bind_mount_is_not_entered(
        tmp_path: Path) -> None:
    """The home mount is that of the directory the walk starts from (the trash), so a trash
    entry that is itself a same-filesystem bind mount is refused too, by the serial walk and by
    open_directory (the parallel reclaim's way into an entry)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"p")
    (tmp_path / "trash" / "e").mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(outside), str(tmp_path / "trash" / "e")],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount: {done.stderr.decode().strip()}")
    fd = os.open(tmp_path / "trash", os.O_RDONLY | os.O_DIRECTORY)
    try:
        errors: list[tuple[str, str | None]] = []
        seen = list(walk.walk(fd, "e", onexc=lambda exc, where: errors.append(
            (where, exc.strerror))))
        assert seen == []
        assert errors == [("e", "a mount point (a bind mount?), not crossed")]
        with pytest.raises(OSError, match="a mount point"):
            walk.open_directory(fd, "e", dev=os.fstat(fd).st_dev)
    finally:
        os.close(fd)
        subprocess.run(["umount", str(tmp_path / "trash" / "e")], check=True)
    assert (outside / "precious").read_bytes() == b"p"
