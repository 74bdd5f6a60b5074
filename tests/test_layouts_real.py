"""Layouts on the trees real trainers write (issue 13): `janitor sweep --layout NAME` keeps exactly
what the policy says on a Hugging Face Trainer run, torchtitan's DCP folders and an Orbax
CheckpointManager's steps, and every step it leaves loads with the library's own loader; the same
with `--layout auto`; gated by LOADED_STEP, nothing at or above the loaded step goes. Megatron-LM,
verl and DeepSpeed trees are fixtures from their documented formats: the step their tracker file
names is kept, and a tracker naming a step that is not there stops deletion (exit 4). Orbax's
abandoned temporaries go only once --partial-grace allows. prime-rl's broadcast handshake runs live
beside `janitor run --layout prime-rl-broadcasts`, with the trainer deleting its own old broadcasts.

The real runs happen once per module (module-scope fixtures build a pristine tree); each test
sweeps its own copy. Trees come from tests/helpers/trainer_trees.py.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from helpers import trainer_trees as trees
from helpers.daemon import Daemon
from helpers.run import Ran, run_janitor
from helpers.tree import newest_change_ns, tree_state, wait_for_fs_clock, write_marker
from helpers.wait import wait_until

from janitor import exitcodes, protocol

pytestmark = [pytest.mark.slow, pytest.mark.torch]

STEPS = 5
CI = os.environ.get("CI") == "true"


def need(module: str) -> ModuleType:
    """Import a test-only library (the dev extra installs them); skip without it, but fail in
    CI, where a skip would hide a missing install step."""
    if CI:
        return __import__(module)
    return pytest.importorskip(module)


# ---- the real trees, built once --------------------------------------------------------------

@dataclass(frozen=True)
class RealTree:
    """A pristine tree written by a real library, and what to expect of it."""

    layout: str
    path: Path  # the managed directory
    names: Callable[[int], str]  # step number -> directory name
    reload: Callable[[Path, int], int]  # (managed directory, step) -> step loaded, or raises
    pointed: frozenset[int] = field(default_factory=frozenset)  # kept whatever the policy says

    def copy(self, where: Path) -> Path:
        shutil.copytree(self.path, where, symlinks=True)
        return where

    def steps(self, directory: Path) -> set[int]:
        """The step numbers of this layout present in `directory`."""
        wanted = {self.names(n): n for n in range(STEPS + 1)}
        return {wanted[name] for name in os.listdir(directory) if name in wanted}


@pytest.fixture(scope="module")
def hf_tree(tmp_path_factory: pytest.TempPathFactory) -> RealTree:
    need("transformers")
    need("accelerate")
    out = tmp_path_factory.mktemp("hf") / "run"
    started = time.monotonic()
    best = trees.hf_trainer_run(out, steps=STEPS, load_best=True)
    assert time.monotonic() - started < 60, "the tiny Trainer run must stay fast"
    assert best is not None
    assert sorted(os.listdir(out)) == [f"checkpoint-{n}" for n in range(1, STEPS + 1)]
    return RealTree("hf", out, lambda n: f"checkpoint-{n}",
                    lambda d, n: trees.reload_hf(d / f"checkpoint-{n}"), frozenset({best}))


@pytest.fixture(scope="module")
def torchtitan_tree(tmp_path_factory: pytest.TempPathFactory) -> RealTree:
    need("torch")
    out = tmp_path_factory.mktemp("torchtitan") / "checkpoint"
    trees.dcp_steps(out, range(1, STEPS + 1))
    assert all((out / f"step-{n}" / ".metadata").is_file() for n in range(1, STEPS + 1))
    return RealTree("torchtitan", out, lambda n: f"step-{n}",
                    lambda d, n: trees.reload_dcp(d / f"step-{n}"))


@pytest.fixture(scope="module")
def orbax_tree(tmp_path_factory: pytest.TempPathFactory) -> RealTree:
    need("jax")
    need("orbax.checkpoint")
    out = tmp_path_factory.mktemp("orbax") / "ckpt"
    trees.orbax_steps(out, range(1, STEPS + 1))
    assert trees.orbax_step_numbers(out) == list(range(1, STEPS + 1))
    return RealTree("orbax", out, str, trees.reload_orbax)


REAL = ("hf_tree", "torchtitan_tree", "orbax_tree")


@pytest.fixture(params=REAL)
def real(request: pytest.FixtureRequest) -> RealTree:
    tree: RealTree = request.getfixturevalue(request.param)
    return tree


def sweep(directory: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[Ran, dict]:
    """`janitor sweep --json FLAGS DIR`, and the one managed directory's report."""
    ran = run_janitor("sweep", "--json", *flags, directory, env=env)
    assert ran.code in (exitcodes.NOTHING_TO_DO, exitcodes.DELETED), ran
    document = json.loads(ran.stdout)
    reports = document["directories"]
    assert [r["path"] for r in reports] == [str(directory)], \
        "exactly the trainer's directory is managed (nothing inside a step)"
    return ran, reports[0]


