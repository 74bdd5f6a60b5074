"""Boot a throwaway Debian bookworm under systemd-nspawn and drive its systemd from the host.

Used by test_systemd_nspawn.py; also runnable by hand to get a shell-able container:
    python tests/deploy/nspawn_harness.py --shell

The root file system is built once with debootstrap into a cache directory outside the repo and
reused: a stamp file, written last, marks it complete, so an interrupted build is redone. The
container boots with `--volatile=overlay`, so nothing it writes survives it. Without a host
systemd (CI runs in a plain container) nspawn needs `--register=no --keep-unit`; it then creates
`payload` and `supervisor` cgroups next to its own, which `Container.close` removes when empty.
The project goes in as wheels built on the host (the host's pip configuration reaches the
registry; the container's would need certificates and proxies it does not have), installed
offline into a venv at /opt/ckpt-janitor, where the shipped units expect it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

CACHE_DIR = Path(os.environ.get("CKPT_JANITOR_TEST_CACHE", "/var/cache/ckpt-janitor-test"))
SUITE = "bookworm"
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv"
DEBOOTSTRAP_ARGS = ["--variant=minbase", f"--include={PACKAGES}", SUITE]
# Written last by ensure_rootfs; its content names what was built, so a change rebuilds.
STAMP_NAME = ".ckpt-janitor-rootfs-complete"
REPO = Path(__file__).resolve().parents[2]
# What the Containerfile copies into its build context: the same files make the wheel here.
PROJECT_FILES = ("pyproject.toml", "README.md", "janitor", "trainer_hooks")


T = TypeVar("T")


class NspawnUnavailableError(Exception):
    """nspawn cannot run on this machine at all (the test skips with this reason)."""


def log(message: str) -> None:
    print(f"[nspawn] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, condition: Callable[[], T], timeout: float,
              interval: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # polling interval of a deadline loop, not a synchronisation


def check_host() -> None:
    """Raise NspawnUnavailableError where nspawn can never work; install the tools where it can."""
    if os.geteuid() != 0:
        raise NspawnUnavailableError("systemd-nspawn needs root")
    if sys.platform != "linux":
        raise NspawnUnavailableError("systemd-nspawn needs Linux")
    if not Path("/sys/fs/cgroup").is_dir():
        raise NspawnUnavailableError("no cgroup file system at /sys/fs/cgroup")
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter")
               if shutil.which(tool) is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise NspawnUnavailableError(
                f"{', '.join(missing)} missing and no apt-get to install them")
        log("installing systemd-container and debootstrap with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "systemd-container", "debootstrap"],
                       check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_rootfs(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached bookworm tree, built with debootstrap (about 70 s) when missing or incomplete."""
    root = cache_dir / SUITE
    stamp_text = " ".join(DEBOOTSTRAP_ARGS) + "\n"
    stamp = root / STAMP_NAME
    if stamp.is_file() and stamp.read_text() == stamp_text:
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = cache_dir / f"{SUITE}.building"
    for stale in (building, root):
        if stale.exists():
            log(f"removing incomplete or outdated {stale}")
            shutil.rmtree(stale)
    log(f"debootstrap {' '.join(DEBOOTSTRAP_ARGS)} (about 70 s)")
    started = time.monotonic()
    result = subprocess.run(["debootstrap", *DEBOOTSTRAP_ARGS, str(building)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}"
                           f"\n{result.stderr[-3000:]}")
    building.rename(root)
    stamp.write_text(stamp_text)  # last: its presence means the tree is whole
    log(f"root file system ready in {time.monotonic() - started:.0f} s")
    return root


def build_wheels(dest: Path) -> None:
    """Wheels for the project and its runtime dependencies (no extras: never torch)."""
    with tempfile.TemporaryDirectory(prefix="ckpt-janitor-src-") as src:
        # Build from a copy: an in-tree build would leave build/ and egg-info in the repo.
        for name in PROJECT_FILES:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, Path(src) / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif path.exists():
                shutil.copy2(path, Path(src) / name)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(dest), src],
                       check=True)
        log(f"wheels built in {time.monotonic() - started:.0f} s: "
            f"{sorted(p.name.split('-')[0] for p in dest.glob('*.whl'))}")


