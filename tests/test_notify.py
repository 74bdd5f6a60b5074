"""sd_notify messages arrive byte-exact on real AF_UNIX datagram sockets, paced and optional."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from janitor.daemon.notify import Notifier


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to a filesystem path, as systemd creates it."""
    address = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)  # a missing message fails the test instead of hanging it
    yield address, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket in the abstract namespace; NOTIFY_SOCKET spells it with a leading '@'."""
    name = f"ckpt-janitor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


def assert_nothing_pending(sock: socket.socket) -> None:
    """Datagrams are queued synchronously by sendto, so an empty queue now means none was sent."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # a socket with a timeout would wait despite MSG_DONTWAIT
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(timeout)


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_ready_status_and_stopping_bytes(which: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(which)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    notifier.ready("watching 3 directories")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 3 directories"
    notifier.status("deleted 2 steps\nreclaimed 4 GB")
    assert sock.recv(4096) == b"STATUS=deleted 2 steps reclaimed 4 GB"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_watchdog_is_paced_at_half_of_watchdog_usec(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval_s == 5.0

    assert notifier.maybe_watchdog(100.0)  # the first successful pass pings at once
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert not notifier.maybe_watchdog(104.9)
    assert_nothing_pending(sock)
    assert notifier.maybe_watchdog(105.0)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert not notifier.maybe_watchdog(105.1)
    assert_nothing_pending(sock)


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}
    notifier = Notifier.from_env(env, pid=4242)
    assert notifier.watchdog_interval_s is None
    assert not notifier.maybe_watchdog(100.0)
    assert_nothing_pending(sock)
    # Without WATCHDOG_PID the watchdog is ours.
    assert Notifier.from_env({"WATCHDOG_USEC": "3000000"}).watchdog_interval_s == 1.5


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_missing_or_invalid_watchdog_usec_means_no_watchdog(usec: str) -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": usec}).watchdog_interval_s is None


def test_does_nothing_when_notify_socket_is_unset() -> None:
    env = {"WATCHDOG_USEC": "10000000"}
    notifier = Notifier.from_env(env)
    assert not notifier.enabled
    with capture_logs() as logs:
        notifier.ready("up")
        notifier.status("fine")
        assert not notifier.maybe_watchdog(1.0)
        notifier.stopping()
    assert logs == []
    assert env == {"WATCHDOG_USEC": "10000000"}  # the environment is left as found


def test_send_errors_are_logged_once_and_never_raise(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        notifier.ready("up")
        notifier.status("still up")
        notifier.stopping()
    assert [entry["event"] for entry in logs] == ["notify_failed"]
    assert logs[0]["log_level"] == "warning"


def test_unsupported_address_is_ignored_with_a_warning() -> None:
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert logs == [{"event": "notify_socket_unsupported", "address": "vsock:2:1234",
                     "log_level": "warning"}]