def decisions(report: dict) -> dict[str, tuple[str, str]]:
    return {d["name"]: (d["action"], d["reason"]) for d in report["decisions"]}


def trainer_files(directory: Path) -> dict[str, tuple[object, ...]]:
    """tree_state of what the trainer wrote: without the directory's own entry and the
    janitor's lock file and trash (a real sweep takes the lock even where it deletes nothing)."""
    own = {protocol.LOCK_FILE, protocol.TRASH_DIR}
    return {path: state for path, state in tree_state(directory).items()
            if path != "." and path.split("/")[0] not in own}


def reload_all(tree: RealTree, directory: Path, steps: set[int]) -> None:
    for step in sorted(steps):
        assert tree.reload(directory, step) == step


# ---- hf, torchtitan, orbax: the real trees ---------------------------------------------------

@pytest.mark.parametrize("layout", ["named", "auto"])
def test_keep_last_two_on_a_real_tree_and_every_survivor_loads(
        real: RealTree, layout: str, tmp_path: Path) -> None:
    directory = real.copy(tmp_path / "run")
    name = real.layout if layout == "named" else "auto"
    ran, report = sweep(directory, "--layout", name, "--no-gate", "--keep-last", "2")
    expected = {STEPS - 1, STEPS} | real.pointed
    assert real.steps(directory) == expected, ran
    assert ran.code == exitcodes.DELETED
    assert report["layout"] == real.layout
    assert sorted(report["deleted"]) == sorted(
        real.names(n) for n in set(range(1, STEPS + 1)) - expected)
    for step in real.pointed - {STEPS - 1, STEPS}:
        assert decisions(report)[real.names(step)] == ("keep", "pointed-to")
    reload_all(real, directory, expected)
    # Nothing is left to do, and the trainer's own listing agrees with what is on disk.
    again, _ = sweep(directory, "--layout", name, "--no-gate", "--keep-last", "2")
    assert again.code == exitcodes.NOTHING_TO_DO, again
    if real.layout == "orbax":
        assert trees.orbax_step_numbers(directory) == sorted(expected)


def test_dry_run_on_a_real_tree_changes_nothing(real: RealTree, tmp_path: Path) -> None:
    directory = real.copy(tmp_path / "run")
    before = tree_state(directory)
    ran, report = sweep(directory, "--dry-run", "--layout", real.layout, "--no-gate",
                        "--keep-last", "2")
    assert ran.code == exitcodes.DELETED
    assert tree_state(directory) == before
    assert {d["name"] for d in report["decisions"] if d["action"] == "delete"} == {
        real.names(n) for n in set(range(1, STEPS - 1)) - real.pointed}


def test_gated_by_loaded_step_nothing_at_or_above_it_goes(real: RealTree, tmp_path: Path) -> None:
    directory = real.copy(tmp_path / "run")
    loaded = 3
    write_marker(directory, loaded)  # after every step, as a consumer would
    ran, report = sweep(directory, "--layout", real.layout, "--keep-last", "1")
    expected = set(range(loaded, STEPS + 1)) | real.pointed
    assert real.steps(directory) == expected, ran
    assert report["loaded_step"] == loaded
    assert all(decisions(report)[real.names(n)][0] == "keep" for n in range(loaded, STEPS + 1))
    reload_all(real, directory, expected)


def test_without_a_marker_a_gated_sweep_deletes_nothing(real: RealTree, tmp_path: Path) -> None:
    directory = real.copy(tmp_path / "run")
    before = trainer_files(directory)
    ran = run_janitor("sweep", "--layout", real.layout, "--keep-last", "1", directory)
    assert ran.code == exitcodes.REFUSED, ran
    assert trainer_files(directory) == before
    assert any(line.startswith("janitor: ") and "LOADED_STEP" in line for line in ran.err_lines)


