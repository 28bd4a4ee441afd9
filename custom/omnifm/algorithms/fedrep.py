"""FedRep (Collins et al., ICML 2021, "Exploiting Shared Representations for Personalized Federated Learning").

The whole rule, site and server part:

* **Split.** The body (representation) is shared and averaged; the head is personal. For the
  UNet the split is FedPer's: the decoder (all up-sampling blocks, the task head) is the head,
  everything else (encoder + bottleneck) is the body (``Algorithm.personal = {"head"}``).
* **Site.** Each round first trains the head with the body frozen for ``fedrep_head_epochs``
  epochs, then the body with the head frozen for the remaining local epochs. Freezing is
  ``requires_grad = False``: a frozen parameter gets no gradient, so the site's one Adam
  optimizer skips it (its moments and step count stay as they were) and the backward pass of
  the head phase does not even reach the encoder.
* **Server.** The sample-weighted mean of the bodies: the plain protocol, so there is no
  server part here (and HE can run FedRep).

When ``local_epochs <= fedrep_head_epochs`` a round cannot hold the head epochs and one body
epoch, and with whole epochs the body would never train (nothing would be federated). The split
then moves inside the epochs and keeps FedRep's proportion of ``fedrep_head_epochs`` head epochs
to one body epoch: the first ``floor(T * k / (k + 1))`` of the round's ``T`` steps train the
head, the rest the body (with ``local_epochs = 1``, ``k = 1``: the first half of the epoch's
steps). See :func:`head_steps`.

Variant: the paper uses SGD with separate head and body step counts per round; here both phases
use the site's Adam optimizer (kept across rounds) at the round's learning rate, like every
other baseline of the project.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnifm.algorithms.rule import RoundHooks, SiteRule
from omnifm.validation import check_int


def head_steps(head_epochs: int, local_epochs: int, steps_per_epoch: int) -> int:
    """Number of the round's first steps that train the head only (the others train the body only).

    Args:
        head_epochs: ``fedrep_head_epochs`` (k).
        local_epochs: the site's local epochs per round (E).
        steps_per_epoch: batches per epoch (S).

    Returns:
        ``k * S`` when ``k < E`` (whole head epochs, then whole body epochs), else
        ``floor(E * S * k / (k + 1))`` (FedRep's k : 1 proportion inside the round's steps; at least
        one step of each phase once the round has two steps).

    Examples::

        >>> head_steps(1, 3, 5)  # 1 head epoch, 2 body epochs
        5
        >>> head_steps(1, 1, 5)  # one epoch: the first 2 of 5 steps train the head
        2
        >>> head_steps(10, 2, 4)  # 10 head epochs do not fit: 10 : 1 of the 8 steps
        7
    """
    k = check_int("fedrep_head_epochs", head_epochs)
    total = check_int("local_epochs", local_epochs) * check_int("steps_per_epoch", steps_per_epoch, 0)
    return k * steps_per_epoch if k < local_epochs else total * k // (k + 1)


class FedRepSite(SiteRule):
    """FedRep's site part: the round's steps alternate from head-only to body-only training.

    Args:
        spec: run spec (``fedrep_head_epochs``).
        model: the site's model.
        shared_names: the body (shared) parameter names; every other parameter is the head.

    Examples::

        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))  # body "0", head "1"
        >>> rule = FedRepSite({"fedrep_head_epochs": 1}, model, ["0.weight", "0.bias"])
        >>> hooks = rule.start_round(model, {}, steps_per_epoch=2, local_epochs=2)
        >>> [p.requires_grad for p in model.parameters()]  # head phase
        [False, False, True, True]
        >>> hooks.after_backward(model); hooks.after_backward(model)  # two steps: body phase next
        >>> [p.requires_grad for p in model.parameters()]
        [True, True, False, False]
        >>> rule.finish_round(model, {})
        >>> all(p.requires_grad for p in model.parameters())
        True
    """

    prefix = "fedrep"

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        super().__init__(spec, model, shared_names)
        self.head_epochs = check_int("fedrep_head_epochs", spec["fedrep_head_epochs"])
        self.body = frozenset(shared_names)

    def start_round(
        self, model: nn.Module, anchor: dict[str, torch.Tensor], steps_per_epoch: int, local_epochs: int
    ) -> RoundHooks:
        n_head = head_steps(self.head_epochs, local_epochs, steps_per_epoch)
        steps = 0

        def after_backward(trained: nn.Module) -> None:
            nonlocal steps
            steps += 1
            if steps == n_head:  # this step's head gradients are still applied; from the next step on: body
                self._freeze(trained, head=False)

        self._freeze(model, head=n_head > 0)
        return RoundHooks(after_backward=after_backward)

    def finish_round(self, model: nn.Module, anchor: dict[str, torch.Tensor]) -> None:
        for p in model.parameters():
            p.requires_grad_(True)

    def _freeze(self, model: nn.Module, head: bool) -> None:
        """Train the head only (``head``) or the body only: the other part gets no gradient."""
        for name, p in model.named_parameters():
            p.requires_grad_((name in self.body) != head)


SITE = FedRepSite
SERVER = None  # the server averages the bodies like FedAvg/FedPer
