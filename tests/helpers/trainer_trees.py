"""Checkpoint trees the way real trainers write them, and each library's own way to read them back.

Three trees come from the real libraries, run on CPU in a few seconds and offline: a Hugging Face
`transformers.Trainer` run of a one-layer GPT-2 built from its config (`hf_trainer_run`),
torch.distributed.checkpoint saves into torchtitan's `step-N` folders (`dcp_steps`), and an Orbax
`CheckpointManager` on jax's CPU backend (`orbax_steps`). Their reloaders (`reload_hf`,
`reload_dcp`, `reload_orbax`) raise when a checkpoint does not load, so a test that reloads every
surviving step proves the janitor left whole checkpoints behind.

Megatron-LM, verl and DeepSpeed need GPUs or a cluster to run, so their trees are fixtures built
from the formats their sources define (`megatron_tree`, `verl_tree`, `deepspeed_tree`); each
builder cites the file and function that defines what it writes. Shard files are tiny
`torch.save` dicts: loadable, though not by the trainer itself.

prime-rl's filesystem weight broadcast is a protocol of sentinel files, written here step by step
as its sender and receiver do (`prime_rl_broadcast`, `prime_rl_receive`, `prime_rl_clean`).

The heavy libraries are imported inside the functions that need them: importing this module
costs nothing, and a test module skips cleanly (`pytest.importorskip`) where one is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Never reach for a hub: everything here is built from configs and in-memory data.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# ---- Hugging Face transformers.Trainer ---------------------------------------------------------

# Two token patterns: the run trains on A for HF_A_STEPS steps, then on B, and evaluates on A, so
# eval_loss falls while it learns A and rises once B overwrites it: the best checkpoint is an
# early one, not the last (whatever it is, tests read it from trainer_state.json).
_PATTERN_A = [1, 2, 3, 4, 5, 6, 7, 8] * 2
_PATTERN_B = [9, 10, 11, 12, 13, 14, 15, 16] * 2
HF_A_STEPS = 3


def _tiny_gpt2() -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=64,
                                      n_positions=16, bos_token_id=0,
                                      eos_token_id=0))


def hf_trainer_run(out_dir: Path, steps: int = 5, load_best: bool = True) -> int | None:
    """A real `transformers.Trainer` run writing `out_dir/checkpoint-1` .. `checkpoint-<steps>`
    (save and evaluate every step, no rotation); returns the best step that the newest
    checkpoint's trainer_state.json names (None without load_best)."""
    import torch
    from torch.utils.data import Dataset, IterableDataset
    from transformers import Trainer, TrainingArguments

    def example(ids: list[int]) -> dict[str, Any]:
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)}

    class Train(IterableDataset):  # type: ignore[type-arg]
        """In order, so that step k trains on example k (a map dataset would be shuffled)."""

        def __iter__(self) -> Any:
            for index in range(steps):
                yield example(_PATTERN_A if index < HF_A_STEPS else _PATTERN_B)

    class Eval(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> dict[str, Any]:
            return example(_PATTERN_A)

    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=1,
        per_device_eval_batch_size=2, learning_rate=0.3, lr_scheduler_type="constant",
        save_strategy="steps", save_steps=1, eval_strategy="steps", eval_steps=1,
        save_total_limit=None, load_best_model_at_end=load_best,
        metric_for_best_model="eval_loss", greater_is_better=False, report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0, logging_steps=1)
    Trainer(model=_tiny_gpt2(), args=args, train_dataset=Train(), eval_dataset=Eval()).train()
    return hf_best_step(out_dir / f"checkpoint-{steps}") if load_best else None


def hf_best_step(checkpoint_dir: Path) -> int | None:
    """The step `best_model_checkpoint` names in a checkpoint's trainer_state.json (it holds the
    path the Trainer was given, `<output_dir>/checkpoint-N`: only its last part names the step)."""
    state = json.loads((checkpoint_dir / "trainer_state.json").read_text())
    best = state.get("best_model_checkpoint")
    if best is None:
        return None
    return int(Path(best).name.removeprefix("checkpoint-"))


