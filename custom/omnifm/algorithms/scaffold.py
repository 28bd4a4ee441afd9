"""SCAFFOLD (Karimireddy et al., ICML 2020), the whole rule: site part, server part, control variates.

With the local optimizer of the other baselines (Adam), so a SCAFFOLD variant. Every local step's gradient of a shared parameter is corrected by ``c - c_i`` (server control
minus this site's control) before the optimizer step. After the round the site's control becomes
the mean raw gradient it saw (``c_i+``, a cheap form of the paper's option I that does not depend
on the optimizer: our sites use Adam, for which option II's ``(x - y) / (K lr)`` is no gradient
estimate) and the site uploads ``delta c_i = c_i+ - c_i``; the server adds the sites' mean delta
to ``c``. Both controls travel as extra global weights named ``scaffold_c:<shared name>`` (so HE
filters would cover them; HE still refuses SCAFFOLD, whose control update is no weighted mean):
the server sends ``c``, a site uploads ``delta c_i`` under the same names. ``c_i`` is the site's
personal state under ``control/``. All sites take part every round (with partial participation
the paper scales the mean delta by the participating share; not done here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from omnifm.algorithms.rule import RoundHooks, ServerRule, SiteRule

CONTROL_PREFIX = "scaffold_c:"


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


class ScaffoldSite(SiteRule):
    """SCAFFOLD's site part: corrects every local step, keeps ``c_i``, uploads ``delta c_i``.

    Examples::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> site = ScaffoldSite({}, model, ["weight"])
        >>> sorted(site.extra_weights())
        ['scaffold_c:weight']
        >>> hooks = site.start_round(model, {}, steps_per_epoch=1, local_epochs=1)
        >>> model(torch.ones(1, 1)).sum().backward(); hooks.after_backward(model)
        >>> site.finish_round(model, {}); site.extra_uploads()["scaffold_c:weight"].tolist()
        [[1.0]]
    """

    prefix = "control"

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        super().__init__(spec, model, shared_names)
        params = dict(model.named_parameters())
        self.control = ControlVariates({n: params[n].shape for n in self.shared_names})
        self._delta: dict[str, torch.Tensor] | None = None

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.control.client)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        self.control.client.update({k: v.clone() for k, v in state.items()})

    def extra_weights(self) -> dict[str, torch.Tensor]:
        return {CONTROL_PREFIX + n: v for n, v in self.control.server.items()}

    def start_round(
        self, model: nn.Module, anchor: dict[str, torch.Tensor], steps_per_epoch: int, local_epochs: int
    ) -> RoundHooks:
        self.control.start_round()
        return RoundHooks(after_backward=self.control.correct)

    def finish_round(self, model: nn.Module, anchor: dict[str, torch.Tensor]) -> None:
        self._delta = self.control.finish_round()

    def extra_uploads(self) -> dict[str, torch.Tensor]:
        delta = self._delta if self._delta is not None else self.control.finish_round()
        return {CONTROL_PREFIX + k: v for k, v in delta.items()}


class ScaffoldServer(ServerRule):
    """SCAFFOLD's server part: ``c`` starts at 0; ``c <- c + mean_i(delta c_i)``; the model is the weighted mean."""

    def is_extra(self, name: str) -> bool:
        return name.startswith(CONTROL_PREFIX)

    def initial_extras(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {CONTROL_PREFIX + k: np.zeros_like(v) for k, v in weights.items()}

    def next_extras(self, extras: dict[str, np.ndarray], uploads: list) -> dict[str, np.ndarray]:
        out = {}
        for k, value in extras.items():
            mean_delta = sum(u.weights[k].astype(np.float64) for u in uploads) / len(uploads)
            out[k] = (value.astype(np.float64) + mean_delta).astype(np.float32)
        return out


SITE = ScaffoldSite
SERVER = ScaffoldServer()
