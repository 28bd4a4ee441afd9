"""MOON (Li, He and Song, CVPR 2021, "Model-Contrastive Federated Learning"), the whole rule.

* **Site** (:class:`MoonSite`). Local loss ``L_task + mu * l_con`` with, per sample,
  ``l_con = -log( e^{sim(z, z_glob)/tau} / (e^{sim(z, z_glob)/tau} + e^{sim(z, z_prev)/tau}) )``:
  ``z`` the representation of the model being trained, ``z_glob`` that of the global model
  received this round, ``z_prev`` that of this site's model at the end of its previous round
  (both frozen, in eval mode), ``sim`` the cosine similarity; the batch mean is added to the
  step's loss (:func:`model_contrastive_loss`). ``mu`` = ``moon_mu`` (default 1; the paper uses
  1 or 5), ``tau`` = ``moon_tau`` (default 0.5, as in the paper).
* **Server.** FedAvg (no server part), so HE can run it.

Choices:

* **Representation: the spatial mean of the bottleneck feature map** ``r`` (B, token_dim,
  *spatial) -> (B, token_dim) (:func:`representation`), the tapped output of the shared encoder
  that every task network here has (segmentation UNet, classification ResNet, super-resolution),
  so MOON runs on every task unchanged. The paper contrasts the output of a projection head (a
  2-layer MLP after the base encoder); one is not added: it would be shared parameters that only
  MOON has and that the task never uses, and the comparison with the other baselines would no
  longer be on the same network. ``z`` comes from its own encoder-only pass
  (``model.bottleneck_features``), so a MOON step costs one extra encoder forward and backward plus
  two frozen encoder forwards; with batch norm (the classification ResNet) that extra pass also
  moves the running statistics a second time per step (the segmentation UNet's instance norm has
  none).
* **Round 1 (no previous local model): the term is skipped**, so the site's first round is
  FedAvg's. Using the global model as ``z_prev`` would be the same update: ``z_prev = z_glob``
  makes ``l_con = log 2`` for every ``z`` (zero gradient). The paper's code does the same (no
  negative, a one-logit cross-entropy of 0). A site that missed rounds contrasts with the model of
  the last round it trained.
* **The previous model is personal state** under ``moon/`` (``moon/previous/<name>`` for its
  parameters and buffers, ``moon/has_previous`` 0 or 1), saved and restored with the site's other
  personal state, so it survives the FLARE simulator rebuilding the executor every task; it never
  leaves the site.
* ``mu = 0`` is FedAvg exactly (the term is not evaluated). Adam instead of SGD for the local
  steps, like every baseline here. Under case-level DP-SGD MOON is refused
  (:func:`omnifm.engine.privacy.refusal`): its term is a function of the training images, and the
  DP path adds an algorithm's terms after clipping.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnifm.algorithms.rule import RoundHooks, SiteRule

PREVIOUS = "previous/"
"""State-key prefix (under ``moon/``) of the previous round's local model."""


def representation(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """MOON's representation ``z`` (B, token_dim): the spatial mean of ``model.bottleneck_features(image)``.

    Args:
        model: an :class:`~omnifm.models.OmniFM`.
        image: (B, C, *spatial).
    """
    return model.bottleneck_features(image).flatten(2).mean(dim=2)


def model_contrastive_loss(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """The batch mean of ``-log(e^{s_g/tau} / (e^{s_g/tau} + e^{s_p/tau}))``.

    ``s_g = cos(z, z_glob)`` and ``s_p = cos(z, z_prev)``, per sample.

    Args:
        z, z_glob, z_prev: representations (B, D).
        tau: temperature, > 0.

    Returns:
        A scalar; ``log 2`` wherever ``z_glob == z_prev``.

    Examples::

        >>> z = torch.tensor([[1.0, 0.0]])
        >>> round(float(model_contrastive_loss(z, z, torch.tensor([[0.0, 1.0]]), tau=1.0)), 4)  # -log(e / (e + 1))
        0.3133
        >>> round(float(model_contrastive_loss(z, z, z, tau=0.5)), 4)  # log 2
        0.6931
    """
    s_glob = F.cosine_similarity(z, z_glob, dim=1)
    s_prev = F.cosine_similarity(z, z_prev, dim=1)
    return F.softplus((s_prev - s_glob) / tau).mean()  # -log sigmoid((s_g - s_p) / tau)


def _frozen_copy(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (each tensor once)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _copy_into(target: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy ``source``'s tensors into ``target``'s parameters and buffers of the same names."""
    tensors = _tensors(target)
    with torch.no_grad():
        for name, value in source.items():
            tensors[name].copy_(value)


class MoonSite(SiteRule):
    """MOON's site part: frozen global and previous models, the contrastive term every step.

    Args:
        spec: run spec (``moon_mu``, ``moon_tau``).
        model: the site's model; the frozen copies start as copies of it.
        shared_names: the shared parameter names (all of them: MOON personalises nothing).
    """

    prefix = "moon"

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        super().__init__(spec, model, shared_names)
        self.mu, self.tau = float(spec["moon_mu"]), float(spec["moon_tau"])
        self.global_model, self.previous = _frozen_copy(model), _frozen_copy(model)
        self.has_previous = False
        self._sums = [0.0, 0]  # this round's l_con sum and steps (logged by after_round)

    def state(self) -> dict[str, torch.Tensor]:
        state = {f"{PREVIOUS}{n}": t.detach().cpu().clone() for n, t in _tensors(self.previous).items()}
        return {**state, "has_previous": torch.tensor(float(self.has_previous))}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        previous = {n[len(PREVIOUS):]: v for n, v in state.items() if n.startswith(PREVIOUS)}
        _copy_into(self.previous, previous)
        if "has_previous" in state:
            self.has_previous = bool(state["has_previous"])

    def start_round(
        self, model: nn.Module, anchor: dict[str, torch.Tensor], steps_per_epoch: int, local_epochs: int
    ) -> RoundHooks:
        """The contrastive term as a batch term, from the second round this site trains on (and ``mu > 0``)."""
        self._sums = [0.0, 0]
        if self.mu == 0 or not self.has_previous:
            return RoundHooks()
        _copy_into(self.global_model, _tensors(model))  # the received global weights (+ the site's buffers)
        return RoundHooks(batch_term=lambda image: self.mu * self.contrastive_term(model, image))

    def contrastive_term(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """``l_con`` of one batch (B, C, *spatial) on the model's device, with gradient to ``model``."""
        with torch.no_grad():
            z_glob, z_prev = representation(self.global_model, image), representation(self.previous, image)
        loss = model_contrastive_loss(representation(model, image), z_glob, z_prev, self.tau)
        self._sums[0] += float(loss.detach())
        self._sums[1] += 1
        return loss

    def finish_round(self, model: nn.Module, anchor: dict[str, torch.Tensor]) -> None:
        """The trained model becomes the next round's previous model."""
        _copy_into(self.previous, _tensors(model))
        self.has_previous = True

    def after_round(self, trainer: Any, anchor: dict[str, torch.Tensor], round_num: int) -> None:
        """Log the round's mean ``l_con`` (``log 2`` = 0.693: ``z`` as close to the previous model as to the global)."""
        total, steps = self._sums
        if steps:
            trainer.logger.info("moon round %d: mean l_con %.4f over %d steps (mu %g, tau %g)", round_num,
                                total / steps, steps, self.mu, self.tau)
        else:
            trainer.logger.info("moon round %d: no contrastive term (%s)", round_num,
                        "mu = 0" if self.mu == 0 else "no previous local model yet")


SITE = MoonSite
SERVER = None  # the server is FedAvg
