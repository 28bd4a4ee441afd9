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


# ------------------------------------------------------------------ temp files, damaged files, NaN (issue 13, items 8-10)

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from omnifm.checkpoint import (  # noqa: E402
    TEMP_SUFFIX,
    CheckpointError,
    check_finite_tensors,
    clean_stale_temps,
    load_personal_file,
    load_torch_file,
)

_KILLED_SAVE = """
import os, signal, sys, torch
from omnifm.checkpoint import atomic_torch_save

class Kill:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 while the checkpoint is being written

atomic_torch_save({"w": torch.zeros(1 << 16), "kill": Kill()}, sys.argv[1])
"""


def test_a_killed_save_leaves_a_named_temp_file_that_the_next_start_removes(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"round": 1}, target)
    run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)], capture_output=True)
    assert run.returncode == -9
    (orphan,) = [p for p in tmp_path.iterdir() if p != target]
    assert orphan.name.startswith(".ckpt.pt.") and orphan.name.endswith(TEMP_SUFFIX)
    assert clean_stale_temps(tmp_path) == [orphan]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"] and torch.load(target, weights_only=True)["round"] == 1


def test_cleanup_leaves_other_files_and_saves_of_live_processes_alone(tmp_path):
    live = os.getppid()  # the process that started pytest is alive
    keep = [
        tmp_path / "notes.tmp",  # someone else's temp file
        tmp_path / f"tmp1234{TEMP_SUFFIX}",  # our suffix but not our pattern
        tmp_path / f".ckpt.pt.{live}.abc123{TEMP_SUFFIX}",  # a save in progress in a live process
        tmp_path / "ckpt.pt",
    ]
    dead = tmp_path / f".ckpt.pt.{2**22 + 12345}.abc123{TEMP_SUFFIX}"  # beyond pid_max: never a live process
    for path in [*keep, dead]:
        path.write_text("x")
    assert clean_stale_temps(tmp_path) == [dead]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert clean_stale_temps(tmp_path / "missing") == []


def _truncated(path):
    atomic_torch_save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("write", "cause"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (_truncated, "cannot be read ("),
        (lambda p: p.write_text("not a checkpoint"), "cannot be read ("),
        (lambda p: torch.save({"x": _Opaque()}, p), "objects other than tensors, numbers and strings"),
        (lambda p: torch.save([torch.ones(1)], p), "holds a list, not an OmniFM checkpoint"),
        (lambda p: None, "does not exist"),
    ],
    ids=["empty", "truncated", "text", "pickled-object", "list", "missing"],
)
def test_load_errors_name_the_file_and_the_fix(tmp_path, write, cause):
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(CheckpointError) as err:
        load_torch_file(path, "saved global model", "restore it from a backup")
    message = str(err.value)
    assert message.startswith(f"saved global model {path} ") and cause in message and message.endswith("restore it from a backup")
    assert "\x1b[" not in message and "\n" not in message  # no PyTorch ANSI advice text


def test_every_tensor_is_checked_for_nan_however_nested(tmp_path):
    payload = {"personal": {"w": torch.ones(2), "optim/main/state/0/exp_avg": torch.tensor([1.0, float("nan")])},
               "extra": [{"b": torch.tensor([float("inf")])}], "round": 3, "ids": torch.arange(3)}
    with pytest.raises(CheckpointError, match=r"NaN/Inf\) in 2 tensor\(s\) \(personal/optim/main/state/0/exp_avg, extra\[0\]/b\)"):
        check_finite_tensors(payload, tmp_path / "p.pt", "personal-state file", "move it away")
    check_finite_tensors({"personal": {"w": torch.ones(2)}, "ids": torch.arange(3)}, "p.pt", "x", "y")


def test_load_personal_file_refuses_nan_and_bad_layout(tmp_path):
    path = tmp_path / "p.pt"
    atomic_torch_save({"personal": {"w": torch.full((3,), float("nan"))}, "round": 1}, path)
    with pytest.raises(CheckpointError, match=f"personal-state file {path} holds non-finite values.*move the file out"):
        load_personal_file(path)
    atomic_torch_save({"personal": {"w": 3}, "round": 1}, path)
    with pytest.raises(CheckpointError, match="has no 'personal' dict of tensors"):
        load_personal_file(path)
    atomic_torch_save({"personal": {"w": torch.ones(3)}, "round": 1}, path)
    assert load_personal_file(path)["round"] == 1
