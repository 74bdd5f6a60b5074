"""Generative hostile-input suite for every option and environment variable (issue 10, point 7).

Hypothesis draws settings for `sweep`, `status` and `run --once`: each option from the command
line or from its JANITOR_* variable, with values from a hostile pool (blank, whitespace, tabs,
NaN/inf, 1e300, huge and negative integers, Arabic-Indic and full-width digits, underscores, '+5',
separators, random text) and from each option's valid range. An independent oracle
(helpers.options: regexes and Decimal ranges written from the README, not janitor.cli.options) says
whether the whole setting is valid. Then:

- invalid: exit 2, exactly one stderr line `janitor: error: ...`, no traceback, tree unchanged;
- valid: the parsed values equal the oracle's, and on a real tree (steps 0..N, each with STABLE,
  written first; LOADED_STEP after, as real writers do) the gate and every keep rule hold
  afterwards: every step >= LOADED_STEP (gated), every interval multiple, the newest K complete
  steps; a dry run or `status` changes nothing.

`sweep`, `status` and the parse-only checks run in-process (janitor.cli.main with os.environ
patched); `run --once` runs the real console script, with fewer examples.
"""

# Lookalike digits and letters are the point of these tests:
# ruff: noqa: RUF001

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from helpers.options import (
    LAYOUTS,
    SPECS_BY_COMMAND,
    RefusedError,
    Spec,
    assert_one_usage_line,
    marker_name,
    parse_bool,
    run_inprocess,
)
from helpers.run import run_janitor
from helpers.tree import make_step, step_numbers, tree_state, write_marker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from janitor.cli import cli

SETTINGS = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HOSTILE = [
    "", " ", "  ", "\t", "\n", " \t ", "\r", "\x0b", "\xa0", "\u3000",
    "nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "1e300", "-1e300", "1e3", "1E3",
    "0", "-0", "1", "-1", "+5", "+0", "1_000", "1_0", "١٢", "١", "１２", "０", "𝟙", "٣.٥", "２.５",
    "0x10", "0o7", "0b1", "1,000", "1.000,5", "1.5", "-1.5", ".5", "5.", "1.0.0", "1 000",
    " 1", "1 ", "1\n", "\t1", "99999999999999999999999", "9" * 40, "4194305", "65", "64",
    "true", "TRUE", "False", "yes", "no", "on", "OFF", "t", "f", "y", "n", "yeſ", "ｔrue", "None",
    "auto", "off", "Off", "poll", "inotify", "json", "debug", "DEBUG", "loaded-step",
    "STABLE", ".finished", "LOADED_STEP", "LOADED_STEP.eval", ".janitor-trash", ".janitor.lock",
    "step_1", "a/b", "..", ".", "null", "0.0099999999999999999999", "31536000", "31536001",
    "86400", "3600", "0.01", "0.1", "127.0.0.1:0", ":0", "[::1]:0", "65536", "０:0", "0 ",
]

hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(-(10**25), 10**25).map(str),
    st.floats().map(repr),  # nan, inf, 1e+300, -0.0, 5e-324
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.text(alphabet="0123456789-+._ \t,eE١２", max_size=8),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
)


def valid_text(spec: Spec) -> st.SearchStrategy[str]:
    """Values each option's range accepts, so the valid branch is exercised often."""
    by_flag: dict[str, st.SearchStrategy[str]] = {
        "--interval-to-keep": st.integers(1, 12).map(str),
        "--keep-last": st.integers(1, 12).map(str),
        "--complete-marker": st.sampled_from(["STABLE", ".metadata", ".finished"]),
        "--progress": st.sampled_from(["loaded-step", "receiver-ready"]),
        "--layout": st.sampled_from(list(LAYOUTS)),
        "--keep-within": st.sampled_from(["1s", "90s", "6h", "7d", "3650d", "2w"]),
        "--keep-hourly": st.integers(0, 48).map(str),
        "--keep-daily": st.integers(0, 14).map(str),
        "--keep-interval": st.sampled_from(["1:1", "3:2", "1000:3", "7:100000"]),
        "--max-bytes": st.sampled_from(["1", "4096", "500G", "1.5T", "2GiB", "8MB"]),
        "--min-free": st.sampled_from(["10%", "0.5%", "99.9%", "50G", "1"]),
        "--pressure": st.sampled_from(["alert", "relieve"]),
        "--partial-grace": st.sampled_from(["0", "0.5", "600", "31536000", "007.250"]),
        "--max-depth": st.integers(0, 5).map(str),
        "--reclaim-workers": st.integers(1, 8).map(str),
        "--watch": st.sampled_from(["auto", "inotify", "poll"]),
        "--poll-interval": st.sampled_from(["0.01", "0.5", "2", "3600"]),
        "--rescan-interval": st.sampled_from(["0.1", "30", "86400"]),
        "--metrics-addr": st.sampled_from(["0", "127.0.0.1:0", "00000"]),
        "--exit-with-pid": st.just(str(os.getpid())),  # alive: --once still ends the run
        "--log-format": st.sampled_from(["auto", "json", "console"]),
        "--log-level": st.sampled_from(["debug", "info", "warning", "error"]),
    }
    if spec.is_flag:
        return st.sampled_from(["true", "FALSE", "1", "0", "Yes", "no", "ON", "off"])
    return by_flag[spec.flag]


_ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def near_misses(value: str) -> list[str]:
    """A valid value, bent the ways a lenient parser forgives: padding, signs, separators,
    lookalike digits, case, exponents, blanks."""
    return [" " + value, value + " ", "\t" + value, value + "\n", "\xa0" + value, "+" + value,
            value.upper(), value.title(), value.translate(_ARABIC_INDIC),
            value.translate(_FULL_WIDTH), value[:1] + "_" + value[1:], value + ".0", value + "e0",
            "-" + value, value + value, "", " ", "\t", value + "/x", value[:-1]]


def values_for(spec: Spec) -> st.SearchStrategy[str]:
    bent = valid_text(spec).flatmap(lambda v: st.sampled_from(near_misses(v)))
    if spec.flag == "--exit-with-pid":
        # A pid in range that is not alive is a start-up error (exit 2, one line) by design;
        # keep the hostile pool to what the parser alone decides.
        refused = _oracle_refuses(spec)
        return st.one_of(valid_text(spec), hostile_text.filter(refused), bent.filter(refused))
    if spec.flag == "--complete-marker":
        reserved = st.sampled_from([".janitor-trash", ".janitor.lock", ".janitor-pin",
                                    ".receiver_ready", "LOADED_STEP", "LOADED_STEP.eval",
                                    ".janitor-staging.x", "step_1", "a/b", ".", "..", "/"])
        return st.one_of(hostile_text, bent, reserved, valid_text(spec))
    return st.one_of(hostile_text, bent, valid_text(spec))


def _oracle_refuses(spec: Spec) -> Any:
    def refused(text: str) -> bool:
        try:
            spec.parse(text)
        except RefusedError:
            return True
        return False
    return refused


@dataclass(frozen=True)
class Setting:
    spec: Spec
    source: str  # "cli" or "env"
    value: str
    form: str = "value"  # for a flag on the command line: "on", "off" (--no-gate) or "value"


@dataclass(frozen=True)
class Case:
    settings: tuple[Setting, ...]
    roots: tuple[str, str]  # (how, value): how is cli-abs, cli-rel, env-abs, cli-raw or env-raw
    audit: tuple[str, str] | None  # (source, value) with value possibly "<abs>" or "<rel>"
    steps: int
    loaded: int


GOOD_ROOTS = st.sampled_from([("cli-abs", ""), ("cli-rel", ""), ("env-abs", "")])
HOSTILE_ROOTS = st.one_of(
    st.sampled_from([("cli-abs", ""), ("cli-rel", ""), ("env-abs", ""), ("env-rel", "")]),
    st.tuples(st.sampled_from(["cli-raw", "env-raw"]),
              st.sampled_from(["", " ", "\t", "  \t ", "\n"])),
)
AUDIT_VALUES = ["auto", "off", "<abs>"]
GOOD_AUDIT = st.one_of(st.none(), st.tuples(st.sampled_from(["cli", "env"]),
                                            st.sampled_from(AUDIT_VALUES)))
HOSTILE_AUDIT = st.tuples(st.sampled_from(["cli", "env"]),
                          st.sampled_from([*AUDIT_VALUES, "OFF", "Auto", " off", "off ", "", " ",
                                           "\t", "<rel>"]))