def reload_hf(checkpoint_dir: Path) -> int:
    """Load a Trainer checkpoint as its users do: the model with `from_pretrained`, the trainer
    state with `TrainerState.load_from_json`, the optimizer state with torch.load. Returns the
    state's global_step (which must be the directory's N); raises if anything does not load."""
    import torch
    from transformers import GPT2LMHeadModel, TrainerState

    model = GPT2LMHeadModel.from_pretrained(checkpoint_dir, local_files_only=True)
    if sum(p.numel() for p in model.parameters()) == 0:
        raise ValueError(f"{checkpoint_dir}: the model has no parameters")
    state = TrainerState.load_from_json(str(checkpoint_dir / "trainer_state.json"))
    torch.load(checkpoint_dir / "optimizer.pt", weights_only=True)
    expected = int(checkpoint_dir.name.removeprefix("checkpoint-"))
    if state.global_step != expected:
        raise ValueError(f"{checkpoint_dir}: trainer state at step {state.global_step}")
    return int(state.global_step)


# ---- torchtitan: torch.distributed.checkpoint in step-N ---------------------------------------

def _dcp_state(step: int) -> dict[str, Any]:
    import torch

    return {"model": {"w": torch.arange(6.0).reshape(2, 3) * step, "b": torch.full((3,), step)},
            "train_state": {"step": torch.tensor(step)}}


def dcp_steps(root: Path, steps: Iterable[int]) -> None:
    """`root/step-N` saved with torch.distributed.checkpoint, one process, no process group: the
    folder names of torchtitan's checkpointer (torchtitan/components/checkpointer/dcp.py,
    `_create_checkpoint_id`: `step-{step}`), complete once DCP wrote `.metadata` (the file
    `_find_load_step` requires), which DCP's `finish` writes after the shards."""
    import warnings

    import torch.distributed.checkpoint as dcp

    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(_dcp_state(step), checkpoint_id=root / f"step-{step}", no_dist=True)


def reload_dcp(step_dir: Path) -> int:
    """`dcp.load` into a fresh state dict; returns the step the checkpoint holds (checked
    against the folder name), raises if it does not load."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    expected = int(step_dir.name.removeprefix("step-"))
    state = _dcp_state(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=step_dir, no_dist=True)
    if int(state["train_state"]["step"]) != expected or not torch.equal(
            state["model"]["w"], _dcp_state(expected)["model"]["w"]):
        raise ValueError(f"{step_dir}: loaded the state of another step")
    return expected


# ---- Orbax CheckpointManager ------------------------------------------------------------------
# jax starts threads at import, and a process that forks after that may deadlock (jax warns so):
# the suite forks janitors (tests/test_two_janitors.py), so jax runs only in child interpreters.

def orbax_steps(root: Path, steps: Iterable[int]) -> None:
    """`_orbax_steps` in a fresh interpreter (see above)."""
    _in_child("_orbax_steps", str(root), list(steps))


def reload_orbax(root: Path, step: int) -> int:
    """`_reload_orbax` in a fresh interpreter; raises when the step does not restore."""
    return int(_in_child("_reload_orbax", str(root), step))


def orbax_step_numbers(root: Path) -> list[int]:
    """`_orbax_step_numbers` in a fresh interpreter."""
    return [int(n) for n in _in_child("_orbax_step_numbers", str(root))]


def _in_child(name: str, *args: Any) -> Any:
    """Run this module's function `name` on JSON arguments in a new python; its JSON result,
    or an error carrying the child's stderr."""
    import subprocess
    import sys

    code = ("import json, sys\nfrom pathlib import Path\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
            "from helpers import trainer_trees as t\n"
            "name, args = json.loads(sys.argv[1])\n"
            "args = [Path(a) if i == 0 else a for i, a in enumerate(args)]\n"
            "print(json.dumps(getattr(t, name)(*args)))\n")
    done = subprocess.run([sys.executable, "-c", code, json.dumps([name, list(args)])],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}{args}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])