def test_hf_best_checkpoint_is_an_early_one(hf_tree: RealTree) -> None:
    """The run is arranged so that the best eval_loss is not the last step (the keep rules are
    then seen to keep a step keep-last alone would delete)."""
    (best,) = hf_tree.pointed
    assert best < STEPS - 1, f"best checkpoint {best}: the data no longer makes an early best"
    newest = hf_tree.path / f"checkpoint-{STEPS}"
    assert trees.hf_best_step(newest) == best


# ---- orbax: abandoned temporaries --------------------------------------------------------------

# `N.orbax-checkpoint-tmp-<timestamp>` is what older Orbax releases wrote; the release installed
# here (orbax/checkpoint/_src/path/atomicity.py, _get_tmp_directory) writes the bare suffix.
ORBAX_TEMPORARIES = ("3.orbax-checkpoint-tmp-123", "3.orbax-checkpoint-tmp")


@pytest.mark.parametrize("temporary", ORBAX_TEMPORARIES)
@pytest.mark.parametrize("grace", [None, "0"])
def test_orbax_abandoned_temporary_goes_only_after_the_grace(
        orbax_tree: RealTree, tmp_path: Path, temporary: str, grace: str | None) -> None:
    directory = orbax_tree.copy(tmp_path / "ckpt")
    leftover = directory / temporary  # a save of step 3 that was preempted, then redone
    shutil.copytree(directory / "3" / "default", leftover / "default")
    flags = ["--layout", "orbax", "--no-gate", "--keep-last", "2"]
    flags += ["--partial-grace", grace] if grace is not None else []
    ran, report = sweep(directory, *flags)
    assert orbax_tree.steps(directory) == {4, 5}, ran
    assert leftover.exists() == (grace is None), ran
    assert decisions(report)[temporary][0] == ("keep" if grace is None else "delete")
    reload_all(orbax_tree, directory, {4, 5})


# ---- Megatron-LM, verl, DeepSpeed: trackers ----------------------------------------------------

@dataclass(frozen=True)
class TrackedLayout:
    layout: str
    build: Callable[[Path, list[int], int | str | None], None]
    name: Callable[[int], str]
    tracker: str


TRACKED = {
    "megatron": TrackedLayout("megatron", trees.megatron_tree, lambda n: f"iter_{n:07d}",
                              "latest_checkpointed_iteration.txt"),
    "verl": TrackedLayout("verl", trees.verl_tree, lambda n: f"global_step_{n}",
                          "latest_checkpointed_iteration.txt"),
    "deepspeed": TrackedLayout("deepspeed", trees.deepspeed_tree, lambda n: f"global_step{n}",
                               "latest"),
}
SAVED = [100, 200, 300, 400, 500]


@pytest.fixture(params=list(TRACKED))
def tracked(request: pytest.FixtureRequest) -> TrackedLayout:
    need("torch")
    return TRACKED[request.param]


def present(spec: TrackedLayout, directory: Path) -> set[int]:
    return {n for n in SAVED if (directory / spec.name(n)).is_dir()}


@pytest.mark.parametrize("layout", ["named", "auto"])
@pytest.mark.parametrize(("latest", "survivors"), [
    (300, {200, 300, 400, 500}),  # 400 and 500 are beyond the tracker: still being written
    (500, {400, 500}),
])
def test_the_tracked_step_is_kept_and_marks_the_complete_ones(
        tracked: TrackedLayout, tmp_path: Path, layout: str, latest: int,
        survivors: set[int]) -> None:
    directory = tmp_path / "save"
    tracked.build(directory, SAVED, latest)
    name = tracked.layout if layout == "named" else "auto"
    ran, report = sweep(directory, "--layout", name, "--no-gate", "--keep-last", "2")
    assert present(tracked, directory) == survivors, ran
    assert report["layout"] == tracked.layout
    assert (directory / tracked.tracker).is_file()
    verdicts = decisions(report)
    assert verdicts[tracked.name(latest)][0] == "keep"
    assert verdicts[tracked.name(latest)][1] in {"pointed-to", "newest-complete"}
    for beyond in (n for n in SAVED if n > latest):
        assert verdicts[tracked.name(beyond)] == ("keep", "in-progress")


