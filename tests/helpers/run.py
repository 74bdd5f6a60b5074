"""The real `janitor` console script in a subprocess, with a timeout, and what running it as
another user (uid 65534) needs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The venv's console script sits next to the interpreter running the tests.
JANITOR = str(Path(sys.executable).with_name("janitor"))
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
RUN_TIMEOUT_S = 120.0  # a hang guard; a 100,000-step sweep on a loaded machine takes ~40 s


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the test's own JANITOR_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}
    env.update(extra or {})
    return env


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_janitor(*args: str | Path, env: dict[str, str] | None = None, as_nobody: bool = False,
                timeout_s: float = RUN_TIMEOUT_S, nofile: int | None = None) -> Ran:
    """Run the real `janitor` console script; never hangs past `timeout_s`. `nofile` sets
    RLIMIT_NOFILE (soft and hard) for it, as systemd's LimitNOFILE= would."""
    command = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
    command += [*NOBODY] if as_nobody else []
    command += [JANITOR, *(str(a) for a in args)]
    full_env = clean_env()
    if as_nobody and "XDG_STATE_HOME" in full_env:
        # The audit log of a janitor running as uid 65534 goes where that user may write.
        state = Path(full_env["XDG_STATE_HOME"]) / "uid-65534"
        state.mkdir(exist_ok=True)
        os.chown(state, 65534, 65534)
        full_env["XDG_STATE_HOME"] = str(state)
    full_env.update(env or {})
    done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=full_env,
                          check=False)
    return Ran(done.returncode, done.stdout.decode("utf-8", "replace"),
               done.stderr.decode("utf-8", "replace"))


def can_drop_privileges() -> bool:
    """Whether this process can run a command as uid 65534 (root, with setpriv)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    done = subprocess.run([*NOBODY, "true"], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def shared_dir(prefix: str) -> Iterator[Path]:
    """A directory under /tmp that uid 65534 can reach (pytest's tmp_path is private to root);
    removed afterwards whatever modes a test left in it (symlinks are never followed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)
