"""`janitor run`, the daemon, one module per job.

- `config`: what it was asked to do (DaemonConfig) and how it fails to start;
- `dirty`: the work marked by watcher threads, the poll and the timer, taken by the loop;
- `fleet`: the managed directories, the directories on the way down, their watch modes;
- `recorder`: each pass's logs and metrics, each fact once;
- `loop`: the Daemon: lifecycle, signals, heartbeat, the loop and its passes;
- beside them the services the loop uses: `watch` (inotify through watchdog), `reclaimer`
  (freeing trashed bytes at idle priority), `metrics`, `health_http`, `notify` (systemd).

The passes themselves are `ops.incremental` (a directory's index) over `ops.managed` (the one
executor, shared with `janitor sweep`). `Daemon` is imported on first use, so a command that
needs only `health_http.parse_addr` does not load the watcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from janitor.daemon.config import DaemonConfig, StartupError

if TYPE_CHECKING:
    from janitor.daemon.loop import Daemon

__all__ = ["Daemon", "DaemonConfig", "StartupError"]


def __getattr__(name: str) -> Any:
    if name == "Daemon":
        from janitor.daemon.loop import Daemon

        return Daemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
