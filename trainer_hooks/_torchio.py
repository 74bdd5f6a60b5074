"""torch.save and torch.load through file objects, with torch imported only when called.

The janitor daemon imports nothing from here; keeping torch out of module import time is what
lets `import trainer_hooks` work on a machine without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, cast


class _ErrorRecordingWriter:
    """A write-only file wrapper that remembers the first OSError the real file raised.

    torch.save reports a failed write (ENOSPC, EIO) as a RuntimeError about stream positions; the
    recorded OSError lets save_step raise what actually happened.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise

    def flush(self) -> None:
        self._file.flush()


def torch_save(obj: Any, path: Path) -> None:
    """torch.save `obj` to a new file at `path`; a failed write raises the OSError behind it."""
    import torch  # lazy: trainer_hooks must import without torch

    with path.open("xb") as file:
        writer = _ErrorRecordingWriter(file)
        try:
            torch.save(obj, cast(IO[bytes], writer))  # torch needs only write and flush
        except RuntimeError as exc:
            if writer.error is not None:
                raise writer.error from exc
            raise


def torch_load(fd: int, map_location: Any = None) -> Any:
    """torch.load (weights_only=True) from the open file descriptor `fd`, which it takes over.

    Reading through an fd opened before loading means a step deleted mid-load (by a cleaner that
    ignores LOADED_STEP) still reads whole: the unlinked file stays readable through the fd.
    """
    import torch  # lazy: trainer_hooks must import without torch

    with os.fdopen(fd, "rb") as file:
        return torch.load(file, map_location=map_location, weights_only=True)
