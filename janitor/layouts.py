"""Layouts: how a trainer names its steps, marks one complete, and points at the one to keep.

A layout is the step-name grammar (a literal prefix and suffix around the step number; everything
else is foreign, as it always was), the completion files (any of them inside a step makes it
complete), trackers (files in the managed directory that a trainer writes after a save: the step
they name is kept, and every step at or below it is complete), a "best" pointer inside the newest
complete step (Hugging Face's `best_model_checkpoint`), temporaries (names a trainer writes a step
under before it is final: in progress, or abandoned after --partial-grace), and a default
progress source. `step` is the janitor's own protocol, exactly as before layouts existed.

Pure: parsing returns a value or an Invalid reason. Where each format is defined is cited on its
layout (docs/layouts.md has the same, for people).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from janitor import protocol
from janitor.dependencies import DEPENDS_ON, SPARSE_BASE, DependencySource
from janitor.protocol import Invalid

TrackerValue = Literal["number", "name"]


@dataclass(frozen=True, slots=True)
class Tracker:
    """A file in the managed directory naming the latest complete step: as its number
    (`number`, e.g. Megatron's `100`), or as its directory name (`name`, DeepSpeed's
    `global_step100`). A trainer writes it after the save finished, so every step at or below it
    is complete; the step it names is kept (the one a restart resumes from)."""

    filename: str
    value: TrackerValue = "number"


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    prefix: str
    suffix: str = ""
    # None: canonical decimal (no leading zero); k: exactly k digits, zero padded (Megatron).
    digits: int | None = None
    complete: tuple[str, ...] = (protocol.DEFAULT_COMPLETE_MARKER,)
    trackers: tuple[Tracker, ...] = ()
    # (file inside the newest complete step, JSON key holding a path whose last part names a step)
    best: tuple[str, str] | None = None
    temporary: tuple[str, ...] = ()  # regular expressions, matched against whole names
    progress: Literal["loaded-step", "receiver-ready"] = "loaded-step"
    # Files inside a step naming the steps it depends on (kept while it is): DEPENDS_ON in
    # every layout, and a sparse patch's manifest in prime-rl's broadcasts.
    depends: tuple[DependencySource, ...] = (DEPENDS_ON,)
    source: str = ""  # where this format is defined (a project's file or document)
    _temporary: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_temporary",
                           tuple(re.compile(p, re.ASCII | re.DOTALL) for p in self.temporary))

    # ---- names ------------------------------------------------------------------------------

    def parse(self, name: str) -> int | Invalid | None:
        """N for this layout's name of step N; Invalid for a name that claims to be a step (has
        the prefix and suffix) but is not canonical; None for any other name."""
        if not self.claims(name):
            return None
        body = name[len(self.prefix): len(name) - len(self.suffix)]
        if self.digits is None:
            number = protocol.parse_step_number(body)
            if isinstance(number, Invalid):
                return Invalid(f"step number: {number.reason}")
            return number
        if len(body) != self.digits or not (body.isascii() and body.isdigit()):
            return Invalid(f"step number: not exactly {self.digits} ASCII digits")
        return int(body)

    def claims(self, name: str) -> bool:
        """Whether `name` has the shape of a step name here (then it is a step or foreign)."""
        if len(name) < len(self.prefix) + len(self.suffix) or self.is_temporary(name):
            return False
        if not (name.startswith(self.prefix) and name.endswith(self.suffix)):
            return False
        if self.prefix == "":  # Orbax: a bare number; anything starting with a digit claims
            return name[:1].isdigit()
        return True  # `step_` alone too: a step name without its number is reported

    def name_of(self, number: int) -> str:
        body = str(number) if self.digits is None else f"{number:0{self.digits}d}"
        return f"{self.prefix}{body}{self.suffix}"

    def is_temporary(self, name: str) -> bool:
        return any(p.fullmatch(name) for p in self._temporary)

    def near_miss(self, name: str) -> str | None:
        """Why a name that is almost a step name (the prefix in another case: `STEP_3`) is
        reported as foreign rather than ignored; None for other names."""
        prefix = self.prefix
        if len(prefix) >= 3 and prefix.isascii() and name[: len(prefix)].lower() == \
                prefix.lower() and not name.startswith(prefix):
            case = "lower case" if prefix == prefix.lower() else "case-sensitive"
            return f"not a step name (the prefix is {prefix!r}, {case})"
        return None

    @property
    def reserved(self) -> frozenset[str]:
        """File names this layout reads in the managed directory (never steps, never deleted)."""
        return frozenset(t.filename for t in self.trackers)

    def tracked_step(self, filename: str, data: bytes) -> int | Invalid:
        """The step a tracker file's content names."""
        tracker = next(t for t in self.trackers if t.filename == filename)
        body = data[:-1] if data.endswith(b"\n") else data
        try:
            text = body.decode("ascii").strip()
        except UnicodeDecodeError:
            return Invalid("not ASCII")
        if tracker.value == "name":
            number = self.parse(text)
            if number is None:
                return Invalid(f"content {text!r} names no step of this layout")
            return number
        number = protocol.parse_step_number(text)
        if isinstance(number, Invalid):
            return Invalid(f"content {text!r}: {number.reason}")
        return number

    def best_step(self, value: object) -> int | Invalid | None:
        """The step the `best` pointer's JSON value names (None: no best recorded)."""
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            return Invalid(f"{value!r} is not a checkpoint path")
        last = value.rstrip("/").rsplit("/", 1)[-1]
        number = self.parse(last)
        if number is None:
            return Invalid(f"{protocol.printable(last)!r} names no step of this layout")
        return number


