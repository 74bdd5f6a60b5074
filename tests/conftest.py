"""Fixtures for the janitor tests (the helpers they build on: the helpers package here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.daemon import Janitor, Spawn
from helpers.run import shared_dir


@pytest.fixture(scope="session", autouse=True)
def audit_state_dir() -> Iterator[Path]:
    """Janitors started by tests write their audit log here, not into the real home directory;
    uid 65534 can write it too."""
    path = Path(tempfile.mkdtemp(prefix="janitor-test-state-", dir="/tmp"))
    path.chmod(0o1777)
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = saved
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory that uid 65534 can reach (pytest's own is private to root)."""
    with shared_dir("janitor-test-") as path:
        yield path


@pytest.fixture
def tmpfs_mount() -> Iterator[Callable[[Path], Path]]:
    """Mount a small tmpfs at a given directory (skip when mounting is impossible); unmounted
    at teardown."""
    mounted: list[Path] = []

    def mount(where: Path, *options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        opts = ",".join(("size=4m", *options))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (need root in a mount namespace): "
                        f"{done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def scratch_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs for tests that build many thousands of files (creating files on the build
    machine's disk costs ~1 ms each); falls back to tmp_path where mounting is not allowed."""
    where = tmp_path / "scratch"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(where)],
                          capture_output=True, check=False)
    try:
        yield where
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start real `janitor run` daemons; every one still running is stopped at teardown."""
    started: list[Janitor] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Janitor:
        daemon = Janitor(list(args), env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