def _orbax_steps(root: Path, steps: Iterable[int]) -> None:
    """A real `orbax.checkpoint.CheckpointManager` (jax on CPU, max_to_keep=None) saving each
    step as `root/N`, waiting for its asynchronous saves: Orbax writes `N.orbax-checkpoint-tmp`
    and renames it to `N` once finished (orbax/checkpoint/_src/path/atomicity.py)."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=None)
    with ocp.CheckpointManager(root, options=options) as manager:
        for step in steps:
            manager.save(step, args=ocp.args.StandardSave(
                {"w": jnp.arange(4.0) * step, "step": jnp.asarray(step)}))
        manager.wait_until_finished()


def _reload_orbax(root: Path, step: int) -> int:
    """`CheckpointManager.restore` of one step; returns the step it holds, raises on failure."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(root) as manager:
        restored = manager.restore(step, args=ocp.args.StandardRestore(
            {"w": jnp.zeros(4), "step": jnp.asarray(0)}))
    if int(restored["step"]) != step or float(restored["w"][1]) != float(step):
        raise ValueError(f"{root}/{step}: restored the state of another step")
    return step


def _orbax_step_numbers(root: Path) -> list[int]:
    """The steps Orbax itself lists in `root` (its own idea of what is a finished step)."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(root) as manager:
        return sorted(manager.all_steps())


# ---- Megatron-LM, verl, DeepSpeed: fixtures from their documented formats -------------------

def _tiny_torch_file(path: Path, **content: Any) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"tiny": torch.zeros(2), **content}, path)


def megatron_tree(root: Path, iters: Iterable[int], latest: int | str | None) -> None:
    """A Megatron-LM save directory, as megatron/training/checkpointing.py defines it:
    - `get_checkpoint_name`: the step directory is `iter_{:07d}` (`release` for a release
      checkpoint); a legacy (`--ckpt-format torch`) rank file is
      `mp_rank_{tp:02d}/model_optim_rng.pt` (`mp_rank_{tp:02d}_{pp:03d}` with pipeline
      parallelism); `get_distributed_optimizer_checkpoint_name` puts `distrib_optim.pt` beside it.
      The default torch_dist format instead holds megatron/core/dist_checkpointing's
      `metadata.json` (core.py, CONFIG_FNAME) and `common.pt` (strategies/common.py,
      COMMON_STATE_FNAME) plus DCP's `.metadata` and `__R_0.distcp` shards: both kinds are written
      here, alternately (the first legacy, the second torch_dist, ...).
    - `get_checkpoint_tracker_filename`: `latest_checkpointed_iteration.txt` in the save
      directory; `save_checkpoint` (its `iter_finalize_fn`) writes `str(iteration)` there, no
      newline, only after every rank finished the save, and `read_metadata` reads it back.
    `latest`: the iteration the tracker names (written after every iteration), None for no
    tracker; a string is written as it is (`"release"`, garbage)."""
    root.mkdir(parents=True, exist_ok=True)
    for index, iteration in enumerate(iters):
        step = root / f"iter_{iteration:07d}"
        if index % 2 == 0:
            _tiny_torch_file(step / "mp_rank_00" / "model_optim_rng.pt", iteration=iteration)
            _tiny_torch_file(step / "mp_rank_00" / "distrib_optim.pt")
        else:
            step.mkdir()
            (step / "metadata.json").write_text(
                json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                            "common_backend": "torch", "common_backend_version": 1}))
            _tiny_torch_file(step / "common.pt", iteration=iteration)
            (step / "__0_0.distcp").write_bytes(b"\0" * 64)
            (step / ".metadata").write_bytes(b"\0" * 16)
    if latest is not None:
        (root / "latest_checkpointed_iteration.txt").write_text(str(latest))


def verl_tree(root: Path, steps: Iterable[int], latest: int | str | None) -> None:
    """A verl `trainer.default_local_dir`, as verl/trainer/ppo/ray_trainer.py
    (`RayPPOTrainer._save_checkpoint`) writes it: `global_step_{N}/actor/` (and `critic/`), then
    `global_step_{N}/data.pt` (the dataloader state), then `latest_checkpointed_iteration.txt` in
    default_local_dir holding `str(global_steps)` (no newline; skipped with async_save), which
    verl/utils/checkpoint/checkpoint_manager.py (`find_latest_ckpt_path`,
    `get_checkpoint_tracker_filename`) reads on resume. The FSDP rank files are those of
    verl/utils/checkpoint/fsdp_checkpoint_manager.py (`save_checkpoint`):
    `model_world_size_{W}_rank_{R}.pt`, `optim_world_size_{W}_rank_{R}.pt`,
    `extra_state_world_size_{W}_rank_{R}.pt` and a `huggingface/` config directory."""
    root.mkdir(parents=True, exist_ok=True)
    for number in steps:
        step = root / f"global_step_{number}"
        for role in ("actor", "critic"):
            for kind in ("model", "optim", "extra_state"):
                _tiny_torch_file(step / role / f"{kind}_world_size_1_rank_0.pt", step=number)
            (step / role / "huggingface").mkdir()
            (step / role / "huggingface" / "config.json").write_text('{"model_type": "gpt2"}')
        _tiny_torch_file(step / "data.pt", step=number)
    if latest is not None:
        (root / "latest_checkpointed_iteration.txt").write_text(str(latest))


def deepspeed_tree(root: Path, steps: Iterable[int], latest: int | str | None) -> None:
    """A DeepSpeed `save_dir`, as deepspeed/runtime/engine.py (`DeepSpeedEngine.save_checkpoint`)
    writes it: the tag defaults to `global_step{global_steps}`; inside it `_get_ckpt_name`'s
    `mp_rank_00_model_states.pt` and, with ZeRO, `_get_rank_zero_ckpt_name`'s
    `zero_pp_rank_{dp}_mp_rank_00_optim_states.pt` (`bf16_` prefixed in bf16 mode); then, after
    the checkpoint engine's commit, rank 0 writes the tag to the file `latest` in save_dir (no
    newline; `load_checkpoint` reads it when no tag is given), and `_copy_recovery_script` puts
    `zero_to_fp32.py` in save_dir. `latest`: the step whose tag the file names (a string is
    written as it is), None for no file."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = list(steps)
    for number in numbers:
        step = root / f"global_step{number}"
        _tiny_torch_file(step / "mp_rank_00_model_states.pt", global_steps=number)
        for dp_rank in (0, 1):
            _tiny_torch_file(step / f"zero_pp_rank_{dp_rank}_mp_rank_00_optim_states.pt")
    if numbers:
        (root / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script stands here\n")
    if latest is not None:
        tag = f"global_step{latest}" if isinstance(latest, int) else latest
        (root / "latest").write_text(tag)


# ---- prime-rl's filesystem weight broadcast ----------------------------------------------------
# The protocol of prime-rl PR #3357 ("uniform four-stage handshake for weight broadcasts"), in
# src/prime_rl/transports/weights/base.py: `WeightSender.broadcast` resets `broadcasts/step_N`
# (rmtree, mkdir), raises `.sender_ready`, waits for the consumer's `.receiver_ready`, raises
# `.started`, writes the weights (the filesystem transport: HF safetensors), raises `.finished`,
# then `_clean(step)` removes every `step_M` with M < N - 1 ("a lagging consumer may still be
# reading" step N - 1). `WeightReceiver._ack` is the consumer's `.receiver_ready`; it then waits
# for `.finished` and loads. The trainer runs in lockstep: it offers N only after the consumer
# acknowledged N - 1, so `.receiver_ready` in step_N says the consumer is done with every step
# below N.
SENDER_READY = ".sender_ready"
RECEIVER_READY = ".receiver_ready"
STARTED = ".started"
FINISHED = ".finished"


def prime_rl_offer(root: Path, step: int) -> Path:
    """The sender's first stage: a fresh `step_N` holding `.sender_ready` only."""
    import shutil

    directory = root / f"step_{step}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / SENDER_READY).touch()
    return directory


def prime_rl_transfer(root: Path, step: int, shards: int = 2, size: int = 65536) -> Path:
    """The sender's stages after the consumer's acknowledgement: `.started`, the weight files,
    `.finished` (the step is complete only now)."""
    directory = root / f"step_{step}"
    (directory / STARTED).touch()
    for index in range(shards):
        (directory / f"model-{index + 1:05d}-of-{shards:05d}.safetensors").write_bytes(
            bytes([step % 251]) * size)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"step": step}))
    (directory / FINISHED).touch()
    return directory


