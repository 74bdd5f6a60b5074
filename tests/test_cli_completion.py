"""Shell completion, as the README tells users to enable it: click's `_JANITOR_COMPLETE`.

Runs the installed console script (the `janitor` beside the interpreter running the tests, i.e.
.venv/bin/janitor), never the module: completion is a property of the entry point and its
program name. The bash case is also driven through a real bash, the way a shell calls it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JANITOR = Path(sys.executable).parent / "janitor"


def complete(mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert JANITOR.is_file(), f"no console script at {JANITOR} (pip install -e .)"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("COMP_", "_JANITOR"))}
    return subprocess.run([str(JANITOR)], env={**environment, "_JANITOR_COMPLETE": mode, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_bash_source_prints_a_completion_function() -> None:
    result = complete("bash_source")
    assert result.returncode == 0, result.stderr
    assert "_janitor_completion() {" in result.stdout
    assert "complete -o nosort -F _janitor_completion janitor" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(("words", "cword", "expected"), [
    ("janitor sw", "1", ["plain,sweep"]),
    ("janitor st", "1", ["plain,status"]),
    ("janitor sweep --dry", "2", ["plain,--dry-run"]),
])
def test_bash_complete_completes_commands_and_options(words: str, cword: str,
                                                      expected: list[str]) -> None:
    result = complete("bash_complete", COMP_WORDS=words, COMP_CWORD=cword)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_a_real_bash_completes_sweep_with_the_sourced_function() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    script = ('eval "$(_JANITOR_COMPLETE=bash_source janitor)"; '
              "COMP_WORDS=(janitor sw); COMP_CWORD=1; _janitor_completion janitor; "
              'printf "%s\\n" "${COMPREPLY[@]}"')
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("COMP_", "_JANITOR"))}
    environment["PATH"] = f"{JANITOR.parent}{os.pathsep}{environment.get('PATH', '')}"
    result = subprocess.run([bash, "--norc", "--noprofile", "-c", script], env=environment,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sweep"], result.stderr


@pytest.mark.parametrize(("mode", "marker"), [
    ("zsh_source", "#compdef janitor"),
    ("fish_source", "complete --no-files --command janitor"),
])
def test_zsh_and_fish_sources(mode: str, marker: str) -> None:
    result = complete(mode)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