def _cgroup_dirs() -> set[Path]:
    found: set[Path] = set()
    for top in Path("/sys/fs/cgroup").iterdir():
        for name in ("payload", "supervisor"):
            if (top / name).is_dir():
                found.update(p for p in (top / name).rglob("*") if p.is_dir())
                found.add(top / name)
    return found


class Container:
    """One booted container; `run` executes a command inside it with nsenter."""

    def __init__(self, root: Path, binds: list[tuple[Path, str, bool]], log_path: Path) -> None:
        self.root = root
        self._binds = binds
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._cgroups_before: set[Path] = set()
        self.pid1 = 0

    def boot(self, timeout: float = 90) -> None:
        self._cgroups_before = _cgroup_dirs()
        cmd = ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no",
               "--keep-unit", "--volatile=overlay", f"--machine=ckpt-janitor-test-{os.getpid()}"]
        for host, guest, read_only in self._binds:
            cmd.append(f"--bind{'-ro' if read_only else ''}={host}:{guest}")
        log(" ".join(cmd))
        with self._log_path.open("wb") as out:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        nspawn = psutil.Process(self._proc.pid)

        def child() -> int:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self._proc.returncode}:\n"
                                   f"{self.console_tail()}")
            kids = nspawn.children()
            return kids[0].pid if kids else 0

        self.pid1 = wait_for("the container's PID 1", child, 15)

        def booted() -> bool:
            result = self.run("systemctl", "is-system-running", check=False)
            state = result.stdout.strip()
            if state in {"running", "degraded"}:
                return True
            if state in {"maintenance", "stopping"}:
                raise RuntimeError(f"container is {state}:\n{self.console_tail()}")
            # "offline" (no manager answers yet) is what the first instants of a boot look like
            # on a loaded machine, before PID 1 has become systemd: keep waiting, up to timeout.
            return False

        wait_for("the container's systemd to finish booting", booted, timeout, interval=0.5)

    def console_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self._log_path.read_text(errors="replace")[-chars:]
        return ""

    def run(self, *args: str, check: bool = True, input_text: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *args],
                                input=input_text, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"in container: {' '.join(args)} exited {result.returncode}\n"
                               f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path,
                 input_text=text)

    def close(self) -> None:
        """Power off (or kill) the container this object started, then drop its empty cgroups."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self.pid1:
                with contextlib.suppress(Exception):
                    self.run("systemctl", "poweroff", check=False, timeout=10)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("container did not power off in 30 s: SIGKILL to its nspawn")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        # Deepest first; rmdir only removes empty cgroups, and only ones this run created.
        for path in sorted(_cgroup_dirs() - self._cgroups_before,
                           key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            (Path("/run/systemd/nspawn/propagate") / f"ckpt-janitor-test-{os.getpid()}").rmdir()


@contextlib.contextmanager
def booted(binds: list[tuple[Path, str, bool]], workdir: Path) -> Iterator[Container]:
    """Check the host, ensure the root file system, boot; always tear down."""
    check_host()
    root = ensure_rootfs()
    container = Container(root, binds, workdir / "console.log")
    try:
        container.boot()
        yield container
    finally:
        container.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shell", action="store_true", help="boot and open a shell inside")
    parser.add_argument("--rootfs-only", action="store_true", help="only build the cached tree")
    args = parser.parse_args()
    check_host()
    if args.rootfs_only:
        print(ensure_rootfs())
        return
    with tempfile.TemporaryDirectory() as work, booted([], Path(work)) as container:
        log(f"booted; PID 1 is {container.pid1}")
        if args.shell:
            subprocess.run(["nsenter", "-t", str(container.pid1), "-a", "bash", "-l"], check=False)


if __name__ == "__main__":
    main()
