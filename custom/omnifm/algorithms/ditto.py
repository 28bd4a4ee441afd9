"""Ditto (Li et al., ICML 2021), the whole rule: a personal model next to the federated one.

Every round the site trains the federated (FedAvg) model as usual, then its personal copy of the
whole network for the same number of epochs on its own data order (stream 1) with
``ditto_lambda / 2 * ||v - w||^2`` pulling the personal weights ``v`` towards the global shared
weights ``w`` received this round. Only ``w`` is uploaded; the server is FedAvg. The site is
evaluated with its personal model. The personal model is personal state under ``ditto/`` (its
``state_dict``), its Adam state under ``optim/ditto/``.

Variant: the paper takes ``s`` personal steps of SGD; here the personal model gets the site's
local epochs with Adam (the benchmark's optimizer protocol), at the round's learning rate.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from omnifm.algorithms.rule import SiteRule

if TYPE_CHECKING:
    from omnifm.engine.site import SiteTrainer


class DittoSite(SiteRule):
    """Ditto's site part: the personal model, its optimizer, its round of training and its evaluation.

    Args:
        spec: run spec (``ditto_lambda``).
        model: the site's federated model; the personal model starts as a copy of it.
        shared_names: the shared parameter names (the anchor's names).
    """

    prefix = "ditto"

    def __init__(self, spec: dict[str, Any], model: nn.Module, shared_names: list[str]) -> None:
        super().__init__(spec, model, shared_names)
        self.personal_model = copy.deepcopy(model)
        self.lam = float(spec["ditto_lambda"])

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.personal_model.state_dict())

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        target = self.personal_model.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                target[name].copy_(value)

    def optimizers(self, learning_rate: float) -> dict[str, torch.optim.Optimizer]:
        return {"ditto": torch.optim.Adam(self.personal_model.parameters(), lr=learning_rate)}

    def evaluation_model(self) -> nn.Module:
        return self.personal_model

    def after_round(self, trainer: SiteTrainer, anchor: dict[str, torch.Tensor], round_num: int) -> None:
        """The personal model's epochs, pulled to the received global model by ``ditto_lambda``."""
        from omnifm.engine.train import train_epoch
        from omnifm.losses import proximal_term

        model, epochs = self.personal_model, trainer.config.local_epochs
        regularizer = lambda: proximal_term(model.named_parameters(), anchor, self.lam)  # noqa: E731
        loader = trainer.round_loader(round_num, stream=1)
        for epoch in range(epochs):
            stats = train_epoch(model, loader, trainer.optimizers["ditto"], trainer.loss_fn, trainer.device, None, 0.0,
                                regularizer=regularizer)
            trainer.logger.info("ditto personal epoch %d/%d: %s", epoch + 1, epochs,
                                " ".join(f"{k}={v:.4f}" for k, v in stats.means().items()))


SITE = DittoSite
SERVER = None  # the server is FedAvg
