"""The janitor's exit codes, documented in the README; scripts and supervisors rely on them."""

NOTHING_TO_DO = 0  # every directory was fine and nothing was (or would be) deleted
USAGE = 2  # a bad flag, value or path; nothing was done
DELETED = 3  # at least one step was deleted (with --dry-run: would be)
REFUSED = 4  # a directory was left untouched because the janitor was unsure (marker, lock, path)
ERROR = 5  # an operation failed (I/O error, unwritable tree); nothing unsafe was done
EXIT_OK = 0  # the daemon stopped cleanly (SIGTERM, SIGINT, --once, --exit-with-pid)


def worst(codes: list[int]) -> int:
    """The code that tells the most: error, usage, refused, deleted, then nothing to do."""
    for code in (ERROR, USAGE, REFUSED, DELETED):
        if code in codes:
            return code
    return NOTHING_TO_DO
