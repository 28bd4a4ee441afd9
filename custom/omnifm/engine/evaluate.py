"""Evaluation of a model on a site's cases, whatever the task (the task scores the predictions)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from omnifm.engine.retrieval import Retriever
from omnifm.tasks import Task


@torch.no_grad()
def case_logits(
    model: nn.Module, x: torch.Tensor, device: torch.device, retriever: Retriever | None, batch_size: int = 32
) -> torch.Tensor:
    """The model's logits (CPU) on an input batch ``x``, run in chunks of ``batch_size`` (empty ``x``: ``x[:0, 0]``)."""
    if x.shape[0] == 0:
        return x[:0, 0].flatten(1)
    return torch.cat([_logits(model, chunk.to(device), retriever).cpu() for chunk in torch.split(x, batch_size)])


def _logits(model: nn.Module, x: torch.Tensor, retriever: Retriever | None) -> torch.Tensor:
    token = model.spectral_token(x)
    got = retriever(token) if retriever is not None else None
    prototypes, values = (got.prototypes, got.values) if got is not None else (None, None)
    return model(x, prototypes=prototypes, spectral_token=token, values=values).logits


def predict_case(
    model: nn.Module, case: dict[str, np.ndarray], device: torch.device, retriever: Retriever | None, task: Task
) -> object:
    """The task's compact prediction of one case (segmentation: its (1, H, W, D) label map)."""
    return task.reduce(model, case_logits(model, task.case_inputs(model, case), device, retriever), case)


def evaluate_volumes(
    model: nn.Module,
    volumes: list[dict[str, np.ndarray]],
    device: torch.device,
    retriever: Retriever | None,
    task: Task,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``volumes`` (:meth:`omnifm.tasks.Task.score`; ``task.headline`` among them)."""
    model.eval()
    return task.score([predict_case(model, case, device, retriever, task) for case in volumes], volumes)
