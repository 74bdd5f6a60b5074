"""What `janitor status` reads from announcing daemons is bounded and never trusted: a peer that
hangs, answers garbage or lies costs status at most its time budget and shows as printable text."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from janitor.fs import presence
from janitor.ops.status import render


def _fake(name: str, reply: bytes | None,
          held: list[socket.socket]) -> tuple[socket.socket, threading.Thread]:
    """A peer on `@ckpt-janitor/<name>` that answers `reply` (None: accepts, never answers,
    keeping the connection in `held`, which the test closes: a socket left to the garbage
    collector would close at a random moment of a later test that counts its fds)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + presence.PREFIX + name)
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if reply is None:
                held.append(conn)  # keep it open, say nothing
                continue
            with conn:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True, name=f"fake-peer-{name}")
    thread.start()
    return sock, thread


@pytest.fixture
def fakes() -> Iterator[list[socket.socket]]:
    """Every socket a test's fake peers made (listening and accepted), closed at teardown, and
    their threads joined."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    for thread in threading.enumerate():
        if thread.name.startswith("fake-peer"):
            thread.join(5)


def test_hanging_garbage_and_lying_peers(fakes: list[socket.socket], tmp_path: Path) -> None:
    st_dir = os.stat(tmp_path)
    lie = {"pid": "1\x1b[2J", "host": "evil\nhost", "directories": [
        {"dev": st_dir.st_dev, "ino": st_dir.st_ino, "role": "active\x07", "watch": "\x1b]0;"}]}
    tag = f"test{os.getpid()}."
    for suffix, reply in (("hang", None), ("garbage", b"\xff{not json"),
                          ("list", b"[1, 2]"), ("lie", json.dumps(lie).encode())):
        fakes.append(_fake(tag + suffix, reply, fakes)[0])
    started = time.monotonic()
    records = presence.peers()
    assert time.monotonic() - started < presence.TOTAL_WAIT_S + 1
    said = presence.roles_for(records, st_dir.st_dev, st_dir.st_ino)
    assert [s["role"] for s in said] == ["active\x07"]
    report = {"path": str(tmp_path), "daemon": {"running": False}, "janitors": said,
              "policy_source": "defaults", "complete_markers": ["STABLE"], "policy": "p",
              "policy_warning": None, "consumers": [], "progress_problem": None,
              "newest_complete": None, "loaded_step": None, "lag_steps": None,
              "decisions": {}, "trash_entries": 0, "trash_bytes": 0, "free_bytes": 0}
    text = "\n".join(render([report]))
    assert all(ch.isprintable() for line in text.splitlines() for ch in line)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["dev", "ino", "role", "watch",
                                                       "directories", "pid", "x"]), inner,
                                      max_size=5),
                    max_leaves=20))
def test_any_record_shape_is_read_without_raising(record: object) -> None:
    records = [record] if isinstance(record, dict) else []
    for said in presence.roles_for(records, 1, 2):  # type: ignore[arg-type]
        assert set(said) == {"pid", "host", "since", "role", "watch"}


def test_an_announcer_serves_its_latest_record_and_vanishes_when_closed() -> None:
    announcer = presence.Announcer()
    try:
        announcer.publish({"pid": os.getpid(), "directories": [{"dev": 1, "ino": 2,
                                                                 "role": "standby"}]})
        mine = [r for r in presence.peers() if r.get("pid") == os.getpid()]
        assert presence.roles_for(mine, 1, 2)[0]["role"] == "standby"
    finally:
        announcer.close()
    assert not [r for r in presence.peers() if r.get("pid") == os.getpid()]
