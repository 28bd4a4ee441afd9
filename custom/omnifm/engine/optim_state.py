"""A site's optimizer state as flat tensors, so it is part of the personal state file.

FL sites keep their Adam moments across rounds (the issue that introduced this measured a fresh
Adam every round dominating the learning curves: every method peaked and decayed). The FLARE
simulator rebuilds the executor for every task, so the state must survive a rebuilt trainer:
:func:`flat_state` turns ``optimizer.state_dict()["state"]`` into ``{"<i>/<key>": tensor}``
(``i`` = parameter index in the optimizer's parameter order) and :func:`load_flat_state` puts it
back. :func:`init_adam_state` fills the state eagerly with Adam's own initial values (step 0,
zero moments), which Adam treats exactly like a fresh optimizer; so the personal state has the
same keys before and after the first step.
"""

from __future__ import annotations

import torch

__all__ = ["flat_state", "init_adam_state", "load_flat_state"]


def init_adam_state(optimizer: torch.optim.Adam) -> None:
    """Give every parameter Adam's initial state (``step`` 0, zero moments) if it has none.

    Examples::

        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([p])
        >>> init_adam_state(opt)
        >>> sorted(flat_state(opt))
        ['0/exp_avg', '0/exp_avg_sq', '0/step']
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def flat_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """``{"<param index>/<key>": detached CPU tensor}`` of the optimizer's per-parameter state."""
    out = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            out[f"{index}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return out


def load_flat_state(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`flat_state` (the learning rate and other group settings stay as they are).

    Raises:
        ValueError: a key that is not ``<int>/<name>`` or a parameter index the optimizer lacks.
    """
    current = optimizer.state_dict()
    n_params = sum(len(g["params"]) for g in current["param_groups"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or not name or int(index) >= n_params:
            raise ValueError(f"optimizer state key {key!r} does not fit this optimizer ({n_params} parameters)")
        state.setdefault(int(index), {})[name] = value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
