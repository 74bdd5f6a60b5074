"""The on-disk protocol: step-name grammar, marker format, consumer names, printable names."""

from __future__ import annotations

import os

import pytest

from janitor import protocol
from janitor.protocol import Invalid

BAD_MARKERS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"abc", id="abc"),
    pytest.param(b"-3", id="minus-3"),
    pytest.param(b"12abc", id="12abc"),
    pytest.param(b" 12", id="leading-space"),
    pytest.param("١٢".encode(), id="arabic-indic-digits"),
    pytest.param(b"1" * 25, id="25-digits"),
    pytest.param(b"1" * 20, id="20-digits"),
    pytest.param(b"012", id="leading-zero"),
    pytest.param(b"12\n\n", id="two-newlines"),
    pytest.param(b"\n", id="only-newline"),
    pytest.param(b"12\r\n", id="crlf"),
    pytest.param(b"12 ", id="trailing-space"),
    pytest.param(b"+12", id="plus-sign"),
    pytest.param(b"1_000", id="underscore"),
    pytest.param(b"\xff\xfe", id="invalid-utf8"),
    pytest.param(b"12\x00", id="nul"),
    pytest.param("\uff11\uff12".encode(), id="fullwidth-digits"),
]

GOOD_MARKERS = [
    (b"0", 0), (b"12", 12), (b"12\n", 12), (b"0\n", 0),
    (b"9" * 19, int("9" * 19)), (b"9" * 19 + b"\n", int("9" * 19)),
]


@pytest.mark.parametrize("data", BAD_MARKERS)
def test_bad_marker_is_invalid_with_a_reason(data: bytes) -> None:
    result = protocol.parse_marker(data)
    assert isinstance(result, Invalid), result
    assert result.reason
    assert "\n" not in result.reason


@pytest.mark.parametrize(("data", "value"), GOOD_MARKERS)
def test_good_marker_parses(data: bytes, value: int) -> None:
    assert protocol.parse_marker(data) == value


@pytest.mark.parametrize("step", [0, 1, 12, 10**18, int("9" * 19)])
def test_format_marker_round_trips(step: int) -> None:
    assert protocol.parse_marker(protocol.format_marker(step)) == step


def _surrogate(raw: bytes) -> str:
    return os.fsdecode(raw)


BAD_NAMES = [
    "step_01", "step_00", "step_1.tmp", "step_", "step_-1", "STEP_3", "Step_3", "step_+1",
    "step_ 1", "step_1 ", "step_١٢", "step_\uff11", "step_1e3", "step_0x10", "step_1_2",
    "step__1", "step_" + "1" * 20, "step_" + "1" * 25, "step_1\n", "step_\n1", "step_1\nstep_2",
    _surrogate(b"step_1\xff"), _surrogate(b"step_\xff"), _surrogate(b"\xffstep_1"), "step",
    "steps_1", ".step_1", "step_1/",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_foreign_step_names_are_rejected_with_a_reason(name: str) -> None:
    result = protocol.parse_step_name(name)
    assert isinstance(result, Invalid), result
    assert result.reason


@pytest.mark.parametrize(("name", "number"), [
    ("step_0", 0), ("step_1", 1), ("step_10", 10), ("step_" + "9" * 19, int("9" * 19)),
])
def test_canonical_step_names_parse(name: str, number: int) -> None:
    assert protocol.parse_step_name(name) == number
    assert protocol.step_name(number) == name


@pytest.mark.parametrize("bad", [-1, 10**19, True, 1.0, "1"])
def test_step_name_refuses_non_steps(bad: object) -> None:
    with pytest.raises(ValueError, match="step number"):
        protocol.step_name(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "expected"), [
    ("LOADED_STEP", ""),
    ("LOADED_STEP.eval", "eval"),
    ("LOADED_STEP.uploader-2", "uploader-2"),
    ("LOADED_STEP.tmp", None),
    ("LOADED_STEP.x.tmp", None),
    ("LOADED_STEP.eval.tmp", None),
    ("LOADED_STEP..hidden", None),
    ("LOADED_STEP.", Invalid("'LOADED_STEP.' names no consumer")),
    ("LOADED_STEPS", None),
    ("LOADED_STEP_eval", None),
    ("loaded_step", None),
    ("step_3", None),
    ("STABLE", None),
])
def test_consumer_of(name: str, expected: str | Invalid | None) -> None:
    assert protocol.consumer_of(name) == expected


@pytest.mark.parametrize("consumer", ["x.tmp", ".hidden", "tmp", "a/b", "a\0b"])
def test_marker_name_refuses_names_that_are_not_consumers(consumer: str) -> None:
    with pytest.raises(ValueError, match="consumer name"):
        protocol.marker_name(consumer)


@pytest.mark.parametrize("consumer", [None, "", "eval", "uploader"])
def test_marker_name_round_trips_through_consumer_of(consumer: str | None) -> None:
    assert protocol.consumer_of(protocol.marker_name(consumer)) == (consumer or "")


def test_nothing_the_janitor_creates_looks_like_a_step() -> None:
    for name in (protocol.TRASH_DIR, protocol.LOCK_FILE, protocol.STAGING_PREFIX + "x",
                 protocol.LOADED_MARKER):
        assert not protocol.looks_like_step(name)


@pytest.mark.parametrize(("name", "expected"), [
    ("step_1", "step_1"),
    ("step_١٢", "step_١٢"),
    ("step_1\n", "step_1\\n"),
    ("a\tb", "a\\tb"),
    (_surrogate(b"step_\xff"), "step_\\xff"),
    # Each unprintable character escaped alone: the invalid byte reads `\xff` as above.
    (_surrogate(b"\xff\n"), "\\xff\\n"),
])
def test_printable(name: str, expected: str) -> None:
    shown = protocol.printable(name)
    assert shown == expected
    assert shown.isprintable()
    assert "\n" not in shown