# ---- the built-in layouts ---------------------------------------------------------------------

STEP = Layout("step", protocol.STEP_PREFIX, source="docs/protocol.md (this project)")

BUILT_IN: dict[str, Layout] = {layout.name: layout for layout in (
    STEP,
    Layout("prime-rl-broadcasts", protocol.STEP_PREFIX, complete=(protocol.FINISHED_MARKER,),
           progress="receiver-ready", depends=(DEPENDS_ON, SPARSE_BASE),
           source="prime-rl, src/prime_rl/transports/weights/base.py (PR #3357: "
                  "WeightSender.broadcast touches .sender_ready, waits for the receiver's "
                  ".receiver_ready, touches .started, writes, touches .finished, then removes "
                  "the steps below N-1)"),
    Layout("prime-rl-checkpoints", protocol.STEP_PREFIX,
           source="prime-rl, src/prime_rl/trainer/ckpt.py: checkpoints/step_N/ holding trainer/, "
                  "orchestrator/ and, once converted, weights/; STABLE when complete (read by "
                  "orchestrator/utils.py get_weight_dir)"),
    Layout("hf", "checkpoint-", complete=("trainer_state.json",),
           best=("trainer_state.json", "best_model_checkpoint"),
           temporary=(r"tmp-checkpoint-[0-9]+",),
           source="transformers, src/transformers/trainer.py (_save_checkpoint: "
                  "PREFIX_CHECKPOINT_DIR = \"checkpoint\", trainer_state.json written last, "
                  "best_model_checkpoint in TrainerState; tmp-checkpoint-N in 4.36-4.38)"),
    Layout("torchtitan", "step-", complete=(".metadata", "model.safetensors.index.json"),
           source="torchtitan, torchtitan/components/checkpointer/dcp.py (_create_checkpoint_id: "
                  "step-{N}; _find_load_step takes a folder holding .metadata, which torch DCP "
                  "writes last, or model.safetensors.index.json)"),
    Layout("orbax", "", complete=("commit_success.txt", "_CHECKPOINT_METADATA"),
           temporary=(r"[0-9]+\.orbax-checkpoint-tmp(-.*)?",),
           source="orbax-checkpoint, orbax/checkpoint/_src/path/atomicity.py, "
                  "atomicity_types.py and step.py "
                  "(N/ directories, commit_success.txt or _CHECKPOINT_METADATA when finalized, "
                  "N.orbax-checkpoint-tmp (older releases: -<timestamp>) while writing)"),
    Layout("megatron", "iter_", digits=7, complete=(),
           trackers=(Tracker("latest_checkpointed_iteration.txt"),),
           source="Megatron-LM, megatron/training/checkpointing.py (get_checkpoint_name: "
                  "iter_{:07d}; get_checkpoint_tracker_filename: "
                  "latest_checkpointed_iteration.txt, written after the save)"),
    Layout("verl", "global_step_", complete=(),
           trackers=(Tracker("latest_checkpointed_iteration.txt"),),
           source="verl, verl/trainer/ppo/ray_trainer.py (_save_checkpoint: global_step_{N}/, "
                  "then latest_checkpointed_iteration.txt written last in default_local_dir; "
                  "not written with async_save)"),
    Layout("deepspeed", "global_step", complete=(), trackers=(Tracker("latest", "name"),),
           source="DeepSpeed, deepspeed/runtime/engine.py (save_checkpoint: tag "
                  "global_step{N} by default; the file `latest` holds the tag, written after "
                  "the save)"),
)}

AUTO = "auto"
NAMES = (*BUILT_IN, AUTO)
# `--layout auto`: a placeholder that claims no name; each managed directory's layout is
# detected when it is opened (janitor.fs.detect), and discovery looks for every layout's steps.
AUTO_LAYOUT = Layout(AUTO, "\0", complete=(), source="detected per managed directory")


def searched(layout: Layout) -> tuple[Layout, ...]:
    """The layouts whose steps make a directory a managed one, for discovery."""
    return tuple(BUILT_IN.values()) if layout.name == AUTO else (layout,)
