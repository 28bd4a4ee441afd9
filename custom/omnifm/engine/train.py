"""Framework-free local training: one pass over a site's loader with the OmniFM objective."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from omnifm.engine.retrieval import Retriever
from omnifm.losses import local_objective, spectral_alignment


@dataclass
class EpochStats:
    """Running sums over one epoch; ``tokens`` are the detached spectral tokens seen."""

    loss: float = 0.0
    task_loss: float = 0.0
    align_loss: float = 0.0
    steps: int = 0
    samples: int = 0
    tokens: list[torch.Tensor] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"loss": self.loss / n, "task_loss": self.task_loss / n, "align_loss": self.align_loss / n}


def train_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    retriever: Retriever | None,
    align_weight: float,
    logger: logging.Logger | None = None,
    log_every: int = 0,
    regularizer: Callable[[], torch.Tensor] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    batch_term: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EpochStats:
    """Train ``model`` for one epoch on ``loader`` with ``L_task + align_weight * L_align (+ regularizer())``.

    ``L_align`` is :func:`omnifm.losses.spectral_alignment`: SPAlign towards the retrieved keys plus
    the token-variance floor that keeps it from collapsing the tokenizer.

    Algorithm hooks: ``regularizer`` is an extra loss term evaluated every step (FedProx, Ditto);
    ``augment`` maps a batch of images (B, C, *spatial) before the forward pass (FedDG);
    ``after_backward`` may change the gradients before the optimizer step (SCAFFOLD);
    ``batch_term`` is an extra loss term of the step's images (B, C, *spatial) on ``device`` (MOON).
    """
    model.train()
    stats = EpochStats()
    hooks = (regularizer, batch_term, after_backward)
    for batch in loader:
        image, label = batch["image"], batch["label"].to(device)
        image = (augment(image) if augment is not None else image).to(device)
        task, align, token = _step(model, image, label, optimizer, loss_fn, retriever, align_weight, hooks)
        stats.loss += task + align_weight * align
        stats.task_loss += task
        stats.align_loss += align
        stats.steps += 1
        stats.samples += image.shape[0]
        if token is not None:
            stats.tokens.append(token)
        if logger and log_every and stats.steps % log_every == 0:
            logger.info("step %d/%d loss %.4f", stats.steps, len(loader), stats.loss / stats.steps)
    return stats


def _step(
    model: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    retriever: Retriever | None,
    align_weight: float,
    hooks: tuple[Callable[[], torch.Tensor] | None, Callable[[torch.Tensor], torch.Tensor] | None,
                 Callable[[nn.Module], None] | None],
) -> tuple[float, float, torch.Tensor | None]:
    regularizer, batch_term, after_backward = hooks
    optimizer.zero_grad(set_to_none=True)
    loss, task, align, token, retrieved = batch_loss(model, image, label, loss_fn, retriever, align_weight)
    if regularizer is not None:
        loss = loss + regularizer()
    if batch_term is not None:
        loss = loss + batch_term(image)
    loss.backward()
    if after_backward is not None:
        after_backward(model)
    optimizer.step()
    if retrieved is not None:
        retriever.record(retrieved)
    return float(task.detach()), float(align.detach()), None if token is None else token.detach().cpu()


def batch_loss(
    model: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    loss_fn: nn.Module,
    retriever: Retriever | None,
    align_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, object]:
    """The local objective of one batch: ``(loss, task, align, token, retrieved)`` (no backward, no step).

    Shared by :func:`train_epoch` and the DP-SGD path (:mod:`omnifm.engine.privacy`), which calls it
    once per case to get per-case gradients.
    """
    token = model.spectral_token(image)
    retrieved = retriever(token) if retriever is not None else None
    prototypes = retrieved.prototypes if retrieved is not None else None
    values = retrieved.values if retrieved is not None else None
    out = model(image, prototypes=prototypes, spectral_token=token, values=values)
    task = loss_fn(out.logits, label)
    align = spectral_alignment(token, prototypes) if token is not None else task.new_zeros(())
    return local_objective(task, align, align_weight), task, align, token, retrieved
