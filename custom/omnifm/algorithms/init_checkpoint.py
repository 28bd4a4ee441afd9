"""Start a federation from a local checkpoint file (seed 004's pretrained initialisation).

:func:`~omnifm.algorithms.server.initial_global` builds the spec's seeded model and, with an
``init_checkpoint``, overwrites its tensors with the file's before the round-0 weights are taken,
so the FLARE persistor and the in-process benchmark start from the same state. The file is a
torch file holding a dict of tensors named as the model's ``state_dict`` — bare, or under
``"model"`` (what ``omnifm-pretrain`` writes, and a finished job's ``FL_global_model.pt``).

Every parameter of the task network (``network.*``) must be in the file with its shape; OmniFM
modules the file lacks (e.g. a checkpoint pre-trained without them) keep their seeded values, and
tensors the model does not have are ignored. Anything else is refused with the file's name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from omnifm.checkpoint import CheckpointError, load_torch_file

_FIX = "make one with omnifm-pretrain (docs/FEDUNETMM.md) or point init_checkpoint at an existing file"


def read_init_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an init checkpoint file.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no dict of tensors (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"init_checkpoint {path} does not exist — {_FIX}")
    payload = load_torch_file(path, "init checkpoint", _FIX)
    tensors = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(tensors, dict) or not tensors or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"init_checkpoint {path} holds no dict of tensors (bare or under 'model') — {_FIX}")
    return tensors


def load_init_checkpoint(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Overwrite ``model``'s tensors with those of the checkpoint at ``path``.

    Returns:
        ``{"loaded": n, "kept": m}``: tensors taken from the file, and model tensors outside the task
        network that the file lacks (they keep their seeded values).

    Raises:
        CheckpointError: the file cannot be read, lacks a task-network parameter, or a tensor's shape
            differs (naming the file, the tensors and the shapes).
    """
    tensors = read_init_checkpoint(path)
    state = model.state_dict()
    network = [name for name, _ in model.named_parameters() if name.startswith("network.")]
    missing = [name for name in network if name not in tensors]
    if missing:
        raise CheckpointError(
            f"init_checkpoint {path} does not fit this job's model: it lacks {len(missing)} of the task network's "
            f"{len(network)} parameters (e.g. {missing[:3]}); was it made for another model? — {_FIX}")
    wrong = [(k, tuple(tensors[k].shape), tuple(v.shape)) for k, v in state.items() if k in tensors
             and tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        shown = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:3])
        raise CheckpointError(f"init_checkpoint {path} does not fit this job's model: {len(wrong)} tensor(s) have "
                              f"other shapes ({shown}); pre-train with the job's model settings — {_FIX}")
    loaded = {k: tensors[k].to(dtype=v.dtype) for k, v in state.items() if k in tensors}
    model.load_state_dict({**state, **loaded})
    return {"loaded": len(loaded), "kept": len(state) - len(loaded)}
