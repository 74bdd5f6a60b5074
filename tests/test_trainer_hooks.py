"""trainer_hooks without torch: atomic publish, replacement, markers, consumers, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.hooks import REPO, child_env, tree_files

import trainer_hooks
from janitor import protocol
from trainer_hooks import _rename as rename_module
from trainer_hooks import (
    mark_loaded,
    mark_receiver_ready,
    newest_complete_step,
    staged_step,
    wait_for_step_newer_than,
)


def publish(directory: Path, step: int, files: dict[str, bytes],
            marker: str = protocol.DEFAULT_COMPLETE_MARKER) -> None:
    with staged_step(directory, step, complete_marker=marker) as staging:
        for rel, data in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)


def exchange_supported(directory: Path) -> bool:
    """Whether renameat2 RENAME_EXCHANGE works on `directory`'s filesystem (else: fallback)."""
    (directory / ".probe-a").mkdir()
    (directory / ".probe-b").mkdir()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return rename_module.renameat2(".probe-a", ".probe-b", fd, rename_module.RENAME_EXCHANGE)
    finally:
        os.close(fd)
        (directory / ".probe-a").rmdir()
        (directory / ".probe-b").rmdir()


# ---- publishing --------------------------------------------------------------------------------

def test_staged_step_publishes_files_and_marker_last(tmp_path: Path) -> None:
    with staged_step(tmp_path, 5) as staging:
        assert staging.parent == tmp_path
        assert staging.name.startswith(protocol.STAGING_PREFIX + "5.")
        assert not protocol.looks_like_step(staging.name)
        assert os.listdir(tmp_path) == [staging.name]  # nothing visible while writing
        (staging / "sub").mkdir()
        (staging / "sub" / "shard.bin").write_bytes(b"x" * 10)
        (staging / "a.bin").write_bytes(b"a")
    assert os.listdir(tmp_path) == ["step_5"]
    assert tree_files(tmp_path / "step_5") == {"a.bin", "sub/shard.bin", "STABLE"}
    assert (tmp_path / "step_5" / "STABLE").read_bytes() == b""
    assert newest_complete_step(tmp_path) == 5


def test_published_step_mode_follows_umask_and_mtime_is_publish_time(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        with staged_step(tmp_path, 1) as staging:
            (staging / "f").write_bytes(b"f")
            os.utime(staging, (1_000_000, 1_000_000))  # as if the writer took ages
            before = time.time()
    finally:
        os.umask(old_umask)
    st = (tmp_path / "step_1").stat()
    assert st.st_mode & 0o777 == 0o755  # not mkdtemp's 0700: consumers may be other users
    assert st.st_mtime >= before - 1  # the janitor compares this with LOADED_STEP's mtime


def test_custom_marker_written_by_the_writer_is_kept(tmp_path: Path) -> None:
    publish(tmp_path, 2, {"data": b"d", ".finished": b"writer's own"}, marker=".finished")
    assert (tmp_path / "step_2" / ".finished").read_bytes() == b"writer's own"
    assert newest_complete_step(tmp_path, complete_marker=".finished") == 2
    assert newest_complete_step(tmp_path) is None  # no STABLE


def test_marker_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="completion marker"), \
            staged_step(tmp_path, 3) as staging:
        (staging / "STABLE").mkdir()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("writer broke"), KeyboardInterrupt()])
def test_exception_in_writer_removes_staging(tmp_path: Path, error: BaseException) -> None:
    with pytest.raises(type(error)), staged_step(tmp_path, 4) as staging:
        (staging / "half").write_bytes(b"h")
        raise error
    assert os.listdir(tmp_path) == []


def test_republish_replaces_the_step_whole(tmp_path: Path) -> None:
    publish(tmp_path, 3, {"a": b"old", "b": b"old", "sub/c": b"old"})
    publish(tmp_path, 3, {"a": b"new", "d": b"new"})
    assert tree_files(tmp_path / "step_3") == {"a", "d", "STABLE"}
    assert (tmp_path / "step_3" / "a").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["step_3"]  # the old copy is gone, no debris


def test_republish_without_renameat2_replaces_whole(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rename_module, "_RENAMEAT2", None)
    publish(tmp_path, 3, {"a": b"old", "b": b"old"})
    publish(tmp_path, 3, {"a": b"new"})
    publish(tmp_path, 4, {"a": b"four"})
    assert tree_files(tmp_path / "step_3") == {"a", "STABLE"}
    assert (tmp_path / "step_3" / "a").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["step_3", "step_4"]


