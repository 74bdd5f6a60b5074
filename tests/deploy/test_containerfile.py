"""What can be checked of the Containerfile without an engine or a registry (neither exists here).

The image's configuration (ENV, ENTRYPOINT, STOPSIGNAL, HEALTHCHECK) is read from the Containerfile
and exercised against the real daemon on the host: the entrypoint starts with the image's
environment, the exact HEALTHCHECK command reports healthy, and the stop signal ends it with exit 0
within 2 s. The base image, the pip install inside it and USER are not exercised: that needs a
build (`podman build --format docker -f Containerfile .`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nspawn_harness import REPO, wait_for

pytestmark = pytest.mark.slow


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (REPO / "Containerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    result: list[tuple[str, str]] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            result = []  # a new stage: only the last one is the image
        result.append((word.upper(), rest.strip()))
    return result


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def only(word: str) -> str:
    found = [rest for w, rest in instructions() if w == word]
    assert len(found) == 1, f"{word}: {found}"
    return found[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_image_config_runs_the_daemon_healthcheck_and_stop(tmp_path: Path) -> None:
    entrypoint = json.loads(only("ENTRYPOINT"))
    assert entrypoint == ["janitor", "run"]
    assert only("STOPSIGNAL") == "SIGTERM"
    assert re.fullmatch(r"\d+:\d+", only("USER")), "USER must be numeric for runAsNonRoot"
    assert only("USER").split(":")[0] != "0"
    healthcheck = only("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert command[0] == "python"

    # The image's environment, with its two paths moved into the test's temp dir and the port
    # made free: what is left (log format, metrics on 0.0.0.0) is as the image has it.
    env = image_env()
    port = free_port()
    tree = tmp_path / "checkpoints"
    (tree / "run" / "broadcasts").mkdir(parents=True)
    assert env["JANITOR_ROOTS"] == "/checkpoints"
    assert env["JANITOR_METRICS_ADDR"] == "0.0.0.0:9464"
    env |= {"JANITOR_ROOTS": str(tree), "JANITOR_METRICS_ADDR": f"127.0.0.1:{port}",
            "STATE_DIRECTORY": str(tmp_path / "state")}
    (tmp_path / "state").mkdir()
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")}, **env}

    log_path = tmp_path / "janitor.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(entrypoint, env=run_env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        def probe() -> int:
            return subprocess.run([sys.executable, *command[1:]], env=run_env,
                                  capture_output=True, timeout=10, check=False).returncode

        def healthy() -> bool:
            if daemon.poll() is not None:
                pytest.fail(f"daemon exited {daemon.returncode}: {log_path.read_text()[-3000:]}")
            return probe() == 0

        wait_for("the HEALTHCHECK command to pass", healthy, 30, interval=0.2)
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        for line in lines:
            assert isinstance(json.loads(line), dict), line  # JANITOR_LOG_FORMAT=json

        sent = time.monotonic()
        daemon.send_signal(getattr(signal, only("STOPSIGNAL")))
        code = daemon.wait(timeout=10)
        assert code == 0, log_path.read_text()[-3000:]
        assert time.monotonic() - sent <= 2.0
        assert probe() != 0, "the HEALTHCHECK passes with no daemon running"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