@pytest.mark.parametrize("content", [250, 700, "not-a-number"])
def test_a_tracker_naming_no_step_stops_deletion(
        tracked: TrackedLayout, tmp_path: Path, content: int | str) -> None:
    directory = tmp_path / "save"
    tracked.build(directory, SAVED, content)
    before = trainer_files(directory)
    ran = run_janitor("sweep", "--layout", tracked.layout, "--no-gate", "--keep-last", "1",
                      directory)
    assert ran.code == exitcodes.REFUSED, ran
    assert trainer_files(directory) == before
    assert "Traceback" not in ran.stderr
    lines = [line for line in ran.err_lines if tracked.tracker in line]
    assert lines and all(line.startswith("janitor: ") for line in lines), ran.stderr


def test_megatron_tracker_is_read_as_megatron_writes_it(tmp_path: Path) -> None:
    """No newline after the number (`f.write(str(iteration))`), and it may be rewritten with one
    by a hand: both name the same iteration."""
    need("torch")
    for text in ("300", "300\n"):
        directory = tmp_path / f"save-{len(text)}"
        trees.megatron_tree(directory, SAVED, None)
        (directory / "latest_checkpointed_iteration.txt").write_text(text)
        sweep(directory, "--layout", "megatron", "--no-gate", "--keep-last", "1")
        assert present(TRACKED["megatron"], directory) == {300, 400, 500}


# ---- prime-rl: the live broadcast handshake ----------------------------------------------------

@dataclass
class Handshake:
    """What the sender and receiver threads saw: acknowledgement times per step, errors."""

    acked_at: dict[int, float] = field(default_factory=dict)
    loaded: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


GENERATE_S = 0.02


def _sender(root: Path, steps: range, seen: Handshake, stop: threading.Event) -> None:
    try:
        for step in steps:
            trees.prime_rl_offer(root, step)
            wait_until(lambda s=step: stop.is_set() or (
                root / f"step_{s}" / trees.RECEIVER_READY).exists(), 30.0,
                f"the receiver to acknowledge step {step}", interval_s=0.001)
            if stop.is_set():
                return
            trees.prime_rl_transfer(root, step)
            trees.prime_rl_clean(root, step)  # the trainer deletes below step - 1 itself
    except Exception as exc:
        with seen.lock:
            seen.errors.append(f"sender: {exc!r}")


def _receiver(root: Path, steps: range, seen: Handshake, stop: threading.Event) -> None:
    try:
        for step in steps:
            directory = root / f"step_{step}"
            wait_until(lambda d=directory: stop.is_set() or (d / trees.SENDER_READY).exists(),
                       30.0, f"step {step} to be offered", interval_s=0.001)
            if stop.is_set():
                return
            with seen.lock:
                seen.acked_at[step] = time.monotonic()
            trees.prime_rl_receive(root, step)  # about to load this step
            wait_until(lambda d=directory: stop.is_set() or (d / trees.FINISHED).exists(),
                       30.0, f"step {step} to finish", interval_s=0.001)
            if stop.is_set():
                return
            trees.prime_rl_load(root, step)  # raises if the janitor took any of it
            with seen.lock:
                seen.loaded.append(step)
            # Rollouts are generated with this policy for a while (simulated work, not a wait
            # for anything): the trainer meanwhile offers the next step and cleans up.
            stop.wait(GENERATE_S)
    except Exception as exc:
        with seen.lock:
            seen.errors.append(f"receiver: {exc!r}")


def acknowledge(root: Path, step: int) -> None:
    """The consumer's `.receiver_ready`, strictly after every change below it on the
    filesystem's clock (a live consumer acknowledges after loading the step before; in a tree
    built in one go, all of it could fall in one coarse clock tick)."""
    wait_for_fs_clock(root, newest_change_ns(root))
    trees.prime_rl_receive(root, step)


def broadcast(root: Path, step: int) -> None:
    """One whole broadcast, acknowledged: offer, acknowledgement, transfer."""
    trees.prime_rl_offer(root, step)
    acknowledge(root, step)
    trees.prime_rl_transfer(root, step)


def step_dirs(root: Path) -> list[str]:
    """The broadcast directories (not the janitor's own lock and trash), sorted."""
    return sorted(name for name in os.listdir(root) if name.startswith("step_"))


