"""Whole-volume evaluation with MONAI's Dice metric."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import DiceMetric
from torch import nn

from omnifm.data import volume_slices
from omnifm.engine.retrieval import Retriever
from omnifm.task import SegTask


@torch.no_grad()
def predict_volume(
    model: nn.Module, image: np.ndarray, device: torch.device, retriever: Retriever | None, batch_size: int = 32
) -> torch.Tensor:
    """Label map (1, H, W, D) for a (C, H, W, D) volume, slice by slice for 2D models."""
    if model.network.dimensions == 3:
        return _predict(model, torch.as_tensor(image)[None].to(device), retriever)[0]
    slices = volume_slices(image)
    preds = [_predict(model, chunk.to(device), retriever) for chunk in torch.split(slices, batch_size)]
    return torch.cat(preds).permute(1, 2, 3, 0)  # (D, 1, H, W) -> (1, H, W, D)


def _predict(model: nn.Module, x: torch.Tensor, retriever: Retriever | None) -> torch.Tensor:
    token = model.spectral_token(x)
    got = retriever(token) if retriever is not None else None
    prototypes, values = (got.prototypes, got.values) if got is not None else (None, None)
    return model(x, prototypes=prototypes, spectral_token=token, values=values).logits.argmax(dim=1, keepdim=True).cpu()


def evaluate_volumes(
    model: nn.Module,
    volumes: list[dict[str, np.ndarray]],
    device: torch.device,
    retriever: Retriever | None,
    task: SegTask,
) -> dict[str, float]:
    """Dice per report region (MONAI ``DiceMetric``), averaged over the volumes that contain the region.

    Returns ``{"dice": mean over regions, "dice_<region>": ..., "cases": volumes evaluated}``; a
    region no volume contains is NaN and left out of ``dice``.
    """
    model.eval()
    preds = [predict_volume(model, case["image"], device, retriever) for case in volumes]
    return region_dice(preds, [case["label"] for case in volumes], task)


def region_dice(preds: list[torch.Tensor], labels: list[np.ndarray], task: SegTask) -> dict[str, float]:
    """:func:`evaluate_volumes`'s scores for given label-map predictions ``(1, H, W, D)`` and labels."""
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    for pred, label in zip(preds, labels):
        metric(task.region_masks(pred[None]), task.region_masks(torch.as_tensor(label).long()[None]))
    scores = metric.aggregate() if preds else torch.full((0, len(task.regions)), math.nan)
    metric.reset()
    per_region = {f"dice_{name}": _nanmean(scores[:, i]) for i, name in enumerate(task.regions)}
    return {"dice": _nanmean(torch.tensor(list(per_region.values()))), **per_region, "cases": len(preds)}


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else math.nan
