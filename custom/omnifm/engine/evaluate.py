"""Whole-volume evaluation with MONAI's Dice metric."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from torch import nn

from omnifm.data import volume_slices
from omnifm.engine.retrieval import Retriever


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
    prototypes = retriever(token).prototypes if retriever is not None else None
    return model(x, prototypes=prototypes, spectral_token=token).logits.argmax(dim=1, keepdim=True).cpu()


def evaluate_volumes(
    model: nn.Module, volumes: list[dict[str, np.ndarray]], device: torch.device, retriever: Retriever | None
) -> dict[str, float]:
    """Mean foreground Dice over the volumes that contain foreground (MONAI ``DiceMetric``).

    Returns ``{"dice": float, "cases": int}``; ``dice`` is NaN when no volume has foreground.
    """
    model.eval()
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    num_classes = model.network.out_channels
    for case in volumes:
        pred = predict_volume(model, case["image"], device, retriever)
        label = torch.as_tensor(case["label"]).long()
        metric(one_hot(pred[None], num_classes), one_hot(label[None], num_classes))
    scores = metric.aggregate().flatten()
    metric.reset()
    valid = scores[~torch.isnan(scores)]
    return {"dice": float(valid.mean()) if valid.numel() else math.nan, "cases": int(valid.numel())}
