"""trainer_hooks: the trainer's and the consumer's side of the ckpt-janitor protocol.

A trainer publishes each step atomically, so a reader or the janitor never sees half a step:

    from trainer_hooks import save_step, staged_step
    save_step(broadcasts, step, model.state_dict())          # torch.save, STABLE last
    with staged_step(ckpts, step, complete_marker=".metadata") as tmp:
        torch.distributed.checkpoint.save(state, checkpoint_id=tmp)

A consumer loads the newest complete step and, once *all* its servers have loaded it, says so:

    from trainer_hooks import wait_for_step_newer_than, load_step, mark_loaded
    step = wait_for_step_newer_than(broadcasts, last, timeout_s=600)
    weights = load_step(broadcasts, step)
    mark_loaded(broadcasts, step)                            # the janitor may delete below it

A trainer that must not die of a full disk while a consumer is stalled waits for room first:

    wait_for_headroom(broadcasts)           # or save_step(..., wait_for_headroom=True)

torch is imported only inside the functions that need it, so `import trainer_hooks` works on a
machine without torch. The rules these functions follow are in docs/protocol.md.
"""

from __future__ import annotations

from .consume import load_step, newest_complete_step, wait_for_step_newer_than
from .headroom import HeadroomTimeout, wait_for_headroom
from .markers import mark_loaded, mark_receiver_ready
from .publish import save_step, staged_step

__all__ = [
    "HeadroomTimeout",
    "load_step",
    "mark_loaded",
    "mark_receiver_ready",
    "newest_complete_step",
    "save_step",
    "staged_step",
    "wait_for_headroom",
    "wait_for_step_newer_than",
]
