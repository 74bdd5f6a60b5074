"""renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, through ctypes, when the OS has it.

RENAME_EXCHANGE swaps a freshly staged step with the existing `step_N` in one atomic operation, so
a re-published step is never absent, not even for an instant. RENAME_NOREPLACE publishes a new
step without silently replacing one that appeared concurrently. Where renameat2 is missing (not
Linux, old glibc) or the filesystem refuses the flags (EINVAL; some network filesystems), the
callers fall back to plain rename(2), see publish.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_Renameat2 = Callable[[int, bytes, int, bytes, int], int]


def _load_renameat2() -> _Renameat2 | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2  # glibc >= 2.28, musl >= 1.2.4
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def renameat2(src: str, dst: str, dir_fd: int, flags: int) -> bool:
    """Rename `src` to `dst`, both inside `dir_fd`, with renameat2 `flags`.

    Returns True when done, False when renameat2 or these flags are unsupported here (nothing has
    changed on disk then). Raises OSError for every other failure, e.g. FileExistsError for
    RENAME_NOREPLACE onto an existing name.
    """
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code), src, None, dst)