def test_republish_fallback_restores_old_step_if_rename_in_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rename_module, "_RENAMEAT2", None)
    publish(tmp_path, 3, {"a": b"old"})
    real_rename = os.rename

    def failing_rename(src: str, dst: str, **kwargs: int) -> None:
        if str(src).startswith(protocol.STAGING_PREFIX) and dst == "step_3" \
                and ".replaced." not in str(src):
            raise OSError(5, "injected EIO")
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        publish(tmp_path, 3, {"a": b"new"})
    assert (tmp_path / "step_3" / "a").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["step_3"]


def test_republish_is_never_absent_or_mixed_for_a_reader(tmp_path: Path) -> None:
    """With RENAME_EXCHANGE, a reader polling step_3 always finds one whole generation."""
    publish(tmp_path, 3, {f"f{i}": b"gen0" for i in range(20)})
    stop = threading.Event()
    seen = {"absent": 0, "mixed": 0, "reads": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(tmp_path / "step_3", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except FileNotFoundError:
                seen["absent"] += 1
                continue
            try:
                generations = set()
                for name in os.listdir(fd):
                    if name != "STABLE":
                        try:
                            with open(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as file:
                                generations.add(file.read())
                        except FileNotFoundError:
                            generations.add(b"removed")  # a replaced copy being removed
                if len(generations - {b"removed"}) > 1:
                    seen["mixed"] += 1
                seen["reads"] += 1
            finally:
                os.close(fd)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for generation in range(1, 150):
            publish(tmp_path, 3, {f"f{i}": b"gen%d" % generation for i in range(20)})
    finally:
        stop.set()
        thread.join()
    assert seen["mixed"] == 0
    assert seen["reads"] > 0
    if exchange_supported(tmp_path):
        assert seen["absent"] == 0, seen


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_foreign_step_entry_is_never_replaced(tmp_path: Path, kind: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    managed = tmp_path / "managed"
    managed.mkdir()
    if kind == "file":
        (managed / "step_3").write_bytes(b"someone's file")
    else:
        (managed / "step_3").symlink_to(elsewhere)
    with pytest.raises(FileExistsError, match="not a real directory"):
        publish(managed, 3, {"a": b"a"})
    assert sorted(os.listdir(managed)) == ["step_3"]
    assert os.listdir(elsewhere) == []


def test_staged_step_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"), \
            staged_step(tmp_path / "missing", 1):
        pass
    with pytest.raises(ValueError, match="non-negative"), staged_step(tmp_path, -1):
        pass
    with pytest.raises(ValueError, match="plain file name"), \
            staged_step(tmp_path, 1, complete_marker="a/b"):
        pass
    assert os.listdir(tmp_path) == []


# ---- LOADED_STEP and .receiver_ready -----------------------------------------------------------

def test_mark_loaded_writes_exact_bytes_atomically(tmp_path: Path) -> None:
    path = mark_loaded(tmp_path, 7)
    assert path == tmp_path / "LOADED_STEP"
    assert path.read_bytes() == b"7\n"
    assert protocol.parse_marker(path.read_bytes()) == 7
    mark_loaded(tmp_path, 12)
    assert path.read_bytes() == b"12\n"
    mark_loaded(tmp_path, 3)  # a consumer restarted from an older step: allowed
    assert path.read_bytes() == b"3\n"
    assert os.listdir(tmp_path) == ["LOADED_STEP"]  # no temporary left behind


def test_mark_loaded_for_named_consumers(tmp_path: Path) -> None:
    mark_loaded(tmp_path, 4, consumer="eval")
    mark_loaded(tmp_path, 9, consumer="uploader-2")
    assert (tmp_path / "LOADED_STEP.eval").read_bytes() == b"4\n"
    assert protocol.consumer_of("LOADED_STEP.uploader-2") == "uploader-2"
    assert sorted(os.listdir(tmp_path)) == ["LOADED_STEP.eval", "LOADED_STEP.uploader-2"]


def test_mark_loaded_accepts_integer_like_steps(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    mark_loaded(tmp_path, numpy.int64(11))
    assert (tmp_path / "LOADED_STEP").read_bytes() == b"11\n"


@pytest.mark.parametrize(("step", "error", "match"), [
    (-1, ValueError, "non-negative"),
    (1.5, TypeError, "non-negative int, got 1.5"),
    (2.0, TypeError, "float"),
    ("3", TypeError, "str"),
    (True, TypeError, "bool"),
    (None, TypeError, "NoneType"),
    (10**19, ValueError, "19 digits"),
])
def test_mark_loaded_rejects_bad_steps(tmp_path: Path, step: object, error: type[Exception],
                                       match: str) -> None:
    with pytest.raises(error, match=match):
        mark_loaded(tmp_path, step)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("consumer", ["", ".hidden", "x.tmp", "tmp", "a/b", "with space",
                                      "tab\t", "nul\0", "new\nline"])
def test_mark_loaded_rejects_bad_consumer_names(tmp_path: Path, consumer: str) -> None:
    with pytest.raises(ValueError, match="consumer name"):
        mark_loaded(tmp_path, 1, consumer=consumer)
    assert os.listdir(tmp_path) == []


def test_mark_loaded_rejects_non_string_consumer(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="consumer must be a str"):
        mark_loaded(tmp_path, 1, consumer=3)  # type: ignore[arg-type]


def test_mark_loaded_missing_or_non_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mark_loaded(tmp_path / "nope", 1)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        mark_loaded(tmp_path / "file", 1)
    with pytest.raises(TypeError, match="directory must be"):
        mark_loaded(None, 1)  # type: ignore[arg-type]


def test_mark_receiver_ready(tmp_path: Path) -> None:
    publish(tmp_path, 6, {"a": b"a"})
    path = mark_receiver_ready(tmp_path, 6)
    assert path == tmp_path / "step_6" / protocol.RECEIVER_READY_MARKER
    assert path.is_file()
    mark_receiver_ready(tmp_path, 6)  # idempotent
    with pytest.raises(FileNotFoundError, match="step_7 does not exist"):
        mark_receiver_ready(tmp_path, 7)
    (tmp_path / "step_8").symlink_to(tmp_path / "step_6")
    with pytest.raises(NotADirectoryError, match="never follows symlinks"):
        mark_receiver_ready(tmp_path, 8)


# ---- consumers ---------------------------------------------------------------------------------

def test_newest_complete_step_ignores_everything_but_complete_real_steps(tmp_path: Path) -> None:
    publish(tmp_path, 3, {"a": b"a"})
    publish(tmp_path, 100, {"a": b"a"})
    (tmp_path / "step_200").mkdir()                        # being written: no marker
    (tmp_path / "step_201").mkdir()
    (tmp_path / "step_201" / "STABLE").mkdir()             # marker is not a regular file
    (tmp_path / "step_202").mkdir()
    (tmp_path / "step_202" / "STABLE").symlink_to(tmp_path / "step_3" / "STABLE")
    (tmp_path / "step_300").symlink_to(tmp_path / "step_3")  # symlinked step
    (tmp_path / "step_0400").mkdir()                       # foreign: leading zero
    (tmp_path / "step_0400" / "STABLE").write_bytes(b"")
    (tmp_path / "step_500").write_bytes(b"")               # a file named like a step
    (tmp_path / "step_١٢").mkdir()                          # non-ASCII digits
    (tmp_path / "step_600.tmp").mkdir()
    (tmp_path / (protocol.STAGING_PREFIX + "700.abc")).mkdir()
    assert newest_complete_step(tmp_path) == 100
    assert newest_complete_step(tmp_path / "step_300") is None  # the managed dir may be a link


def test_newest_complete_step_empty_and_missing(tmp_path: Path) -> None:
    assert newest_complete_step(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        newest_complete_step(tmp_path / "missing")


def test_wait_times_out_cleanly(tmp_path: Path) -> None:
    publish(tmp_path, 3, {"a": b"a"})
    (tmp_path / "step_9").mkdir()  # incomplete: does not count
    start = time.monotonic()
    expected = r"newer than 3 .* within 0.3 s; newest complete step: 3"
    with pytest.raises(TimeoutError, match=expected):
        wait_for_step_newer_than(tmp_path, 3, timeout_s=0.3, poll_interval_s=0.05)
    assert 0.3 <= time.monotonic() - start < 5
    with pytest.raises(TimeoutError, match="directory does not exist"):
        wait_for_step_newer_than(tmp_path / "missing", None, timeout_s=0)


def test_wait_returns_at_once_when_a_newer_step_exists(tmp_path: Path) -> None:
    publish(tmp_path, 3, {"a": b"a"})
    publish(tmp_path, 5, {"a": b"a"})
    assert wait_for_step_newer_than(tmp_path, 3, timeout_s=0) == 5
    assert wait_for_step_newer_than(tmp_path, None, timeout_s=0) == 5


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"timeout_s": -1}, ValueError), ({"timeout_s": float("nan")}, ValueError),
    ({"timeout_s": "1"}, TypeError), ({"timeout_s": 1, "poll_interval_s": 0}, ValueError),
])
def test_wait_rejects_bad_timeouts(tmp_path: Path, kwargs: dict[str, object],
                                   error: type[Exception]) -> None:
    with pytest.raises(error):
        wait_for_step_newer_than(tmp_path, 1, **kwargs)  # type: ignore[arg-type]


def test_wait_sees_a_step_published_by_another_process(tmp_path: Path) -> None:
    managed = tmp_path / "broadcasts"  # created by the producer after the consumer starts
    producer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, pathlib, trainer_hooks as th\n"
         "d = pathlib.Path(sys.argv[1]); d.mkdir()\n"
         "for step in (3, 4, 5):\n"
         "    with th.staged_step(d, step) as s:\n"
         "        (s / 'weights.bin').write_bytes(b'w' * 100000)\n",
         str(managed)], env=child_env(), cwd=REPO)
    try:
        step = wait_for_step_newer_than(managed, 3, timeout_s=60, poll_interval_s=0.01)
        assert step in (4, 5)
        assert (managed / f"step_{step}" / "weights.bin").read_bytes() == b"w" * 100000
    finally:
        assert producer.wait(timeout=60) == 0
    assert newest_complete_step(managed) == 5


