"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization").

The whole rule, site and server part, over the shared parameters ``theta``:

* **Site** (:class:`FedDynSite`). Local objective
  ``L_i(theta) - <g_i, theta> + alpha / 2 * ||theta - theta_t||^2`` with ``theta_t`` the global
  weights received this round; after the local epochs ``g_i <- g_i - alpha * (theta_i - theta_t)``.
  ``g_i`` (the paper's ``grad L_i(theta_i^{t-1})``) starts at 0 and is personal state under
  ``feddyn/`` (saved, restored, survives a rebuilt trainer); it never leaves the site.
* **Server** (:class:`FedDynServer`). ``h <- h - alpha * (1/m) * sum_i (theta_i - theta_t)`` and
  ``theta_{t+1} = (1/m) * sum_i theta_i - h / alpha``.

Choices:

* **m and participation.** ``m`` is the number of uploads the server accepted this round.
  The paper divides the ``h`` update by the *total* number of clients, so that with partial
  participation ``h`` stays the mean of every client's ``g_i``; the round protocol does not know
  the federation's size, so with a site missing from a round this ``h`` moves by the mean over
  the sites that took part (with full participation -- the default job and the benchmark -- the
  two are the same and ``h`` equals the mean of the sites' ``g_i``).
* **Unweighted means**, as in the paper (its objective is ``(1/m) sum_i L_i``); FedAvg's mean
  is sample-weighted, FedDyn's is not.
* **Where h lives: the round protocol's algorithm state** ``meta[STATE]["feddyn_h"]``, a flat
  list of float64 numbers over the shared weights in sorted-name order -- not extra weights like
  SCAFFOLD's ``scaffold_c:`` names. Extra weights would be sent to every site and, because the
  aggregator accepts only uploads with exactly the global model's names, every site would have
  to send them back each round although no site needs ``h``; SCAFFOLD's sites use ``c``, FedDyn's
  do not. In the state, ``h`` stays server business, ``server_round`` stays a pure function of
  ``(weights, meta, uploads)`` (what FLARE and the benchmark share), the weights stay the model
  the sites train, and ``h`` keeps float64 precision across rounds. The cost: FLARE carries meta
  as plain numbers, about 9 bytes per value instead of 4 -- for the default job's 142,529 shared
  values, 1.28 MB of meta next to 0.57 MB of weights per site and round, download only -- and the
  persistor's ``FL_global_model.pt`` does not hold ``meta[STATE]``, so a job resumed from
  ``source_dir`` starts with ``h = 0`` while the sites keep their ``g_i``.
* **Adam instead of SGD** is a variant: the paper's analysis is for exact (or SGD) minimisation
  of the local objective; here the site's Adam optimizer (kept across rounds, round learning
  rate) minimises it, so its ``-g_i`` and proximal gradients are rescaled per coordinate like
  the task gradient. ``alpha`` = ``feddyn_alpha`` (run spec, default 0.01, > 0).
* HE cannot run it: ``theta_{t+1}`` needs ``h`` and the plain mean (``omnifm.fl.he`` refuses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from omnifm.algorithms.rule import RoundHooks, ServerRule, SiteRule
from omnifm.losses import proximal_term
from omnifm.validation import check_range

if TYPE_CHECKING:
    from omnifm.algorithms.server import Upload

H_KEY = "feddyn_h"
"""``meta[STATE]`` key of the server state ``h`` (flat float64 list, shared names sorted)."""


def dynamic_regularizer(
    parameters: Iterable[tuple[str, torch.Tensor]], g: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], alpha: float
) -> torch.Tensor:
    """``sum_n ( -<g_n, theta_n> + alpha / 2 * ||theta_n - anchor_n||^2 )`` over the parameters in ``g``.

    Its gradient with respect to ``theta_n`` is ``-g_n + alpha * (theta_n - anchor_n)``.

    Examples::

        >>> w = torch.nn.Parameter(torch.tensor([1.0, 3.0]))
        >>> term = dynamic_regularizer([("w", w)], {"w": torch.tensor([1.0, 0.0])}, {"w": torch.zeros(2)}, 0.5)
        >>> float(term.detach())  # -(1*1 + 0*3) + 0.25 * (1 + 9)
        1.5
    """
    parameters = [(n, p) for n, p in parameters if n in g]
    linear = sum((-(g[n] * p).sum() for n, p in parameters), torch.zeros(()))
    return linear + proximal_term(parameters, anchor, alpha)


class FedDynSite(SiteRule):
    """FedDyn's site part: the dynamic regulariser every step and the ``g_i`` update after the round.

    Args:
        spec: run spec (``feddyn_alpha``).
        model: the site's model.
        shared_names: the parameters the regulariser and ``g_i`` cover.
    """

    prefix = "feddyn"

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        super().__init__(spec, model, shared_names)
        self.alpha = float(check_range("feddyn_alpha", spec["feddyn_alpha"], 0.0, low_open=True))
        params = dict(model.named_parameters())
        self.grad = {n: torch.zeros(params[n].shape) for n in self.shared_names}  # g_i, on the CPU

    def state(self) -> dict[str, torch.Tensor]:
        return {n: g.clone() for n, g in self.grad.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        for name, value in state.items():
            if value.shape != self.grad[name].shape:
                raise ValueError(f"feddyn/{name} has shape {tuple(value.shape)}, expected {tuple(self.grad[name].shape)}")
            self.grad[name] = value.detach().cpu().float().clone()

    def start_round(
        self, model: nn.Module, anchor: dict[str, torch.Tensor], steps_per_epoch: int, local_epochs: int
    ) -> RoundHooks:
        device = next(model.parameters()).device
        g = {n: v.to(device) for n, v in self.grad.items()}
        return RoundHooks(regularizer=lambda: dynamic_regularizer(model.named_parameters(), g, anchor, self.alpha))

    def finish_round(self, model: nn.Module, anchor: dict[str, torch.Tensor]) -> None:
        """``g_i <- g_i - alpha * (theta_i - theta_t)``."""
        params = dict(model.named_parameters())
        for name in self.grad:
            drift = params[name].detach().cpu() - anchor[name].detach().cpu()
            self.grad[name] = self.grad[name] - self.alpha * drift


class FedDynServer(ServerRule):
    """FedDyn's server part: ``h`` in ``meta[STATE]`` and the corrected mean.

    Examples::

        >>> import numpy as np
        >>> from omnifm.algorithms.server import Upload
        >>> ups = [Upload({"w": np.array([1.0], np.float32)}, 5, site="a"),
        ...        Upload({"w": np.array([3.0], np.float32)}, 1, site="b")]
        >>> spec, glob = {"feddyn_alpha": 0.5}, {"w": np.array([0.0], np.float32)}
        >>> FedDynServer().next_state(spec, glob, {}, ups)  # h = 0 - 0.5 * ((1 - 0) + (3 - 0)) / 2
        {'feddyn_h': [-1.0]}
        >>> FedDynServer().average(spec, glob, ups, {})["w"]  # mean 2 - (-1) / 0.5
        array([4.], dtype=float32)
    """

    def next_state(
        self, spec: dict[str, Any], global_weights: dict[str, np.ndarray], state: dict[str, Any], uploads: list[Upload]
    ) -> dict[str, Any]:
        _, h = _server_step(spec, global_weights, state, uploads)
        return {**state, H_KEY: h.tolist()}

    def average(
        self, spec: dict[str, Any], global_weights: dict[str, np.ndarray], uploads: list[Upload], state: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        mean, h = _server_step(spec, global_weights, state, uploads)
        return _unflatten(mean - h / float(spec["feddyn_alpha"]), global_weights)


def _server_step(
    spec: dict[str, Any], global_weights: dict[str, np.ndarray], state: dict[str, Any], uploads: list[Upload]
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean_i theta_i, h_{t+1})`` as flat float64 vectors over the sorted shared names."""
    alpha = float(spec["feddyn_alpha"])
    theta = _flatten(global_weights)
    h = np.asarray(state.get(H_KEY) or np.zeros_like(theta), dtype=np.float64)
    if h.shape != theta.shape:
        raise ValueError(
            f"algorithm state {H_KEY} has {h.size} values but the global model has {theta.size} shared values "
            "(state of another model spec?)"
        )
    mean = sum(_flatten({k: u.weights[k] for k in global_weights}) for u in uploads) / len(uploads)
    return mean, h - alpha * (mean - theta)


def _flatten(weights: dict[str, np.ndarray]) -> np.ndarray:
    if not weights:
        return np.zeros(0)
    return np.concatenate([np.asarray(weights[k], dtype=np.float64).ravel() for k in sorted(weights)])


def _unflatten(flat: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name in sorted(like):
        size = int(np.size(like[name]))
        out[name] = flat[start : start + size].reshape(np.shape(like[name])).astype(np.float32)
        start += size
    return {name: out[name] for name in like}


SITE = FedDynSite
SERVER = FedDynServer()