def _setting(draw: st.DrawFn, spec: Spec, values: st.SearchStrategy[str]) -> Setting:
    source = draw(st.sampled_from(["cli", "env"]))
    if spec.is_flag and source == "cli":
        forms = ["on", "off", "value"] if spec.flag == "--gate" else ["on", "value"]
        form = draw(st.sampled_from(forms))
        return Setting(spec, source, draw(values) if form == "value" else "", form)
    value = draw(values)
    if source == "env":
        value = value.replace("\0", "")  # a variable cannot hold NUL
    return Setting(spec, source, value)


@st.composite
def cases(draw: st.DrawFn, command: str, *, exclude: tuple[str, ...] = ()) -> Case:
    """Up to three options set to valid values, and at most ONE target drawn from the hostile
    pool (an option, the roots or the audit log): a second bad value would mask a parser that
    forgives the first."""
    specs = [s for s in SPECS_BY_COMMAND[command] if s.flag not in exclude]
    targets: list[Spec | str | None] = [*specs, "roots", None]
    if command != "status":
        targets.append("audit")
    target = draw(st.sampled_from(targets))
    others = draw(st.lists(st.sampled_from([s for s in specs if s is not target]), max_size=3,
                           unique_by=lambda s: s.flag))
    picked = []
    for spec in others:
        setting = _setting(draw, spec, valid_text(spec))
        if setting.form == "value" and spec.is_flag and setting.source == "cli":
            setting = Setting(spec, "cli", "", "on")
        picked.append(setting)
    if isinstance(target, Spec):
        picked.append(_setting(draw, target, values_for(target)))
    picked = list(draw(st.permutations(picked)))
    roots = draw(HOSTILE_ROOTS if target == "roots" else GOOD_ROOTS)
    audit = None if command == "status" else draw(HOSTILE_AUDIT if target == "audit"
                                                  else GOOD_AUDIT)
    steps = draw(st.integers(2, 9))
    return Case(tuple(picked), roots, audit, steps, draw(st.integers(0, steps)))


