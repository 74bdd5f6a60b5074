"""Two janitors started on one tree at the same moment (issue 6, part 4; invariant 8).

Each round builds a small tree and forks two janitor processes from this (already imported)
interpreter; both block reading one FIFO, and closing its last writer releases them at the same
moment into the real command line (`janitor.cli.main`: `sweep`, or `run --once`). Forking instead
of exec'ing the console script keeps the start jitter far below the time a pass holds the lock,
and a round fast.

Exactly one may delete. The other either found the lock held (exit 4, one line naming the holder's
pid) or, if the first had already finished, found nothing left to delete (exit 0). Each janitor has
its own audit log, so the logs show who deleted; the tree shows that what went is exactly what the
policy allows.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
from helpers.safety import build, check_whole, publish_marker, read_audit
from helpers.tree import step_numbers, trash_names
from helpers.wait import wait_until

import janitor.cli
import janitor.daemon  # imported before forking: the children need not import it lazily

ROUNDS = 50


def _fork_janitor(gate: Path, gate_fd: int, argv: list[str], out: Path) -> int:
    """Fork a child that waits for EOF on `gate`, then runs `janitor <argv>`; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.close(gate_fd)  # the parent's writer: only the parent may hold the barrier shut
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        os.dup2(os.open(out, flags, 0o644), 1)
        os.dup2(os.open(f"{out}.err", flags, 0o644), 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (pytest's capture is not fd 1)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        # Non-blocking open (never stuck without a writer), then a blocking read until EOF.
        barrier = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(barrier, True)
        while os.read(barrier, 1):
            pass
        os.close(barrier)
        try:
            janitor.cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait_child(pid: int, timeout_s: float) -> int:
    """The child's exit code; SIGKILL it and fail if it has not exited within `timeout_s`."""
    found: list[int] = []

    def exited() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            found.append(os.waitstatus_to_exitcode(status))
        return bool(done)

    try:
        wait_until(exited, timeout_s, f"janitor child {pid} to exit")
    except AssertionError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    return found[0]


def _waiting_at(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open read-only (it is blocked at the barrier); the
    read-write fd a child inherits at fork does not count."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != str(path):
                    continue
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                flags = int(info.split("flags:")[1].split()[0], 8)
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    return True
    return False


def _race(base: Path, command: list[str]) -> bool:
    """One round; returns True when the two really overlapped (the loser was refused)."""
    tree = build(base / "tree", range(1, 7), files=2)
    publish_marker(tree, 5)
    fifo = base / "go"
    os.mkfifo(fifo)
    # Held open read-write, the FIFO has a writer, so each child opens it at once and blocks
    # reading; once both have it open, closing this fd is EOF to both at the same moment.
    gate = os.open(fifo, os.O_RDWR)
    pids = []
    try:
        for who in "ab":
            argv = [*command, "--audit-log", str(base / f"audit-{who}.jsonl"), str(tree)]
            pids.append(_fork_janitor(fifo, gate, argv, base / f"out-{who}"))
        wait_until(lambda: all(_waiting_at(p, fifo) for p in pids), 30, "both at the barrier")
    finally:
        os.close(gate)
    codes = [_wait_child(pid, 60) for pid in pids]
    results = [(pid, code, (base / f"out-{who}.err").read_text())
               for pid, code, who in zip(pids, codes, "ab", strict=True)]

    deleters = [r for r, who in zip(results, "ab", strict=True)
                if read_audit(base / f"audit-{who}.jsonl")]
    assert len(deleters) == 1, results
    winner = deleters[0]
    loser = next(r for r in results if r is not winner)
    assert winner[1] in (0, 3), winner  # 0 for `run --once`, 3 for a sweep that deleted
    assert step_numbers(tree) == [5, 6]
    assert check_whole(tree) == []
    assert trash_names(tree) == []
    problems = [line for line in loser[2].splitlines() if line.startswith("janitor:")]
    if loser[1] == 0:  # it started after the winner was done: nothing left, nothing said
        assert problems == [], loser
        return False
    assert loser[1] == 4, loser
    assert len(problems) == 1, loser
    assert f"pid {winner[0]} " in problems[0] and "another janitor holds" in problems[0]
    return True


@pytest.mark.slow
@pytest.mark.parametrize("command", [["sweep"], ["run", "--once", "--log-format", "json"]],
                         ids=["sweep", "run-once"])
def test_two_janitors_started_together_exactly_one_deletes(
        tmp_path: Path, command: list[str], record_property: pytest.RecordProperty) -> None:
    overlapped = 0
    for round_no in range(ROUNDS):
        overlapped += _race(tmp_path / f"round{round_no}", command)
    record_property("overlapped_rounds", overlapped)
    print(f"{command[0]}: {overlapped}/{ROUNDS} rounds overlapped (the loser was refused)")
    # Released together, a pass lasts far longer than the start jitter: nearly all overlap.
    assert overlapped >= ROUNDS // 2
