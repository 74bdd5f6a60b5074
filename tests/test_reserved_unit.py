"""janitor.fs.reserved on its own: mount IDs from both kernel sources, and each refusal's line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from janitor.fs import reserved


def test_mount_id_from_fdinfo_and_statx_agree(tmp_path: Path) -> None:
    for path in ("/", "/proc", str(tmp_path)):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            from_statx = reserved._statx_mount_id(fd)
            if from_statx is None:
                pytest.skip("this kernel has no statx(STATX_MNT_ID)")
            assert reserved.mount_id(fd) == from_statx
        finally:
            os.close(fd)
    a = os.open("/", os.O_RDONLY)
    b = os.open("/proc", os.O_RDONLY)
    try:
        assert reserved.mount_id(a) != reserved.mount_id(b)
    finally:
        os.close(a)
        os.close(b)


def test_check_file_refuses_hard_links_and_other_types(tmp_path: Path) -> None:
    home = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mount = reserved.mount_id(home)
        (tmp_path / "one").write_bytes(b"x")
        fd = reserved.open_reserved(home, "one", os.O_RDONLY)
        try:
            assert reserved.check_file(fd, "one", mount, action="fix it").st_nlink == 1
            with pytest.raises(reserved.UnsafeObjectError) as caught:
                reserved.check_file(fd, "one", None, action="fix it")
            assert "no mount ID" in str(caught.value.strerror)
            os.link(tmp_path / "one", tmp_path / "two")
            with pytest.raises(reserved.UnsafeObjectError) as caught:
                reserved.check_file(fd, "one", mount, action="fix it")
            assert caught.value.strerror == "one is a hard link (2 names for one file); fix it"
        finally:
            os.close(fd)
        os.mkfifo(tmp_path / "fifo")
        fd = reserved.open_reserved(home, "fifo", os.O_RDONLY)  # O_NONBLOCK: returns at once
        try:
            with pytest.raises(reserved.UnsafeObjectError) as caught:
                reserved.check_file(fd, "fifo", mount, action="fix it")
            assert caught.value.strerror == "fifo is a FIFO, not a regular file; fix it"
        finally:
            os.close(fd)
        (tmp_path / "link").symlink_to("one")
        with pytest.raises(OSError) as raised:
            reserved.open_reserved(home, "link", os.O_RDONLY)
        error = reserved.open_error(raised.value, "link", "fix it")
        assert isinstance(error, reserved.UnsafeObjectError)
        assert error.strerror == "link is a symlink (never followed); fix it"
    finally:
        os.close(home)


def test_check_directory_refuses_files_and_names_printably(tmp_path: Path) -> None:
    home = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name = "bad\nname"
        (tmp_path / name).write_bytes(b"")
        fd = reserved.open_reserved(home, name, os.O_RDONLY)
        try:
            with pytest.raises(reserved.UnsafeObjectError) as caught:
                reserved.check_directory(fd, name, reserved.mount_id(home), action="fix it")
            assert caught.value.strerror == "bad\\nname is a regular file, not a directory; fix it"
        finally:
            os.close(fd)
    finally:
        os.close(home)


def test_the_mount_id_is_known_even_when_fds_ran_out(tmp_path: Path) -> None:
    """Out of fds (EMFILE), /proc/self/fdinfo cannot be opened; the statx fallback must still
    answer, without a subprocess (ctypes.util.find_library runs one): a None here made every
    directory read as "not on its mount" under a low RLIMIT_NOFILE."""
    import resource

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        known = reserved.mount_id(fd)
        assert known is not None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(fd)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no fd can be opened
        try:
            with pytest.raises(OSError):
                os.close(os.dup(fd))
            assert reserved.mount_id(fd) == known
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        os.close(fd)
