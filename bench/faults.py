"""Fault injection (issue 6, part 2): SIGKILL the daemon while it renames and while it reclaims,
the writer (trainer_hooks.save_step in a forked child) mid-write and the consumer mid-load; restart
each and check after every kill:

- no half-deleted step: every `step_N` present holds every file its manifest (or torch) says;
- no kept step lost: every step the policy must keep (computed here) is still there;
- after the restart (`janitor run --once` or a restarted daemon) the trash is empty and exactly
  the steps the policy dooms are gone; `janitor audit verify` passes on the audit log.

`python bench/faults.py --kills 300` runs 300 kill points (seeded) and prints a table;
tests/test_faults.py runs the same code with at least 30.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers.run import JANITOR, clean_env  # noqa: E402
from helpers.safety import Rules, build, check_whole, must_keep, publish_marker, rule_args  # noqa: E402
from helpers.tree import step_numbers, trash_names  # noqa: E402
from helpers.wait import wait_until  # noqa: E402

from janitor import protocol  # noqa: E402


@dataclass
class Outcome:
    """One fault's tally."""

    fault: str
    kills: int = 0
    landed: int = 0  # kills that hit the phase aimed at (mid-rename, mid-reclaim, ...)
    violations: list[str] = field(default_factory=list)
    lost_steps: int = 0


