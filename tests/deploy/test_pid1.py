"""`janitor run` as PID 1 of its own PID namespace, as in a container without an init.

PID 1 gets no default signal actions: unless the daemon installs a SIGTERM handler, SIGTERM is
ignored and a container runtime waits out its grace period, then SIGKILLs. This test proves the
handler (exit 0 within 2 s, nothing half-deleted) and that a SIGKILL at a random moment of a big
reclaim is finished by the next start. Needs root (unshare --pid).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from nspawn_harness import wait_for

pytestmark = pytest.mark.slow

JANITOR = str(Path(sys.executable).with_name("janitor"))
BIG_FILES = 20_000
SUBDIRS = 20
STOP_BUDGET_S = 2.0


def _write_step(broadcasts: Path, n: int, files: int) -> dict[str, bytes]:
    """step_n with `files` small shards spread over subdirectories, STABLE last; its manifest."""
    step = broadcasts / f"step_{n}"
    step.mkdir()
    manifest: dict[str, bytes] = {}
    per_dir = max(1, files // SUBDIRS)
    for i in range(files):
        sub = step / f"part{i // per_dir:03d}"
        sub.mkdir(exist_ok=True)
        data = f"step {n} shard {i}\n".encode()
        (sub / f"shard{i:05d}.bin").write_bytes(data)
        manifest[f"part{i // per_dir:03d}/shard{i:05d}.bin"] = data
    (step / "STABLE").write_bytes(b"")
    manifest["STABLE"] = b""
    return manifest


def make_tree(root: Path) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """run/broadcasts: step_1 big, step_2..5 small, LOADED_STEP=4 (so 1-3 are doomed)."""
    broadcasts = root / "run" / "broadcasts"
    broadcasts.mkdir(parents=True)
    manifests = {f"step_{n}": _write_step(broadcasts, n, BIG_FILES if n == 1 else 3)
                 for n in range(1, 6)}
    newest = max(p.stat().st_ctime for p in [broadcasts, *broadcasts.rglob("*")])
    wait_for("the clock to pass the steps' last change", lambda: time.time() > newest + 0.1, 5)
    (broadcasts / "LOADED_STEP").write_text("4\n")
    return broadcasts, manifests


def step_files(step: Path) -> dict[str, bytes]:
    return {str(p.relative_to(step)): p.read_bytes() for p in step.rglob("*") if p.is_file()}


def trash_files(broadcasts: Path) -> int:
    trash = broadcasts / ".janitor-trash"
    return sum(len(files) for _, _, files in os.walk(trash)) if trash.exists() else 0


def assert_nothing_half_deleted(broadcasts: Path, manifests: dict[str, dict[str, bytes]]) -> None:
    """Every step_N still in the directory is whole; the kept ones are all there."""
    present = {p.name for p in broadcasts.iterdir() if p.name.startswith("step_")}
    assert {"step_4", "step_5"} <= present
    for name in present:
        assert step_files(broadcasts / name) == manifests[name], f"{name} is not whole"


class Pid1:
    """`unshare --pid --fork --mount-proc janitor run ...`; `pid` is the janitor, PID 1 inside."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--", JANITOR, "run", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        parent = psutil.Process(self.unshare.pid)

        def forked() -> int:
            if self.unshare.poll() is not None:
                pytest.fail(f"unshare exited {self.unshare.returncode}: {self.log()}")
            kids = parent.children()
            return kids[0].pid if kids else 0

        self.pid = wait_for("unshare to fork the janitor", forked, 10)
        status = Path(f"/proc/{self.pid}/status").read_text()
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1", f"not PID 1 in its namespace: {nspid}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def events(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.unshare.poll() is not None:
                pytest.fail(f"janitor exited {self.unshare.returncode} before ready: {self.log()}")
            return any(r.get("event") == "ready" for r in self.events())

        wait_for("the janitor's first reconcile (event ready)", ready, 30, interval=0.02)

    def kill(self) -> None:
        if self.unshare.poll() is None:
            with _suppress_gone():
                os.kill(self.pid, signal.SIGKILL)
            self.unshare.wait(timeout=10)


class _suppress_gone:  # noqa: N801 (a tiny context manager, named like contextlib's)
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is ProcessLookupError


@pytest.fixture
def pid1s() -> Iterator[list[Pid1]]:
    started: list[Pid1] = []
    yield started
    for proc in started:  # only the processes this test started
        proc.kill()


def skip_unless_unshare() -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")


def finish_with_once(broadcasts: Path, root: Path, audit: Path,
                     manifests: dict[str, dict[str, bytes]]) -> None:
    """A restart (`janitor run --once`) reclaims the leftovers; doomed gone, kept whole."""
    done = subprocess.run([JANITOR, "run", str(root), "--once", "--log-format", "json",
                           "--audit-log", str(audit)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert trash_files(broadcasts) == 0
    trash = broadcasts / ".janitor-trash"
    assert not trash.exists() or not any(trash.iterdir()), list(trash.iterdir())
    assert {p.name for p in broadcasts.iterdir() if p.name.startswith("step_")} == \
        {"step_4", "step_5"}
    assert_nothing_half_deleted(broadcasts, manifests)


def test_sigterm_to_pid1_exits_0_within_2_s(tmp_path: Path, pid1s: list[Pid1]) -> None:
    skip_unless_unshare()
    root = tmp_path / "tree"
    broadcasts, manifests = make_tree(root)
    audit = tmp_path / "audit.jsonl"
    proc = Pid1([str(root), "--log-format", "json", "--audit-log", str(audit)],
                tmp_path / "janitor.log")
    pid1s.append(proc)
    proc.wait_ready()
    # The first reconcile renamed steps 1-3 into the trash; the 20,000-file reclaim is under way.
    in_trash = trash_files(broadcasts)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.unshare.wait(timeout=STOP_BUDGET_S + 3)
    except subprocess.TimeoutExpired:
        pytest.fail(f"PID 1 ignored SIGTERM (no handler?): {proc.log()}")
    took = time.monotonic() - sent
    print(f"SIGTERM with {in_trash} files in the trash: exit {code} after {took:.2f} s")
    assert code == 0, proc.log()
    assert took <= STOP_BUDGET_S, f"took {took:.2f} s to stop"
    assert any(r.get("event") == "stopping" for r in proc.events()), proc.log()
    assert_nothing_half_deleted(broadcasts, manifests)
    finish_with_once(broadcasts, root, audit, manifests)


def test_sigkill_during_reclaim_is_finished_by_a_restart(tmp_path: Path,
                                                         pid1s: list[Pid1]) -> None:
    skip_unless_unshare()
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    landed = False
    for attempt in range(3):
        root = tmp_path / f"tree{attempt}"
        broadcasts, manifests = make_tree(root)
        audit = tmp_path / f"audit{attempt}.jsonl"
        # Kill once the trash is down to a random number of files: a random moment of the reclaim.
        threshold = rng.randint(BIG_FILES // 10, BIG_FILES * 9 // 10)
        proc = Pid1([str(root), "--log-format", "json", "--audit-log", str(audit)],
                    tmp_path / f"janitor{attempt}.log")
        pid1s.append(proc)
        seen: list[int] = []

        def reclaim_reached(proc: Pid1 = proc, broadcasts: Path = broadcasts,
                            threshold: int = threshold, seen: list[int] = seen) -> bool:
            if proc.unshare.poll() is not None:
                pytest.fail(f"janitor exited {proc.unshare.returncode}: {proc.log()}")
            count = trash_files(broadcasts)
            seen.append(count)
            started = max(seen) > 0
            return started and count <= threshold

        wait_for("the reclaim to reach the kill point", reclaim_reached, 60, interval=0.005)
        os.kill(proc.pid, signal.SIGKILL)
        code = proc.unshare.wait(timeout=10)
        left = trash_files(broadcasts)
        print(f"seed {seed} attempt {attempt}: SIGKILL at <= {threshold} files, unshare exit "
              f"{code}, {left} files left in the trash")
        assert_nothing_half_deleted(broadcasts, manifests)
        finish_with_once(broadcasts, root, audit, manifests)
        if left > 0:
            landed = True
            break
    assert landed, f"seed {seed}: the reclaim always finished before the kill landed"
