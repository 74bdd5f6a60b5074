"""Dependencies between steps (issue 14, point 2): a step that is a delta over others keeps them.

A step names what it needs in `DEPENDS_ON` (ASCII step numbers, one per line), or, in prime-rl's
sparse broadcasts, by the `base_step` of its `sparse_update_manifest.json`. A kept step keeps its
dependencies, transitively (`depended-on`, a hard rule); a dependency file that cannot be read
keeps its own step (`dependency-problem`) and halts nothing else; a dependency that is not here
and a cycle are reported. Pure parts are checked against brute force on generated graphs; the
rest on real trees, through the real CLI and a real daemon.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from helpers.daemon import Spawn, publish_marker
from helpers.run import run_janitor
from helpers.trainer_trees import prime_rl_broadcast, prime_rl_sparse_broadcast
from helpers.tree import step_numbers
from helpers.wait import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from janitor import dependencies
from janitor.dependencies import EdgeMap, cycle_through, find_cycle, parse_json_step, parse_lines
from janitor.protocol import Invalid

# ---- parsing -----------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 10**19 - 1), max_size=50), st.booleans())
def test_depends_on_round_trips_any_list_of_steps(steps: list[int], newline: bool) -> None:
    text = "\n".join(map(str, steps)) + ("\n" if newline and steps else "")
    assert parse_lines(text.encode()) == tuple(dict.fromkeys(steps))


@given(st.binary(max_size=300))
def test_depends_on_never_raises_and_accepts_only_canonical_lines(data: bytes) -> None:
    parsed = parse_lines(data)
    if isinstance(parsed, Invalid):
        assert parsed.reason and "\n" not in parsed.reason
        return
    body = data[:-1] if data.endswith(b"\n") else data
    assert data == b"" or all(line.isdigit() and (line == b"0" or not line.startswith(b"0"))
                              for line in body.split(b"\n"))


@pytest.mark.parametrize("data", [b"1\n\n2\n", b" 1\n", b"1 \n", b"01\n", b"-1\n", b"1\r\n",
                                  b"\xd9\xa1\n", b"1,2\n", b"\n", b"1\n\n",
                                  b"9" * 20 + b"\n", b"1\n" * 40000])
def test_malformed_depends_on_is_invalid(data: bytes) -> None:
    assert isinstance(parse_lines(data), Invalid)


@pytest.mark.parametrize(("document", "expected"), [
    ({"base_step": 7, "step": 8}, (7,)),
    ({"base_step": 0}, (0,)),
    ({"base_step": True}, None), ({"base_step": -1}, None), ({"base_step": 7.0}, None),
    ({"base_step": "7"}, None), ({"base_step": 10**19}, None), ({"step": 8}, None),
    ([7], None), (None, None),
])
def test_a_sparse_manifest_names_its_base_step(document: object, expected: object) -> None:
    parsed = parse_json_step(json.dumps(document).encode(), "base_step")
    assert parsed == expected if expected is not None else isinstance(parsed, Invalid)


@given(st.binary(max_size=200))
def test_a_sparse_manifest_of_any_bytes_never_raises(data: bytes) -> None:
    parsed = parse_json_step(data, "base_step")
    assert isinstance(parsed, Invalid) or (len(parsed) == 1 and 0 <= parsed[0] < 10**19)


def test_a_deeply_nested_manifest_is_invalid_not_a_crash() -> None:
    assert isinstance(parse_json_step(b"[" * 100_000 + b"]" * 100_000, "base_step"), Invalid)


# ---- the graph: walks against brute force ----------------------------------------------------

graphs = st.dictionaries(st.integers(0, 25), st.lists(st.integers(0, 27), max_size=3)
                         .map(tuple), max_size=20)


def _reachable(graph: dict[int, tuple[int, ...]], start: int) -> set[int]:
    """Every step `start` needs through steps present (brute force)."""
    seen: set[int] = set()
    work = [d for d in graph.get(start, ()) if d in graph]
    while work:
        step = work.pop()
        if step not in seen:
            seen.add(step)
            work.extend(d for d in graph[step] if d in graph)
    return seen


def _is_cycle(graph: dict[int, tuple[int, ...]], cycle: list[int]) -> bool:
    return len(cycle) >= 2 and cycle[0] == cycle[-1] and all(
        b in graph.get(a, ()) for a, b in itertools.pairwise(cycle))


@settings(max_examples=500)
@given(graphs, st.data())
def test_held_is_what_kept_steps_need(graph: dict[int, tuple[int, ...]],
                                      data: st.DataObject) -> None:
    edges = EdgeMap(graph.items())
    doomed = data.draw(st.sets(st.sampled_from(sorted(graph)) if graph else st.nothing()))
    held = dependencies.held(sorted(graph), lambda s: s not in doomed, edges.dependents,
                             edges.depends, edges.present)
    # Brute force: the steps a kept step names (other than itself), and all they need.
    named = {d for k, ds in graph.items() if k not in doomed for d in ds if d in graph and d != k}
    assert held == named.union(*(_reachable(graph, s) for s in named))


@settings(max_examples=500)
@given(graphs)
def test_cycles_are_found_where_they_are(graph: dict[int, tuple[int, ...]]) -> None:
    edges = EdgeMap(graph.items())
    for step, depends in graph.items():
        through = cycle_through(step, edges.dependents)
        on_cycle = step in _reachable(graph, step) or step in depends
        assert (through is not None) == on_cycle
        if through is not None:
            assert through[0] == step and _is_cycle(graph, through)
    anywhere = find_cycle(sorted(graph), edges.depends)
    assert (anywhere is not None) == any(s in _reachable(graph, s) or s in graph[s]
                                         for s in graph)
    if anywhere is not None:
        assert _is_cycle(graph, anywhere)


def test_a_long_chain_costs_a_new_step_one_lookup() -> None:
    # 100,000 patches, each on the one before: a new head is checked for a cycle without
    # walking down the chain (nothing names it yet).
    graph = {n: (n - 1,) for n in range(1, 100_001)}
    graph[0] = ()
    calls = 0
    edges = EdgeMap(graph.items())

    def counted(step: int) -> tuple[int, ...]:
        nonlocal calls
        calls += 1
        return tuple(edges.dependents(step))

    assert cycle_through(100_000, counted) is None
    assert calls == 1


# ---- real trees through the CLI ----------------------------------------------------------------

def _chain(tree: Path, numbers: range, full_every: int) -> None:
    """Steps whose DEPENDS_ON names the step before, except a full step every `full_every`."""
    tree.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        step = tree / f"step_{number}"
        step.mkdir()
        (step / "weights.bin").write_bytes(os.urandom(4096))
        if number % full_every:
            (step / "DEPENDS_ON").write_bytes(f"{number - 1}\n".encode())
        (step / "STABLE").touch()


def _sweep(*args: str | Path) -> dict[str, object]:
    ran = run_janitor("sweep", "--json", "--audit-log", "off", *args)
    assert ran.code in (0, 3), ran
    document = json.loads(ran.stdout)
    assert isinstance(document, dict)
    return document


def _reasons(document: dict[str, object]) -> dict[int, str]:
    directory = document["directories"][0]  # type: ignore[index]
    return {d["step"]: d["reason"] for d in directory["decisions"]}  # type: ignore[index]


def test_a_chain_is_kept_down_to_its_full_step_and_no_further(tmp_path: Path) -> None:
    tree = tmp_path / "run" / "broadcasts"
    _chain(tree, range(1, 13), full_every=5)  # full: 5, 10; the rest patch the one before
    publish_marker(tree, 8)
    dry = _reasons(_sweep("--dry-run", tmp_path))
    # depended-on comes before the gate's reasons (a needed step at or above the loaded step
    # is reported as needed); 9 and 12 are needed by none.
    assert dry == {1: "superseded", 2: "superseded", 3: "superseded", 4: "superseded",
                   5: "depended-on", 6: "depended-on", 7: "depended-on", 8: "depended-on",
                   9: "at-or-above-loaded", 10: "depended-on", 11: "depended-on",
                   12: "newest-complete"}
    _sweep(tmp_path)
    assert step_numbers(tree) == list(range(5, 13))
    # The consumer moves past the next full step: the chain below it is needed by no one.
    publish_marker(tree, 11)
    assert _reasons(_sweep("--dry-run", tmp_path))[10] == "depended-on"
    _sweep(tmp_path)
    assert step_numbers(tree) == [10, 11, 12]


def test_an_interval_multiple_keeps_its_chain(tmp_path: Path) -> None:
    tree = tmp_path / "broadcasts"
    _chain(tree, range(1, 13), full_every=4)  # full: 4, 8, 12
    publish_marker(tree, 12)
    _sweep("--interval-to-keep", "7", tmp_path)
    # 7 is kept (multiple), so 6, 5 and the full step 4 it is built on stay; 8-11: nothing
    # needs them but 12 is full.
    assert step_numbers(tree) == [4, 5, 6, 7, 12]


def test_a_dependency_file_that_cannot_be_read_keeps_only_its_step(tmp_path: Path) -> None:
    tree = tmp_path / "broadcasts"
    _chain(tree, range(1, 9), full_every=1)  # no dependencies
    outside = tmp_path / "outside"
    outside.write_bytes(b"2\n")
    kinds = {3: lambda p: p.write_bytes(b"two\n"),
             4: lambda p: p.symlink_to(outside),  # never followed: step 2 is not held by it
             5: os.mkfifo,  # a FIFO must not block the sweep
             6: lambda p: p.mkdir(),
             7: lambda p: p.write_bytes(b"1\n" * 40_000)}  # over 4096 steps
    for number, make in kinds.items():
        make(tree / f"step_{number}" / "DEPENDS_ON")
    publish_marker(tree, 8)
    ran = run_janitor("sweep", "--audit-log", "off", tmp_path)
    assert ran.code == 3, ran
    assert step_numbers(tree) == [3, 4, 5, 6, 7, 8]
    assert outside.read_bytes() == b"2\n"
    for number in kinds:
        assert f"step_{number}" in ran.stdout
    lines = [x for x in ran.stdout.splitlines() if "dependency-problem" in x]
    assert len(lines) == 5, ran.stdout


@settings(max_examples=12, deadline=None)
@given(content=st.one_of(st.binary(max_size=100),
                         st.lists(st.integers(0, 8), max_size=4).map(
                             lambda ns: "".join(f"{n}\n" for n in ns).encode())))
def test_any_depends_on_content_deletes_nothing_a_valid_one_would_keep(content: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="janitor-deps-") as root:
        tree = Path(root) / "broadcasts"
        _chain(tree, range(1, 7), full_every=1)
        (tree / "step_5" / "DEPENDS_ON").write_bytes(content)
        publish_marker(tree, 6)
        run_janitor("sweep", "--audit-log", "off", "--interval-to-keep", "5", root)
        parsed = parse_lines(content)
        # What it names (and is here) stays, nothing else does; unreadable, it names nothing
        # and only keeps its own step (kept anyway here).
        named = set() if isinstance(parsed, Invalid) else {n for n in parsed if 1 <= n <= 6}
        assert set(step_numbers(tree)) == {5, 6} | named


def test_missing_dependencies_and_cycles_are_reported_and_keep_what_they_can(
        tmp_path: Path) -> None:
    tree = tmp_path / "broadcasts"
    _chain(tree, range(1, 9), full_every=1)
    (tree / "step_8" / "DEPENDS_ON").write_bytes(b"99\n3\n")
    (tree / "step_5" / "DEPENDS_ON").write_bytes(b"6\n")
    (tree / "step_6" / "DEPENDS_ON").write_bytes(b"5\n")
    publish_marker(tree, 8)
    ran = run_janitor("sweep", "--audit-log", "off", tmp_path)
    assert ran.code == 3, ran
    # 8 is kept (newest) and needs 3; the cycle 5 <-> 6 is needed by no kept step: it goes.
    assert step_numbers(tree) == [3, 8]
    assert "step 8 depends on step 99, not here" in ran.stderr
    assert "dependency cycle: step 5 -> step 6 -> step 5" in ran.stderr


# ---- prime-rl's sparse broadcasts ---------------------------------------------------------------

def test_prime_rl_sparse_patches_keep_their_base_chain(tmp_path: Path) -> None:
    """Full broadcasts at 1 and 6, sparse patches on the step before in between, each step
    acknowledged by the consumer (`.receiver_ready`) before it was written, as the handshake
    goes: the newest, 10, needs 9, 8, 7 and the full step 6; below 6 nothing is needed."""
    root = tmp_path / "broadcasts"
    for step in range(1, 11):
        if step in (1, 6):
            prime_rl_broadcast(root, step)
        else:
            prime_rl_sparse_broadcast(root, step, base_step=step - 1)
    reasons = _reasons(_sweep("--dry-run", "--layout", "prime-rl-broadcasts", tmp_path))
    assert reasons == {1: "superseded", 2: "superseded", 3: "superseded", 4: "superseded",
                       5: "superseded", 6: "depended-on", 7: "depended-on",
                       8: "depended-on", 9: "depended-on", 10: "newest-complete"}
    # A patch whose manifest is gone: its base is unknown, so the step is kept (and only it).
    (root / "step_4" / "sparse_update_manifest.json").unlink()
    ran = run_janitor("sweep", "--audit-log", "off", "--layout", "prime-rl-broadcasts", tmp_path)
    assert ran.code == 3, ran
    assert step_numbers(root) == [4, 6, 7, 8, 9, 10]
    # The next full broadcast frees the chain below it (the consumer acknowledged it too).
    prime_rl_broadcast(root, 11)
    run_janitor("sweep", "--audit-log", "off", "--layout", "prime-rl-broadcasts", tmp_path)
    assert step_numbers(root) == [4, 11]
    assert "sparse_update_patch.safetensors without sparse_update_manifest.json" in ran.stderr


# ---- the daemon --------------------------------------------------------------------------------

def test_the_daemon_keeps_what_a_kept_step_needs_and_says_what_is_wrong(
        spawn: Spawn, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    tree = root / "run" / "broadcasts"
    _chain(tree, range(1, 9), full_every=4)  # full: 4, 8
    (tree / "step_2" / "DEPENDS_ON").write_bytes(b"not a step\n")
    publish_marker(tree, 7)
    daemon = spawn(str(root), "--audit-log", "off")
    daemon.wait_event("ready")
    # 7 (at the loaded step) needs 6, 5 and the full step 4; 2's file is unreadable: kept.
    wait_until(lambda: step_numbers(tree) == [2, 4, 5, 6, 7, 8], 10, "steps 1 and 3 to go")
    problem = daemon.wait_event("dependency_problem")
    assert problem["step"] == 2 and "DEPENDS_ON: line 1" in problem["why"]
    # A new step names one that is gone: said once; the consumer moves on past the full step.
    step = tree / "step_9"
    step.mkdir()
    (step / "DEPENDS_ON").write_bytes(b"8\n3\n")
    (step / "STABLE").touch()
    missing = daemon.wait_event("dependency_missing")
    assert missing["step"] == 9 and "step 3, not here" in missing["why"]
    publish_marker(tree, 9)
    wait_until(lambda: step_numbers(tree) == [2, 8, 9], 10, "the chain below 8 to go")
    assert daemon.stop()[0] == 0
    assert len(daemon.named("dependency_problem")) == 1
    assert len(daemon.named("dependency_missing")) == 1


# ---- the writer's side: trainer_hooks ----------------------------------------------------------

def test_staged_step_writes_depends_on_before_its_marker_and_the_janitor_reads_it(
        tmp_path: Path) -> None:
    from trainer_hooks import mark_loaded, staged_step

    tree = tmp_path / "broadcasts"
    tree.mkdir()
    for number in range(1, 7):
        with staged_step(tree, number, depends_on=[number - 1] if number % 3 else []) as staging:
            (staging / "weights.bin").write_bytes(os.urandom(1024))
    assert (tree / "step_5" / "DEPENDS_ON").read_bytes() == b"4\n"
    assert not (tree / "step_6" / "DEPENDS_ON").exists()
    # Written before the marker: the marker is the newest file of the step.
    step = tree / "step_5"
    assert (step / "DEPENDS_ON").stat().st_mtime_ns <= (step / "STABLE").stat().st_mtime_ns
    mark_loaded(tree, 5)
    _sweep(tmp_path)
    assert step_numbers(tree) == [3, 4, 5, 6]  # 5 needs 4, 4 needs the full step 3


@settings(max_examples=200, deadline=None)
@given(depends_on=st.one_of(
    st.lists(st.one_of(st.integers(-5, 12), st.booleans(), st.floats(0, 3), st.text(max_size=2),
                       st.none()), max_size=4),
    st.text(max_size=3), st.binary(max_size=3), st.integers(), st.none(),
    st.just(range(5000))))
def test_a_bad_depends_on_is_refused_and_nothing_is_published(depends_on: object) -> None:
    import tempfile

    from trainer_hooks import staged_step

    with tempfile.TemporaryDirectory(prefix="janitor-deps-") as root:
        numbers = depends_on if isinstance(depends_on, list | range) else None
        good = numbers is not None and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 and n != 7
            for n in numbers) and len(set(numbers)) <= 4096
        try:
            with staged_step(root, 7, depends_on=depends_on) as staging:  # type: ignore[arg-type]
                (staging / "w").write_bytes(b"w")
        except (TypeError, ValueError) as exc:
            assert not good, exc
            assert os.listdir(root) == []
            assert "\n" not in str(exc) and "depends_on" in str(exc)
            return
        assert good
        written = Path(root, "step_7", "DEPENDS_ON")
        expected = list(dict.fromkeys(numbers or []))
        assert (written.read_bytes() if expected else b"") == \
            "".join(f"{n}\n" for n in expected).encode()
        assert parse_lines(written.read_bytes() if expected else b"") == tuple(expected)


def test_out_of_fds_is_a_failed_read_not_a_step_without_dependencies(tmp_path: Path) -> None:
    """With no fd left, a kept step's DEPENDS_ON cannot be opened: that must fail the pass (the
    janitor deletes nothing), not read as "unreadable", which would keep only that step and let
    what it names go. Then, with fds back, the same sweep keeps the chain."""
    import subprocess
    import sys

    tree = tmp_path / "broadcasts"
    _chain(tree, range(1, 6), full_every=3)  # 3 full; 4 needs 3; 5 needs 4
    publish_marker(tree, 5)
    child = f"""
