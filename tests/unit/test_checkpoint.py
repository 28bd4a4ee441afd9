from __future__ import annotations

import pickle

import pytest
import torch

from omnifm.checkpoint import atomic_torch_save


def test_writes_a_weights_only_loadable_file(tmp_path):
    atomic_torch_save({"w": torch.ones(2), "round": 3}, tmp_path / "sub" / "ckpt.pt")
    loaded = torch.load(tmp_path / "sub" / "ckpt.pt", weights_only=True)
    assert loaded["round"] == 3 and torch.equal(loaded["w"], torch.ones(2))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"round": 1}, target)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_torch_save({"round": 2, "bad": lambda: None}, target)  # lambdas cannot be pickled
    assert torch.load(target, weights_only=True)["round"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
