"""The filesystem layer: every system call the janitor makes on a managed tree lives here.

Opening reserved names and checking what the kernel handed back (`reserved`), the one bounded
fd-based walk (`walk`) and what it measures (`sizes`), reading a directory into a Snapshot
(`scan`), renaming into the trash and reclaiming it (`reaper`), the one-deleter lock (`lock`),
mounts (`mounts`), which roots are allowed and where the managed directories are (`paths`), and
the idle priority of reclaim threads (`priority`).

It reads and writes the values of janitor.model and the names of janitor.protocol, and never
decides anything: what to delete is janitor.policy's (pure, no I/O), and the operations that
combine the two are in janitor.ops. Import the modules themselves; this package re-exports
nothing.
"""
