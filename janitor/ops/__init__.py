"""One-shot operations over managed directories, shared by `janitor sweep` and the daemon.

`managed` holds one directory open and runs scan, plan and execute against that fd (the single
executor), `audit` writes the deletion trail before each rename and `audit_verify` replays it,
`sweep` and `status` are the one-pass commands' work, and `report` turns results into text and
JSON. Built on janitor.fs (the system calls) and janitor.policy (the decisions); the command line
(janitor.cli) and the daemon sit above. Import the modules themselves; this package re-exports
nothing.
"""
