"""The two hooks a strategy file plugs into: its site part and its server part.

A strategy that needs more than the :class:`~omnifm.algorithms.registry.Algorithm` switches
(FedRep's alternating head/body updates, FedDyn's dynamic regulariser and server state, SCAFFOLD's
control variates, Ditto's personal model, FedDG's amplitude bank, MOON's model-contrastive term)
lives in ONE file of this package holding the whole rule, Flower style: ``fedrep.py``,
``feddyn.py``, ``scaffold.py``, ``ditto.py``, ``feddg.py``, ``moon.py``.
The registry names it in ``Algorithm.rule``; the generic code only calls these hooks:

* :class:`SiteRule` -- :class:`omnifm.engine.SiteTrainer` creates one per trainer, asks it for
  the round's training hooks (:meth:`SiteRule.start_round`) and calls :meth:`SiteRule.finish_round`
  after the local epochs; its :meth:`SiteRule.state` is part of the site's personal state under
  ``<prefix>/`` (saved, restored, survives a rebuilt trainer).
* :class:`ServerRule` -- :func:`omnifm.algorithms.server_round` asks it for the next algorithm
  state (``meta[STATE]``) and for the next global weights; both calls see this round's state.

Examples::

    >>> from omnifm.algorithms import get_algorithm
    >>> server_rule(get_algorithm("fedavg")) is None
    True
    >>> type(server_rule(get_algorithm("feddyn"))).__name__
    'FedDynServer'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from omnifm.algorithms.registry import Algorithm
    from omnifm.algorithms.server import Upload

RULES = ("fedrep", "feddyn", "scaffold", "ditto", "feddg", "moon")
"""Strategy files of this package that an ``Algorithm.rule`` may name."""


@dataclass(frozen=True)
class RoundHooks:
    """What a site rule adds to every local step (see :func:`omnifm.engine.train_epoch`).

    Args:
        regularizer: extra loss term evaluated every step, or None.
        after_backward: called with the model after ``backward`` and before the optimizer step, or None.
        augment: maps a batch of images (B, C, *spatial) before the forward pass (FedDG), or None.
        batch_term: extra loss term of the step's images (B, C, *spatial, on the device), evaluated every
            step after the task loss (MOON's model-contrastive term), or None.
    """

    regularizer: Callable[[], torch.Tensor] | None = None
    after_backward: Callable[[nn.Module], None] | None = None
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    batch_term: Callable[[torch.Tensor], torch.Tensor] | None = None


class SiteRule:
    """A strategy's site part; the defaults do nothing.

    Args:
        spec: the run spec (holds the strategy's hyper-parameters).
        model: the site's model (on its device).
        shared_names: names of the parameters exchanged with the server, in model order.
    """

    prefix = ""
    """Personal-state prefix of :meth:`state` (keys become ``<prefix>/<name>``)."""

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        self.spec, self.shared_names = spec, list(shared_names)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors the site keeps across rounds (CPU); the same keys before and after any round."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore entries of :meth:`state`.

        Raises:
            ValueError: a key :meth:`state` does not have.
        """
        unknown = set(state) - set(self.state())
        if unknown:
            raise ValueError(f"{self.prefix or type(self).__name__} state has no entries {sorted(unknown)[:5]}")

    def extra_weights(self) -> dict[str, torch.Tensor]:
        """Global weights beyond the shared parameters this rule receives, by name: the tensors they are
        copied into (SCAFFOLD's server control). A site uploads the same names (:meth:`extra_uploads`)."""
        return {}

    def begin_round(self, trainer: Any, round_num: int, server_state: dict[str, Any]) -> None:
        """Called before :meth:`start_round` with the server's algorithm state (``meta[STATE]``)."""

    def start_round(
        self, model: nn.Module, anchor: dict[str, torch.Tensor], steps_per_epoch: int, local_epochs: int
    ) -> RoundHooks:
        """Hooks for this round's local steps; ``anchor`` = the shared weights received this round."""
        return RoundHooks()

    def finish_round(self, model: nn.Module, anchor: dict[str, torch.Tensor]) -> None:
        """Called once after the round's local epochs."""

    def extra_uploads(self) -> dict[str, torch.Tensor]:
        """This round's values of the :meth:`extra_weights` names (e.g. SCAFFOLD's control delta)."""
        return {}

    def optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        """Optimizers of models the rule trains besides the site's model (their state is personal:
        ``optim/<name>/``; the trainer sets their learning rate every round)."""
        return {}

    def after_round(self, trainer: Any, anchor: dict[str, torch.Tensor], round_num: int) -> None:
        """Called after the site's local epochs and :meth:`finish_round` (Ditto trains its personal model here)."""

    def extras(self, trainer: Any, round_num: int) -> dict[str, Any]:
        """The round's algorithm uploads beside the weights (plain Python after ``to_plain``; FedDG's amplitudes)."""
        return {}

    def evaluation_model(self) -> nn.Module | None:
        """The model the site is evaluated with instead of its federated model (Ditto's personal one), or None."""
        return None


class ServerRule:
    """A strategy's server part; the defaults are the plain protocol (state unchanged, weighted mean, no extras)."""

    def is_extra(self, name: str) -> bool:
        """Whether a global weight name is one of the rule's extra weights (not a model parameter)."""
        return False

    def initial_extras(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Round-0 extra global weights, from the round-0 model weights."""
        return {}

    def next_extras(self, extras: dict[str, np.ndarray], uploads: list[Upload]) -> dict[str, np.ndarray]:
        """The next round's extra weights from this round's ``extras`` and the uploads' values of them."""
        return {}

    def next_state(
        self, spec: dict[str, Any], global_weights: dict[str, np.ndarray], state: dict[str, Any], uploads: list[Upload]
    ) -> dict[str, Any]:
        """The algorithm state (plain Python) for the next round, from this round's ``state``."""
        return state

    def average(
        self, spec: dict[str, Any], global_weights: dict[str, np.ndarray], uploads: list[Upload], state: dict[str, Any]
    ) -> dict[str, np.ndarray] | None:
        """The next global weights from this round's ``state``, or None for the sample-weighted mean."""
        return None


def _module(algo: Algorithm) -> Any:
    from omnifm.algorithms import ditto, feddg, feddyn, fedrep, moon, scaffold  # the strategy files import this module

    modules = {"fedrep": fedrep, "feddyn": feddyn, "scaffold": scaffold, "ditto": ditto, "feddg": feddg, "moon": moon}
    return modules[algo.rule]


def site_rule(algo: Algorithm, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> SiteRule | None:
    """The site part of ``algo``'s strategy file, or None when it has none."""
    site = getattr(_module(algo), "SITE", None) if algo.rule else None
    return None if site is None else site(spec, model, shared_names)


def server_rule(algo: Algorithm) -> ServerRule | None:
    """The server part of ``algo``'s strategy file, or None when its server rule is the plain protocol."""
    return getattr(_module(algo), "SERVER", None) if algo.rule else None
