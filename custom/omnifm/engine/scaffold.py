"""SCAFFOLD's site side (Karimireddy et al., ICML 2020), with the local optimizer of the other baselines.

Every local step's gradient of a shared parameter is corrected by ``c - c_i`` (server control
minus this site's control) before the optimizer step. After the round the site's control becomes
the mean raw gradient it saw (``c_i+``, a cheap form of the paper's option I that does not depend
on the optimizer: our sites use Adam, for which option II's ``(x - y) / (K lr)`` is no gradient
estimate) and the site uploads ``delta c_i = c_i+ - c_i``; the server adds the sites' mean delta
to ``c`` (:func:`omnifm.algorithms.server_round`).
"""

from __future__ import annotations

import torch
from torch import nn


class ControlVariates:
    """A site's control ``c_i`` and the server control ``c`` received this round.

    Args:
        shapes: shared parameter name -> shape.
    """

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        self.client = {k: torch.zeros(s) for k, s in shapes.items()}
        self.server = {k: torch.zeros(s) for k, s in shapes.items()}
        self._grad_sum: dict[str, torch.Tensor] = {}
        self._steps = 0

    def start_round(self) -> None:
        self._grad_sum = {k: torch.zeros_like(v) for k, v in self.client.items()}
        self._steps = 0

    def correct(self, model: nn.Module) -> None:
        """Record each shared parameter's raw gradient, then add ``c - c_i`` to it (call after backward)."""
        params = dict(model.named_parameters())
        for name, total in self._grad_sum.items():
            grad = params[name].grad
            if grad is None:
                continue
            total += grad.detach().cpu()
            grad += (self.server[name] - self.client[name]).to(grad.device)
        self._steps += 1

    def finish_round(self) -> dict[str, torch.Tensor]:
        """Set ``c_i`` to the round's mean raw gradient; return ``delta c_i`` per shared name."""
        if self._steps == 0:
            return {k: torch.zeros_like(v) for k, v in self.client.items()}
        new = {k: v / self._steps for k, v in self._grad_sum.items()}
        delta = {k: new[k] - self.client[k] for k in new}
        self.client = new
        return delta
