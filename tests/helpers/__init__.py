"""The helpers every test builds on, one module per job (import from the module, e.g.
`from helpers.tree import build_tree, step_numbers`; this package re-exports nothing):

- `wait`: `wait_until`, the one way the tests wait (a condition polled with a deadline).
- `tree`: building checkpoint trees (steps, markers) and reading them back (`step_numbers`,
  `tree_state`, `trash_names`).
- `run`: the real `janitor` console script in a subprocess (`run_janitor`), its environment, and
  running as uid 65534.
- `daemon`: `janitor run` processes whose JSON log lines are parsed on a reader thread, their
  metrics and inotify use, a stand-in for systemd's notify socket, and the daemon tests' marker
  publishing.
- `safety`: the proof-of-safety suite: steps checked whole against a manifest, durable marker
  publishing, a model of what the policy must keep, audit records, mounts, loading a bench.
- `hooks`: the trainer_hooks tests' checker, and the child writer they SIGKILL (run as
  `python -m helpers.hooks`).
- `options`: `janitor` run in-process, and an oracle of what every option accepts.
- `trainer_trees`: trees real trainers write (a Hugging Face Trainer run, torchtitan's DCP
  folders, an Orbax CheckpointManager), their reloaders, fixtures of Megatron-LM, verl and
  DeepSpeed trees from their documented formats, and prime-rl's broadcast handshake.

pytest finds this package because tests/ (no __init__.py, a conftest.py) is put on sys.path by
its rootdir-relative `prepend` import mode; bench/faults.py puts tests/ on sys.path itself.
"""