def expected(case: Case, command: str, *, parse_only: bool = False) -> dict[str, Any]:
    """The oracle: every option's parsed value; RefusedError when the case must be refused."""
    values: dict[str, Any] = {s.name: s.default for s in SPECS_BY_COMMAND[command]}
    for setting in case.settings:
        spec = setting.spec
        if setting.source == "cli" and spec.is_flag:
            if setting.form == "value":
                raise RefusedError("a flag takes no value on the command line")
            values[spec.name] = setting.form == "on"
        elif spec.flag == "--complete-marker":
            names = setting.value.split() if setting.source == "env" else [setting.value]
            if not names:
                raise RefusedError("blank")
            values[spec.name] = tuple(marker_name(name) for name in names)
        else:
            values[spec.name] = spec.parse(setting.value)
    if not parse_only and values.get("layout") == "auto" and any(
            s.spec.flag == "--complete-marker" for s in case.settings):
        raise RefusedError("--complete-marker with --layout auto: each layout has its own")
    if not parse_only and values.get("pressure") == "relieve" and values.get("max_bytes") is None \
            and values.get("min_free") is None:
        raise RefusedError("--pressure relieve without --max-bytes or --min-free")
    how = case.roots[0]
    if how == "env-rel" or how.endswith("-raw"):
        raise RefusedError("blank root, or a relative root from the environment")
    if case.audit is not None:
        source, value = case.audit
        if value not in ("auto", "off", "<abs>") and not (source == "cli" and value == "<rel>"):
            raise RefusedError("audit log")
    return values


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per example (hypothesis reuses a test's fixtures), and the cwd in it."""
    base = Path(tempfile.mkdtemp(prefix="janitor-opts-"))
    old = os.getcwd()
    os.chdir(base)
    try:
        yield base
    finally:
        os.chdir(old)
        shutil.rmtree(base, ignore_errors=True)


def build(base: Path, case: Case) -> Path:
    """steps 0..N, each with STABLE, written first; LOADED_STEP after, as real writers do."""
    tree = base / "ckpt" / "broadcasts"
    tree.mkdir(parents=True)
    for number in range(case.steps + 1):
        make_step(tree, number, files=1, size=8)
    write_marker(tree, case.loaded)
    return tree


def command_line(case: Case, command: str, base: Path, tree: Path,
                 extra: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    argv: list[str] = [command, *extra]
    env: dict[str, str] = {}
    for setting in case.settings:
        spec = setting.spec
        if setting.source == "env":
            env[spec.envvar] = setting.value
        elif spec.is_flag and setting.form == "on":
            argv.append(spec.flag)
        elif spec.is_flag and setting.form == "off":
            argv.append("--no-gate")
        else:
            argv.append(f"{spec.flag}={setting.value}")  # '=': a value may start with '-'
    if case.audit is not None:
        source, value = case.audit
        value = {"<abs>": str(base / "audit.jsonl"), "<rel>": "audit.jsonl"}.get(value, value)
        if source == "env":
            env["JANITOR_AUDIT_LOG"] = value
        else:
            argv.append(f"--audit-log={value}")
    how, raw = case.roots
    root = {"cli-abs": str(tree), "env-abs": str(tree), "cli-rel": os.path.relpath(tree, base),
            "env-rel": os.path.relpath(tree, base)}.get(how, raw)
    if how.startswith("env"):
        env["JANITOR_ROOTS"] = root
    else:
        argv += ["--", root]
    return argv, env


def check_rules(tree: Path, case: Case, values: dict[str, Any], before: dict[str, Any]) -> None:
    """Invariants 1-3 and 9, and keep-last, on the tree after a valid run."""
    left = set(step_numbers(tree))
    every = set(range(case.steps + 1))
    complete = every if "STABLE" in values["complete_markers"] else set()
    if values["dry_run"]:
        assert tree_state(tree) == before, "a dry run changed the tree"
    if values["gate"]:
        assert {n for n in every if n >= case.loaded} <= left, (left, case.loaded)
    if values["interval_to_keep"] is not None:
        assert {n for n in every if n % values["interval_to_keep"] == 0} <= left
    if complete:
        newest = sorted(complete, reverse=True)
        # --keep-last is a soft rule: under --pressure relieve only the newest is hard.
        keep = 1 if values.get("pressure") == "relieve" else values["keep_last"]
        assert set(newest[:keep]) <= left, (left, values["keep_last"])
    else:
        assert left == every, "an incomplete step newer than the newest complete one went"
    for number in left:  # whole: a step is either whole or gone
        assert (tree / f"step_{number}" / "shard-00000.bin").exists()


def outcome(case: Case, command: str, ran: Any, tree: Path, before: dict[str, Any]) -> str:
    try:
        values = expected(case, command)
    except RefusedError:
        assert_one_usage_line(ran, repr(case))
        assert tree_state(tree) == before, "a refused command changed the tree"
        return "refused"
    assert "Traceback" not in ran.stderr, ran.stderr
    assert ran.code != 2, f"valid per the oracle but refused: {case!r}: {ran.stderr!r}"
    if command == "status":
        assert ran.code == 0, ran
        assert tree_state(tree) == before, "status changed the tree"
    else:
        assert ran.code in (0, 3, 4), ran
        check_rules(tree, case, values, before)
    return "valid"


def _label(kind: str) -> None:
    from hypothesis import event
    event(kind)


@settings(SETTINGS, max_examples=250)
@given(case=cases("sweep"))
def test_sweep_hostile_options(case: Case) -> None:
    with scratch() as base:
        tree = build(base, case)
        before = tree_state(tree)
        argv, env = command_line(case, "sweep", base, tree)
        _label(outcome(case, "sweep", run_inprocess(argv, env), tree, before))


@settings(SETTINGS, max_examples=120)
@given(case=cases("status"))
def test_status_hostile_options(case: Case) -> None:
    with scratch() as base:
        tree = build(base, case)
        before = tree_state(tree)
        argv, env = command_line(case, "status", base, tree)
        _label(outcome(case, "status", run_inprocess(argv, env), tree, before))


@settings(SETTINGS, max_examples=1500)
@given(command=st.sampled_from(["sweep", "status", "run"]), data=st.data())
def test_parsed_values_match_the_oracle(command: str, data: st.DataObject) -> None:
    """Parse only (click's make_context, no command runs): every option's parsed value equals the
    oracle's, or the parser refuses with one line exactly when the oracle does. Many examples,
    cheap, and `run` included without starting a daemon."""
    case = data.draw(cases(command))
    with scratch() as base:
        tree = base / "t"
        argv, env = command_line(case, command, base, tree)
        try:
            want: dict[str, Any] | None = expected(case, command, parse_only=True)
        except RefusedError:
            want = None
        with pytest.MonkeyPatch.context() as patch:
            for key in list(os.environ):
                if key.startswith("JANITOR_"):
                    patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            sub = cli.commands[command]
            try:
                ctx = sub.make_context(command, argv[1:])
            except click.UsageError as exc:
                assert want is None, f"refused a valid case {case!r}: {exc.format_message()}"
                assert "\n" not in exc.format_message()
                _label("refused")
                return
    assert want is not None, f"accepted an invalid case {case!r}: {ctx.params}"
    for name, value in want.items():
        got = ctx.params[name]
        if name == "min_free" and got is not None:  # a Budget: compared by what it holds
            got = ("fraction", got.min_free_fraction) if got.min_free_fraction is not None \
                else ("bytes", float(got.min_free_bytes))
        assert got == value, (name, got, value, case)
    assert all(os.path.isabs(root) for root in ctx.params["roots" if command != "sweep"
                                                        else "paths"])
    _label("valid")


ONCE_TRUE = ["1", "true", "TRUE", "yes", "On"]


@st.composite
def run_cases(draw: st.DrawFn) -> tuple[Case, tuple[str, str]]:
    """A `run` case; --once always holds (from the command line or a true JANITOR_ONCE), or its
    variable is invalid: a valid false would start a daemon that never ends."""
    case = draw(cases("run", exclude=("--once",)))
    once = draw(st.one_of(
        st.just(("cli", "")),
        st.tuples(st.just("env"), st.sampled_from(ONCE_TRUE)),
        st.tuples(st.just("env"), hostile_text.map(lambda v: v.replace("\0", "")).filter(
            _oracle_refuses(Spec("--once", "JANITOR_ONCE", parse_bool, False, is_flag=True)))),
    ))
    return case, once


@pytest.mark.slow
@settings(SETTINGS, max_examples=25)
@given(drawn=run_cases())
def test_run_once_hostile_options(drawn: tuple[Case, tuple[str, str]]) -> None:
    case, (once_source, once_value) = drawn
    with scratch() as base:
        tree = build(base, case)
        before = tree_state(tree)
        extra = ("--once",) if once_source == "cli" else ()
        argv, env = command_line(case, "run", base, tree, extra)
        if once_source == "env":
            env["JANITOR_ONCE"] = once_value
        ran = run_janitor(*argv, env=env, timeout_s=60)
        try:
            parse_bool(once_value) if once_source == "env" else None
        except RefusedError:
            assert_one_usage_line(ran, f"JANITOR_ONCE={once_value!r}")
            assert tree_state(tree) == before
            _label("refused")
            return
        # 4: as sweep, --once says a directory was left untouched (no valid marker, say).
        if ran.code in (0, 4) or expected_is_bad(case):
            _label(outcome(case, "run", ran, tree, before))
        else:
            raise AssertionError(f"valid run --once ended {ran.code}: {ran.stderr[-2000:]}")


def expected_is_bad(case: Case) -> bool:
    try:
        expected(case, "run")
    except RefusedError:
        return True
    return False


@pytest.mark.parametrize("command", sorted(SPECS_BY_COMMAND))
def test_the_oracle_covers_every_option_of_the_command(command: str) -> None:
    """A new option (or its JANITOR_* variable) must join the hostile suite: listed here."""
    sub = cli.commands[command]
    options = {(param.opts[0], param.envvar) for param in sub.params
               if isinstance(param, click.Option)}
    options.discard(("--help", None))
    # Left to their own suites: a path (tests/test_audit_hostile.py) and an output switch
    # without a variable (every other test reads it).
    options -= {("--audit-log", "JANITOR_AUDIT_LOG"), ("--json", None),
                ("--layout-file", "JANITOR_LAYOUT_FILE")}  # tests/test_layout_file.py
    covered = {(spec.flag, spec.envvar) for spec in SPECS_BY_COMMAND[command]}
    assert options - covered == set(), "options not in tests/helpers/options.py"
