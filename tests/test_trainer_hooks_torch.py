"""trainer_hooks with torch: save_step/load_step round trips and DCP through staged_step."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
from helpers.hooks import tree_files

from janitor import protocol
from trainer_hooks import load_step, newest_complete_step, save_step, staged_step

pytestmark = pytest.mark.torch


def test_save_step_load_step_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state = {"layer.weight": torch.randn(16, 8), "layer.bias": torch.arange(8),
             "step": torch.tensor(3)}
    path = save_step(tmp_path, 3, state)
    assert path == tmp_path / "step_3"
    assert tree_files(path) == {"model.pt", "STABLE"}
    assert newest_complete_step(tmp_path) == 3
    loaded = load_step(tmp_path, 3)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_save_step_accepts_integer_like_steps(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    numpy = pytest.importorskip("numpy")
    assert save_step(tmp_path, numpy.int64(4), {}) == tmp_path / "step_4"
    assert save_step(tmp_path, torch.tensor(5), {}) == tmp_path / "step_5"
    assert load_step(tmp_path, torch.tensor(5)) == {}
    with pytest.raises(TypeError, match="float"):
        save_step(tmp_path, 6.0, {})  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["step_4", "step_5"]


def test_save_step_custom_names(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    save_step(tmp_path, 0, {"w": torch.ones(2)}, filename="weights.pt", complete_marker=".finished")
    assert tree_files(tmp_path / "step_0") == {"weights.pt", ".finished"}
    assert newest_complete_step(tmp_path, complete_marker=".finished") == 0
    loaded = load_step(tmp_path, 0, "weights.pt", complete_marker=".finished")
    assert torch.equal(loaded["w"], torch.ones(2))
    with pytest.raises(ValueError, match="completion marker"):
        save_step(tmp_path, 1, {}, filename="STABLE")


def test_resave_replaces_the_step(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    save_step(tmp_path, 2, {"w": torch.zeros(3)}, filename="old.pt")
    save_step(tmp_path, 2, {"w": torch.ones(3)})
    assert tree_files(tmp_path / "step_2") == {"model.pt", "STABLE"}  # not merged with old.pt
    assert torch.equal(load_step(tmp_path, 2)["w"], torch.ones(3))


def test_load_step_refuses_incomplete_and_symlinked_steps(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    save_step(tmp_path, 1, {"w": torch.ones(1)})
    (tmp_path / "step_2").mkdir()
    torch.save({"w": torch.ones(1)}, tmp_path / "step_2" / "model.pt")  # no STABLE yet
    with pytest.raises(FileNotFoundError, match="not complete"):
        load_step(tmp_path, 2)
    assert torch.equal(load_step(tmp_path, 2, complete_marker=None)["w"], torch.ones(1))
    (tmp_path / "step_3").symlink_to(tmp_path / "step_1")
    with pytest.raises(NotADirectoryError, match="symlink"):
        load_step(tmp_path, 3)
    with pytest.raises(FileNotFoundError, match="step_4 does not exist"):
        load_step(tmp_path, 4)


def test_load_step_is_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with staged_step(tmp_path, 1) as staging:
        torch.save({"w": torch.ones(1), "obj": protocol.Invalid("arbitrary class")},
                   staging / "model.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_step(tmp_path, 1)


def test_dcp_through_staged_step_with_metadata_marker(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    state = {"w": torch.randn(4, 4), "b": torch.arange(4)}
    with warnings.catch_warnings():
        # Single process, no process group: DCP warns that it assumes exactly that.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        with staged_step(tmp_path, 7, complete_marker=".metadata") as staging:
            dcp.save(state, checkpoint_id=staging)
            metadata = (staging / ".metadata").read_bytes()
        files = tree_files(tmp_path / "step_7")
        assert ".metadata" in files
        assert "STABLE" not in files
        assert (tmp_path / "step_7" / ".metadata").read_bytes() == metadata  # not overwritten
        assert newest_complete_step(tmp_path, complete_marker=".metadata") == 7
        restored = {"w": torch.zeros(4, 4), "b": torch.zeros(4, dtype=torch.int64)}
        dcp.load(restored, checkpoint_id=tmp_path / "step_7")
    assert all(torch.equal(restored[key], state[key]) for key in state)
    assert os.listdir(tmp_path) == ["step_7"]
