"""Strict option parsing (janitor.cli.options): every parameter of every command uses a strict type,
click hands boolean flags the raw environment string, and the bad values the attacker found are
one usage line each."""

# Lookalike digits and letters are the point of these tests:
# ruff: noqa: RUF001

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from helpers.options import assert_one_usage_line, run_inprocess
from helpers.run import run_janitor
from helpers.tree import build_tree, step_numbers

from janitor.cli import cli
from janitor.cli import options as strict


def walk(command: click.Command, path: str = "janitor") -> Iterator[tuple[str, click.Parameter]]:
    """Every parameter of `command` and of every subcommand below it."""
    for param in command.params:
        yield path, param
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, f"{path} {name}")


def is_pure_flag(param: click.Parameter) -> bool:
    """--help and --version: a flag that takes no value and reads no variable."""
    return (isinstance(param, click.Option) and param.is_flag and not param.envvar
            and not param.expose_value)


ALL_PARAMS = list(walk(cli))


def test_the_walk_sees_every_command() -> None:
    commands = {path for path, _ in ALL_PARAMS}
    assert {"janitor", "janitor sweep", "janitor run", "janitor status",
            "janitor audit verify"} <= commands


@pytest.mark.parametrize(("path", "param"), ALL_PARAMS,
                         ids=[f"{p}:{q.name}" for p, q in ALL_PARAMS])
def test_every_parameter_is_strict(path: str, param: click.Parameter) -> None:
    if is_pure_flag(param):
        return
    assert isinstance(param.type, (*strict.STRICT_TYPES, click.Choice)), (
        f"{path} {param.name}: type {param.type!r} is not one of janitor.cli.options' strict types")
    if isinstance(param.type, click.Choice):
        assert param.type.case_sensitive, f"{path} {param.name}: a Choice must be exact"
    assert isinstance(param, strict.StrictOption | strict.StrictArgument), (
        f"{path} {param.name}: declare it with janitor.cli.options.option/argument, so its "
        "environment variable is read strictly")
    if isinstance(param, click.Option) and param.is_flag:
        # click passes a flag's variable to the type only for a BoolParamType (else it reads it
        # itself, leniently): the strict bool must be that subclass.
        assert isinstance(param.type, strict.StrictBool), f"{path} {param.name}"
        assert param.is_bool_flag
    if isinstance(param.type, strict.StrictInt | strict.StrictFloat):
        assert isinstance(param, click.Option)
        assert f"Range: {param.type.range_text}." in (param.help or ""), (
            f"{path} {param.name}: the range belongs in --help")


ENV_PARAMS = [(p, q) for p, q in ALL_PARAMS if q.envvar]


@pytest.mark.parametrize("value", ["", " ", "\t"])
@pytest.mark.parametrize(("path", "param"), ENV_PARAMS,
                         ids=[f"{p}:{q.envvar}" for p, q in ENV_PARAMS])
def test_every_variable_refuses_blank(path: str, param: click.Parameter, value: str,
                                      tmp_path: Path) -> None:
    """A set but blank variable is refused, never read as 'unset' or as false. Parse only (no
    command runs): `run` would otherwise start a daemon if this ever regressed."""
    assert isinstance(param.envvar, str)
    command_path = path.split()[1:]
    command: click.Command = cli
    for name in command_path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    args = [] if param.envvar == "JANITOR_ROOTS" else [str(tmp_path)]
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("JANITOR_")]:
            patch.delenv(key)
        patch.setenv(param.envvar, value)
        with pytest.raises(click.BadParameter) as caught:
            command.make_context(command.name or "", args)
    message = caught.value.format_message()
    assert f"environment variable {param.envvar}" in message, message
    assert "\n" not in message


