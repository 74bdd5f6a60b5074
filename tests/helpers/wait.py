"""Waiting on a condition with a deadline: the one way the tests wait (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str,
               interval_s: float = 0.005) -> Any:
    """Poll `condition` until it returns something truthy, and return that; fail with `what`
    after `timeout_s`. The one way the tests wait (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