def test_import_does_not_need_torch(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import trainer_hooks as th\n"
            "th.mark_loaded(sys.argv[1], 2)\n"
            "with th.staged_step(sys.argv[1], 2) as s: (s / 'x').write_bytes(b'x')\n"
            "assert th.newest_complete_step(sys.argv[1]) == 2\n"
            "try:\n    th.save_step(sys.argv[1], 3, {})\nexcept ImportError: print('no torch')\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=child_env(),
                            cwd=REPO, capture_output=True, check=True)
    assert result.stdout == b"no torch\n"
    assert sorted(os.listdir(tmp_path)) == ["LOADED_STEP", "step_2"]


def test_public_api() -> None:
    assert set(trainer_hooks.__all__) == {
        "HeadroomTimeout", "load_step", "mark_loaded", "mark_receiver_ready",
        "newest_complete_step", "save_step", "staged_step", "wait_for_headroom",
        "wait_for_step_newer_than"}
    assert trainer_hooks.__doc__


# ---- docs/protocol.md --------------------------------------------------------------------------

def doc_recipe(heading: str) -> str:
    """The first python block after `heading` in docs/protocol.md."""
    text = (REPO / "docs" / "protocol.md").read_text()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("```", start)]


def test_doc_recipes_without_trainer_hooks_follow_the_protocol(tmp_path: Path) -> None:
    """The hand-written recipes in docs/protocol.md produce what the janitor expects."""
    namespace: dict[str, object] = {}
    exec(doc_recipe("### A marker, without trainer_hooks"), namespace)  # noqa: S102
    exec(doc_recipe("### A step, without trainer_hooks"), namespace)  # noqa: S102
    namespace["publish_step"](str(tmp_path), 3, {"a.bin": b"a"})  # type: ignore[operator]
    namespace["mark_loaded"](str(tmp_path), 3)  # type: ignore[operator]
    namespace["mark_loaded"](str(tmp_path), 2, "eval")  # type: ignore[operator]
    assert newest_complete_step(tmp_path) == 3
    assert tree_files(tmp_path / "step_3") == {"a.bin", "STABLE"}
    assert protocol.parse_marker((tmp_path / "LOADED_STEP").read_bytes()) == 3
    assert protocol.consumer_of("LOADED_STEP.eval") == "eval"
    assert sorted(os.listdir(tmp_path)) == ["LOADED_STEP", "LOADED_STEP.eval", "step_3"]


def test_doc_names_match_protocol() -> None:
    text = (REPO / "docs" / "protocol.md").read_text()
    for name in (protocol.STAGING_PREFIX, protocol.PIN_FILE, protocol.TRASH_DIR,
                 protocol.LOCK_FILE, protocol.RECEIVER_READY_MARKER, protocol.FINISHED_MARKER,
                 protocol.DEFAULT_COMPLETE_MARKER, protocol.LOADED_MARKER):
        assert f"`{name}" in text, name