def test_the_strict_bool_really_sees_the_flag_variable(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """click 8.5 hands a BoolParamType flag the raw variable; check the strict type is called with
    it (a regression to click's own reading would strip ' ' to '' and call it False)."""
    seen: list[object] = []
    original = strict.StrictBool.convert

    def spy(self: strict.StrictBool, value: object, param: click.Parameter | None,
            ctx: click.Context | None) -> bool:
        seen.append(value)
        return original(self, value, param, ctx)

    monkeypatch.setattr(strict.StrictBool, "convert", spy)
    ran = run_inprocess(["sweep", "--dry-run", str(tmp_path)], {"JANITOR_GATE": " "})
    line = assert_one_usage_line(ran, "JANITOR_GATE=' '")
    assert " " in seen
    assert "environment variable JANITOR_GATE" in line and "' '" in line


def test_gate_blank_no_longer_turns_the_gate_off(tmp_path: Path) -> None:
    """The attack: JANITOR_GATE=' ' deleted steps at or above LOADED_STEP."""
    tree = build_tree(tmp_path / "t", 6, loaded=2)
    for value in (" ", "\t", "", "nope", "ja"):
        ran = run_inprocess(["sweep", "--partial-grace", "0", str(tree)], {"JANITOR_GATE": value})
        assert_one_usage_line(ran, f"JANITOR_GATE={value!r}")
        assert step_numbers(tree) == [1, 2, 3, 4, 5, 6]
    for value, kept in (("FALSE", [6]), ("On", [2, 3, 4, 5, 6])):
        fresh = build_tree(tmp_path / value, 6, loaded=2)
        ran = run_inprocess(["sweep", "--partial-grace", "0", str(fresh)], {"JANITOR_GATE": value})
        assert ran.code == 3, ran
        assert step_numbers(fresh) == kept


@pytest.mark.parametrize(("kind", "good", "bad"), [
    (strict.BOOL, {"true": True, "FALSE": False, "1": True, "0": False, "Yes": True, "no": False,
                   "ON": True, "off": False},
     ["", " ", "\t", "t", "f", "y", "n", " true", "true ", "2", "ｔrue", "yeſ", "None"]),
    (strict.KEEP_LAST, {"1": 1, "1000000": 1000000, "007": 7},
     ["0", "-1", "1000001", "", " 1", "1 ", "+5", "1_000", "١٢", "１２", "1.0", "1e3", "0x10",
      "9" * 400, "1,000", "\t"]),
    (strict.EXIT_WITH_PID, {"1": 1, "4194304": 4194304},
     ["-1", "0", "4194305", "99999999999999999999999"]),
    (strict.PARTIAL_GRACE, {"0": 0.0, "600": 600.0, "0.5": 0.5, "31536000": 31536000.0},
     ["nan", "NaN", "inf", "-inf", "1e300", "1e3", "-1", "31536000.1", "", " ", ".5", "5.",
      "1_0", "١٢", "+1", "0x1p3", "9" * 400]),
    (strict.POLL_INTERVAL, {"0.01": 0.01, "3600": 3600.0, "2": 2.0},
     ["0", "0.009", "0.00999999999999999999999", "3600.0000000000000001", "nan"]),
    (strict.RESCAN_INTERVAL, {"0.1": 0.1, "86400": 86400.0}, ["0.09", "86401", "inf"]),
    (strict.MARKER, {"STABLE": "STABLE", ".metadata": ".metadata", ".finished": ".finished"},
     ["", " ", "a/b", "/", ".", "..", "LOADED_STEP", "LOADED_STEP.eval", ".janitor-trash",
      ".janitor.lock", ".janitor-pin", ".receiver_ready", ".janitor-staging.x", "step_3",
      " STABLE", "STABLE\n", "a\0b", "a\tb"]),
    (strict.AUDIT_LOG, {"auto": "auto", "off": "off", "/var/log/a.jsonl": "/var/log/a.jsonl"},
     ["", " ", "OFF", "Auto", " off", "a\0b"]),
])
def test_type_table(kind: click.ParamType, good: dict[str, object], bad: list[str]) -> None:
    for text, value in good.items():
        assert kind.convert(text, None, None) == value, text
    for text in bad:
        with pytest.raises(click.BadParameter) as caught:
            kind.convert(text, None, None)
        assert "\n" not in caught.value.format_message()


def test_metrics_addr_is_strict() -> None:
    assert strict.METRICS_ADDR.convert("9464", None, None) == ("127.0.0.1", 9464)
    assert strict.METRICS_ADDR.convert("[::1]:0", None, None) == ("::1", 0)
    assert strict.METRICS_ADDR.convert("node-3.cluster.local:9464", None, None) == (
        "node-3.cluster.local", 9464)
    for text in ["", " ", " 9464", "9464 ", "host :9464", "١٢", "９４６４", "65536", "-1", "+80",
                 "localhost:", "a\tb:1", "1_000", "::1:80", "ｈost:80",
                 # hosts that are neither an IP literal nor a DNS name (found by hypothesis)
                 "+127.0.0.1:0", "a\"b:1", "-x:1", "999.1.1.1:80", "x..y:80"]:
        with pytest.raises(click.BadParameter):
            strict.METRICS_ADDR.convert(text, None, None)


def test_error_names_the_variable_only_when_it_came_from_one(tmp_path: Path) -> None:
    from_cli = assert_one_usage_line(run_inprocess(["sweep", "--keep-last", "x", str(tmp_path)]),
                                     "cli")
    assert "JANITOR_KEEP_LAST" not in from_cli and "'--keep-last'" in from_cli
    from_env = assert_one_usage_line(run_inprocess(["sweep", str(tmp_path)],
                                                   {"JANITOR_KEEP_LAST": "x"}), "env")
    assert "environment variable JANITOR_KEEP_LAST" in from_env
    assert from_env.endswith("(see 'janitor sweep --help')")


def test_relative_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_tree(tmp_path / "tree", 3, loaded=3)
    monkeypatch.chdir(tmp_path)
    line = assert_one_usage_line(run_inprocess(["sweep", "--dry-run"], {"JANITOR_ROOTS": "tree"}),
                                 "JANITOR_ROOTS=tree")
    assert "relative" in line and "JANITOR_ROOTS" in line
    ran = run_inprocess(["sweep", "--dry-run", "--json", "tree"])
    assert ran.code == 3, ran
    assert str(tmp_path / "tree") in ran.stdout  # made absolute against the caller's directory
    ran = run_inprocess(["sweep", "--dry-run"], {"JANITOR_ROOTS": f"{tmp_path / 'tree'}"})
    assert ran.code == 3, ran


def test_relative_audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build_tree(tmp_path / "tree", 3, loaded=3)
    monkeypatch.chdir(tmp_path)
    line = assert_one_usage_line(
        run_inprocess(["sweep", str(tree)], {"JANITOR_AUDIT_LOG": "audit.jsonl"}), "env")
    assert "relative" in line and "JANITOR_AUDIT_LOG" in line
    assert step_numbers(tree) == [1, 2, 3]
    ran = run_inprocess(["sweep", "--partial-grace", "0", "--audit-log", "audit.jsonl",
                         str(tree)])
    assert ran.code == 3, ran
    assert (tmp_path / "audit.jsonl").stat().st_size > 0
    for keyword in ("off", "auto"):
        fresh = build_tree(tmp_path / keyword, 3, loaded=3)
        ran = run_inprocess(["sweep", str(fresh)], {"JANITOR_AUDIT_LOG": keyword})
        assert ran.code == 3, ran


def test_help_shows_every_range() -> None:
    ran = run_inprocess(["run", "--help"])
    text = " ".join(ran.stdout.split())
    for needle in ("1..9999999999999999999", "1..1000000", "0..64", "0..31536000", "1..64",
                   "0.01..3600", "0.1..86400", "1..4194304"):
        assert f"Range: {needle}." in text, needle


@pytest.mark.parametrize("args", [
    ["--exit-with-pid", "-1"], ["--exit-with-pid", "0"], ["--poll-interval", "nan"],
    ["--rescan-interval", "nan"], ["--partial-grace", "inf"], ["--partial-grace", "1e300"],
    ["--metrics-addr", "١٢"],
])
def test_run_reported_bad_values_are_one_line(tmp_path: Path, args: list[str]) -> None:
    """The real console script, as the attacker ran it."""
    ran = run_janitor("run", "--once", *args, tmp_path)
    assert ran.code == 2, ran
    assert len(ran.err_lines) == 1 and ran.err_lines[0].startswith("janitor: error: "), ran
    assert "Traceback" not in ran.stderr