# prime-rl's sparse filesystem broadcast (src/prime_rl/utils/sparse_update.py, PR #2607): a step
# that is a patch over `base_step` holds the patch, then its manifest (json.dump with sort_keys
# and indent=2, written last), instead of full weight files.
SPARSE_PATCH = "sparse_update_patch.safetensors"
SPARSE_MANIFEST = "sparse_update_manifest.json"


def prime_rl_sparse_broadcast(root: Path, step: int, base_step: int, size: int = 4096) -> Path:
    """One whole broadcast of a sparse patch on `base_step`, with the handshake's sentinels."""
    directory = prime_rl_offer(root, step)
    prime_rl_receive(root, step)
    (directory / STARTED).touch()
    (directory / SPARSE_PATCH).write_bytes(bytes([step % 251]) * size)
    manifest = {"format": "prime-rl-sparse-update", "version": 1, "step": step,
                "base_step": base_step, "compute_dtype": "bfloat16", "compressed": False,
                "patch_file": SPARSE_PATCH, "tensors": [], "stats": {}}
    with open(directory / SPARSE_MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    (directory / FINISHED).touch()
    return directory


def prime_rl_broadcast(root: Path, step: int) -> Path:
    """One whole broadcast with every sentinel in the protocol's order, the consumer's
    acknowledgement included (for a tree built in one go; a live sender waits for it instead:
    `prime_rl_offer`, then `prime_rl_transfer` once `.receiver_ready` is there)."""
    prime_rl_offer(root, step)
    prime_rl_receive(root, step)
    return prime_rl_transfer(root, step)


def prime_rl_receive(root: Path, step: int) -> None:
    """The consumer's acknowledgement, `WeightReceiver._ack`: `.receiver_ready` in step_N."""
    (root / f"step_{step}" / RECEIVER_READY).touch()


def prime_rl_clean(root: Path, step: int) -> list[int]:
    """`WeightSender._clean(step)`: remove every broadcast below step - 1 (errors ignored, as
    prime-rl's `shutil.rmtree(..., ignore_errors=True)`); returns the steps it removed."""
    import shutil

    removed = []
    for name in os.listdir(root):
        number = name.removeprefix("step_")
        if name.startswith("step_") and number.isdigit() and int(number) < step - 1:
            shutil.rmtree(root / name, ignore_errors=True)
            removed.append(int(number))
    return sorted(removed)


def prime_rl_load(root: Path, step: int) -> int:
    """What the consumer reads of a finished broadcast (every weight file, whole); returns the
    bytes read, raises (FileNotFoundError) if any of it is gone."""
    directory = root / f"step_{step}"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    if index["step"] != step:
        raise ValueError(f"{directory}: the index of another step")
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        data = path.read_bytes()
        if data != bytes([step % 251]) * len(data):
            raise ValueError(f"{path}: torn weights")
        total += len(data)
    if total == 0:
        raise FileNotFoundError(f"{directory}: no weight files")
    return total