def _daemon(tree: Path, audit: Path, rules: Rules, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen([JANITOR, "run", str(tree), "--audit-log", str(audit),
                                 "--log-format", "json", *rule_args(rules)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=clean_env(), cwd="/")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _audit_lines(audit: Path) -> int:
    try:
        return audit.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _restart(tree: Path, audit: Path, rules: Rules, log: Path, doomed: set[int],
             use_daemon: bool) -> None:
    """Recover after a kill: `janitor run --once`, or a daemon run until the work is done."""
    if not use_daemon:
        done = subprocess.run([JANITOR, "run", "--once", str(tree), "--audit-log", str(audit),
                               *rule_args(rules)], capture_output=True, check=False, cwd="/",
                              env=clean_env(), timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"run --once exited {done.returncode}: {done.stderr!r}")
        return
    daemon = _daemon(tree, audit, rules, log)
    try:
        wait_until(lambda: not (doomed & set(step_numbers(tree))) and not trash_names(tree),
                   120, "the restarted daemon to finish", interval_s=0.01)
    finally:
        daemon.terminate()
        daemon.wait(30)


def _check_after_kill(outcome: Outcome, tree: Path, keep: set[int], when: str) -> None:
    problems = check_whole(tree)
    lost = keep - set(step_numbers(tree))
    outcome.lost_steps += len(lost)
    outcome.violations.extend(f"{when}: {p}" for p in problems)
    outcome.violations.extend(f"{when}: kept step_{n} lost" for n in sorted(lost))


def _check_recovered(outcome: Outcome, tree: Path, keep: set[int], all_steps: set[int],
                     audit: Path, when: str) -> None:
    present = set(step_numbers(tree))
    if present != keep:
        outcome.violations.append(f"{when}: after restart present {sorted(present)}, "
                                  f"expected {sorted(keep)}")
        outcome.lost_steps += len(keep - present)
    if trash_names(tree):
        outcome.violations.append(f"{when}: trash not reclaimed: {trash_names(tree)}")
    outcome.violations.extend(f"{when}: {p}" for p in check_whole(tree))
    verify = subprocess.run([JANITOR, "audit", "verify", str(audit)], capture_output=True,
                            text=True, check=False)
    if verify.returncode != 0:
        outcome.violations.append(f"{when}: audit verify: {verify.stdout.strip()}")
    del all_steps


# ---- the daemon, killed while renaming ---------------------------------------------------------

def daemon_rename(base: Path, rng: random.Random, kills: int) -> Outcome:
    """Many small doomed steps; the daemon is killed after a random number of audit records (each
    written just before its rename), so kills land between and around renames."""
    outcome = Outcome("daemon mid-rename")
    rules = Rules(interval_to_keep=7)
    for round_no in range(kills):
        tree = build(base / f"rename{round_no}" / "tree", range(1, 41), files=2, size=8)
        publish_marker(tree, 35)
        audit, log = tree.parent / "audit.jsonl", tree.parent / "daemon.log"
        all_steps = set(range(1, 41))
        keep = must_keep(all_steps, 35, rules)
        doomed = all_steps - keep
        target = rng.randint(1, len(doomed))
        daemon = _daemon(tree, audit, rules, log)
        try:
            wait_until(lambda: _audit_lines(audit) >= target or daemon.poll() is not None,  # noqa: B023
                       60, "the daemon to start deleting", interval_s=0.0002)
        finally:
            _kill(daemon)
        outcome.kills += 1
        gone = doomed - set(step_numbers(tree))
        outcome.landed += 0 < len(gone) < len(doomed) or bool(trash_names(tree))
        _check_after_kill(outcome, tree, keep, f"rename round {round_no}")
        _restart(tree, audit, rules, log, doomed, use_daemon=round_no % 2 == 1)
        _check_recovered(outcome, tree, keep, all_steps, audit, f"rename round {round_no}")
        shutil.rmtree(tree.parent, ignore_errors=True)
    return outcome


# ---- the daemon, killed while reclaiming -------------------------------------------------------

def daemon_reclaim(base: Path, rng: random.Random, kills: int) -> Outcome:
    """Few doomed steps of many files; the kill comes a random moment after the first rename, while
    the reclaim thread is unlinking."""
    outcome = Outcome("daemon mid-reclaim")
    rules = Rules()
    for round_no in range(kills):
        tree = build(base / f"reclaim{round_no}" / "tree", range(1, 6), files=600, size=1,
                     subdirs=3)
        publish_marker(tree, 4)
        audit, log = tree.parent / "audit.jsonl", tree.parent / "daemon.log"
        all_steps = set(range(1, 6))
        keep = must_keep(all_steps, 4, rules)
        doomed = all_steps - keep
        daemon = _daemon(tree, audit, rules, log)
        try:
            wait_until(lambda: trash_names(tree) or daemon.poll() is not None,  # noqa: B023
                       60, "the first rename into the trash", interval_s=0.0005)
            delay = rng.uniform(0.0, 0.08)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and trash_names(tree):
                time.sleep(0.001)  # a random kill moment, not synchronisation
        finally:
            _kill(daemon)
        outcome.kills += 1
        outcome.landed += bool(trash_names(tree))
        _check_after_kill(outcome, tree, keep, f"reclaim round {round_no}")
        _restart(tree, audit, rules, log, doomed, use_daemon=round_no % 2 == 1)
        _check_recovered(outcome, tree, keep, all_steps, audit, f"reclaim round {round_no}")
        shutil.rmtree(tree.parent, ignore_errors=True)
    return outcome


# ---- the writer and the consumer, killed mid-write and mid-load --------------------------------

def _fork(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _exited(pid: int) -> bool:
    """Whether child `pid` has exited (it is then reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _writer(tree: Path, first: int, seed: int) -> Callable[[], None]:
    def write() -> None:
        import torch

        import trainer_hooks

        rng = random.Random(seed)
        step = first
        while True:
            shards = [torch.full((rng.randint(1, 40000),), step, dtype=torch.int32)
                      for _ in range(4)]
            trainer_hooks.save_step(tree, step, {"step": torch.tensor(step), "shards": shards})
            step += 1

    return write


def _consumer(tree: Path, seed: int, flag: Path) -> Callable[[], None]:
    """Load the newest step in small reads with pauses (a slow server), then mark it loaded;
    `flag` exists from the start of a load until its mark is published."""

    def consume() -> None:
        import trainer_hooks

        rng = random.Random(seed)
        last = -1
        while True:
            newest = trainer_hooks.newest_complete_step(tree)
            if newest is None or newest <= last:
                time.sleep(0.002)
                continue
            flag.touch()
            with (tree / protocol.step_name(newest) / "model.pt").open("rb") as handle:
                while handle.read(16384):
                    time.sleep(rng.uniform(0, 0.01))
            trainer_hooks.mark_loaded(tree, newest)
            flag.unlink()
            last = newest

    return consume


def _torch_step_whole(step_dir: Path) -> str | None:
    """torch.save writes a zip archive: whole when every member's CRC checks out. Checked
    without running torch here: the parent forks writers, and torch's thread pools, once started
    in a parent, can deadlock a forked child."""
    import zipfile

    try:
        with zipfile.ZipFile(step_dir / "model.pt") as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{step_dir.name}: model.pt unreadable ({exc!r})"
    if bad is not None or not any(n.endswith("data.pkl") for n in names):
        return f"{step_dir.name}: model.pt is not a whole torch archive"
    if not (step_dir / protocol.DEFAULT_COMPLETE_MARKER).is_file():
        return f"{step_dir.name}: visible without STABLE"
    return None


def _loaded(tree: Path) -> int | None:
    try:
        value = protocol.parse_marker((tree / protocol.LOADED_MARKER).read_bytes())
    except FileNotFoundError:
        return None
    return None if isinstance(value, protocol.Invalid) else value


def writer_and_consumer(base: Path, rng: random.Random, kills: int) -> tuple[Outcome, Outcome]:
    """One daemon over a live tree; the writer (save_step) and the consumer (load, mark_loaded)
    run as forked children and are SIGKILLed in turn at random moments, then restarted."""
    import torch  # noqa: F401  (imported once here; the forked writers inherit it)

    writer_outcome, consumer_outcome = Outcome("writer mid-write"), Outcome("consumer mid-load")
    tree = base / "live" / "tree"
    tree.mkdir(parents=True)
    audit, log = tree.parent / "audit.jsonl", tree.parent / "daemon.log"
    daemon = _daemon(tree, audit, Rules(), log)
    writer = _fork(_writer(tree, 1, rng.randrange(2**32)))
    flag = tree.parent / "consumer-loading"
    consumer = _fork(_consumer(tree, rng.randrange(2**32), flag))
    try:
        wait_until(lambda: _loaded(tree) is not None, 60, "the first LOADED_STEP")
        for kill_no in range(kills * 2):
            victim_is_writer = kill_no % 2 == 0
            outcome = writer_outcome if victim_is_writer else consumer_outcome
            if not victim_is_writer:  # aim at a load in progress
                wait_until(lambda: flag.exists() or _exited(writer) or _exited(consumer),  # noqa: B023
                           30, "the consumer to start a load", interval_s=0.001)
            for pid, who in ((writer, "writer"), (consumer, "consumer")):
                if _exited(pid):
                    raise AssertionError(f"the {who} child died on its own before kill {kill_no}")
            time.sleep(rng.uniform(0.005, 0.15 if victim_is_writer else 0.04))  # a random
            # kill moment, not synchronisation
            _reap(writer if victim_is_writer else consumer)
            outcome.kills += 1
            staging = [n for n in os.listdir(tree) if protocol.is_staging_name(n)]
            outcome.landed += bool(staging) if victim_is_writer else flag.exists()
            loaded = _loaded(tree)
            if loaded is None:
                outcome.violations.append(f"kill {kill_no}: LOADED_STEP unreadable")
            present = step_numbers(tree)
            for number in present:
                step_dir = tree / protocol.step_name(number)
                problem = _torch_step_whole(step_dir)
                # The daemon keeps running: a step renamed away whole during the check is fine.
                if problem is not None and step_dir.exists():
                    outcome.violations.append(f"kill {kill_no}: {problem}")
            if loaded is not None:
                newest = max(present, default=None)
                wanted = set(range(loaded, (newest or loaded) + 1))
                lost = wanted - set(present)
                outcome.lost_steps += len(lost)
                outcome.violations.extend(f"kill {kill_no}: step_{n} at or above LOADED_STEP "
                                          f"{loaded} lost" for n in sorted(lost))
            if victim_is_writer:
                resume = max(present, default=0) + 1
                writer = _fork(_writer(tree, resume, rng.randrange(2**32)))
            else:
                flag.unlink(missing_ok=True)
                consumer = _fork(_consumer(tree, rng.randrange(2**32), flag))
    finally:
        _reap(writer)
        _reap(consumer)
        _kill(daemon)
    loaded = _loaded(tree) or 0
    once = subprocess.run([JANITOR, "run", "--once", str(tree), "--audit-log", str(audit)],
                          capture_output=True, check=False, cwd="/", env=clean_env())
    for outcome in (writer_outcome, consumer_outcome):
        if once.returncode != 0:
            outcome.violations.append(f"final run --once exited {once.returncode}")
        if trash_names(tree):
            outcome.violations.append("trash not reclaimed after the final run --once")
        if any(n < loaded for n in step_numbers(tree)[:-1]):
            outcome.violations.append("a step below LOADED_STEP survived the final pass")
    verify = subprocess.run([JANITOR, "audit", "verify", str(audit)], capture_output=True,
                            text=True, check=False)
    if verify.returncode != 0:
        writer_outcome.violations.append(f"audit verify: {verify.stdout.strip()}")
    shutil.rmtree(tree.parent, ignore_errors=True)
    return writer_outcome, consumer_outcome


def run_all(base: Path, kills: int, seed: int) -> list[Outcome]:
    """`kills` kill points in total, split over the four faults."""
    rng = random.Random(seed)
    share = max(1, kills // 4)
    outcomes = [daemon_rename(base, rng, share), daemon_reclaim(base, rng, share)]
    outcomes.extend(writer_and_consumer(base, rng, max(1, (kills - 2 * share) // 2)))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = [f"{'fault':<22} {'kills':>5} {'in phase':>8} {'violations':>10} {'lost steps':>10}"]
    for o in outcomes:
        lines.append(f"{o.fault:<22} {o.kills:>5} {o.landed:>8} {len(o.violations):>10} "
                     f"{o.lost_steps:>10}")
    total = sum(o.kills for o in outcomes)
    lines.append(f"{'total':<22} {total:>5} {sum(o.landed for o in outcomes):>8} "
                 f"{sum(len(o.violations) for o in outcomes):>10} "
                 f"{sum(o.lost_steps for o in outcomes):>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="janitor-faults-"))
    started = time.monotonic()
    try:
        outcomes = run_all(base, args.kills, args.seed)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(table(outcomes))
    print(f"seed {args.seed}, {time.monotonic() - started:.0f} s")
    for o in outcomes:
        for line in o.violations[:10]:
            print(f"  {o.fault}: {line}")
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"faults-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
        [o.__dict__ for o in outcomes], indent=2))
    sys.exit(1 if any(o.violations for o in outcomes) else 0)


if __name__ == "__main__":
    main()