import errno, os, resource
from janitor.fs.pointers import read_depends
from janitor.layouts import STEP
fd = os.open({str(tree)!r}, os.O_RDONLY | os.O_DIRECTORY)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    print(read_depends(fd, "step_5", STEP.depends))
except OSError as exc:
    print("raised", errno.errorcode[exc.errno])
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.strip() == "raised EMFILE", done
    _sweep(tmp_path)
    assert step_numbers(tree) == [3, 4, 5]


def test_a_settled_dependency_file_is_parsed_once_and_again_when_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain's held steps are read again at every pass: a sparse manifest (megabytes of JSON)
    must not be parsed again while it is the same file; a rewrite is seen at once."""
    from janitor.fs import pointers
    from janitor.layouts import STEP

    calls: list[bytes] = []
    real = dependencies.parse_lines
    monkeypatch.setattr(dependencies, "parse_lines", lambda data: calls.append(data) or real(data))
    monkeypatch.setattr(pointers, "SETTLE_NS", 0)
    _chain(tmp_path, range(1, 3), full_every=1)
    (tmp_path / "step_2" / "DEPENDS_ON").write_bytes(b"1\n")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(5):
            assert pointers.read_depends(fd, "step_2", STEP.depends) == ((1,), None)
        assert len(calls) == 1
        # Rewritten in place: a new ctime (and here a new size too, as a coarse clock may not
        # tick between two writes; SETTLE_NS is what covers that outside this test).
        (tmp_path / "step_2" / "DEPENDS_ON").write_bytes(b"0\n1\n")
        assert pointers.read_depends(fd, "step_2", STEP.depends) == ((0, 1), None)
        (tmp_path / "step_2" / "DEPENDS_ON").write_bytes(b"not one\n")
        assert pointers.read_depends(fd, "step_2", STEP.depends)[1] is not None
        assert len(calls) == 3
    finally:
        os.close(fd)
