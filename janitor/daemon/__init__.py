"""`janitor run`, the daemon, one module per job.

- `config`: what it was asked to do (DaemonConfig) and how it fails to start;
- `dirty`: the work marked by watcher threads, the poll and the timer, taken by the loop;
- `fleet`: the managed directories, the directories on the way down, their watch modes;
- `recorder`: each pass's logs and metrics, each fact once;
- `loop`: the Daemon: lifecycle, signals, heartbeat, the loop and its passes.

The passes themselves are `ops.incremental` (a directory's index) over `ops.managed` (the one
executor, shared with `janitor sweep`).
"""

from janitor.daemon.config import DaemonConfig, StartupError
from janitor.daemon.loop import Daemon

__all__ = ["Daemon", "DaemonConfig", "StartupError"]