def test_prime_rl_broadcasts_live_beside_the_trainers_own_cleanup(tmp_path: Path) -> None:
    root = tmp_path / "outputs" / "broadcasts"
    root.mkdir(parents=True)
    trees.prime_rl_broadcast(root, 0)  # the startup broadcast, received
    last = 60
    # A short rescan: this test is about safety beside the trainer's own cleanup; how fast a
    # sentinel written inside a step is seen is the next test's business.
    daemon = Daemon(["--layout", "prime-rl-broadcasts", "--audit-log", "off",
                     "--rescan-interval", "2", root])
    seen = Handshake()
    stop = threading.Event()
    threads = [threading.Thread(target=target, args=(root, range(1, last + 1), seen, stop))
               for target in (_sender, _receiver)]
    try:
        daemon.wait_event("ready")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not seen.errors, seen.errors
        assert seen.loaded == list(range(1, last + 1))
        # The trainer left step_{last-1} and step_{last}; the receiver acknowledged the last, so
        # the janitor deletes the one below it, and keeps the newest.
        try:
            wait_until(lambda: step_dirs(root) == [f"step_{last}"], 20.0,
                       "the janitor to delete the step below the acknowledged one")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; on disk {step_dirs(root)}; the janitor's log:\n"
                                 + "\n".join(daemon.lines[-25:])) from None
        assert daemon.proc.poll() is None, "the janitor stopped"
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(10)
        code = daemon.stop()
        daemon.kill()
    assert code == exitcodes.EXIT_OK
    deleted = daemon.named("deleted")
    assert deleted, "the janitor deleted nothing itself"
    for event in deleted:
        step = int(str(event["step"]).removeprefix("step_"))
        # A step goes only after a newer one was acknowledged: never the one being loaded.
        assert any(acked > step and at <= event["_seen"]
                   for acked, at in seen.acked_at.items()), event
    bad = [e for e in daemon.events if e.get("level") in ("error", "critical")]
    assert not bad, bad
    assert not daemon.not_json, daemon.not_json


def test_prime_rl_a_sentinel_inside_a_step_is_seen_without_waiting_for_a_rescan(
        tmp_path: Path) -> None:
    """The acknowledgement and then `.finished` are written inside a step directory the janitor
    has already seen, with no change in the broadcast directory itself: the daemon must react to
    both, not only at the next full rescan (30 s). `.finished` in the acknowledged step is what
    makes the step below it deletable (it is no longer the newest complete one)."""
    root = tmp_path / "broadcasts"
    root.mkdir()
    broadcast(root, 1)
    broadcast(root, 2)
    daemon = Daemon(["--layout", "prime-rl-broadcasts", "--audit-log", "off",
                     "--log-level", "debug", root])
    try:
        daemon.wait_event("ready")
        wait_until(lambda: step_dirs(root) == ["step_2"], 10.0, "step_1 deleted at start")
        trees.prime_rl_offer(root, 3)
        daemon.wait_event("pass_decided", steps=2, loaded_step=2)  # it has seen step_3
        acknowledge(root, 3)
        # It has seen the acknowledgement; the weights and `.finished` come after it, as in
        # prime-rl (the trainer waits for `.receiver_ready` before it transfers).
        daemon.wait_event("pass_decided", steps=2, loaded_step=3)
        trees.prime_rl_transfer(root, 3)
        try:
            wait_until(lambda: step_dirs(root) == ["step_3"], 5.0,
                       "step_2 deleted once step_3 is acknowledged and finished")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the janitor's log:\n"
                                 + "\n".join(daemon.lines[-15:])) from None
    finally:
        daemon.stop()
        daemon.kill()


@pytest.fixture
def broadcasts(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "broadcasts"
    root.mkdir()
    yield root


def test_prime_rl_progress_comes_from_receiver_ready(broadcasts: Path) -> None:
    """A tree in one state of the handshake: steps 1-4 finished and acknowledged, step 5 offered
    and acknowledged (being written), step 6 offered only. The acknowledged step 5 is what the
    consumer is about to load: everything below the newest finished step that is below it may
    go, nothing at or above it."""
    for step in range(1, 5):
        broadcast(broadcasts, step)
    trees.prime_rl_offer(broadcasts, 5)
    acknowledge(broadcasts, 5)
    (broadcasts / "step_5" / trees.STARTED).touch()
    trees.prime_rl_offer(broadcasts, 6)
    ran, report = sweep(broadcasts, "--layout", "prime-rl-broadcasts")
    assert step_dirs(broadcasts) == ["step_4", "step_5", "step_6"], ran
    assert decisions(report)["step_5"][0] == "keep"
    assert decisions(report)["step_6"][0] == "keep"
