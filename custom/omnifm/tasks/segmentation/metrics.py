"""Segmentation metrics: MONAI's Dice per report region (a region is a union of classes)."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import DiceMetric

from omnifm.tasks.segmentation.task import SegTask


def region_dice(preds: list[torch.Tensor], labels: list[np.ndarray], task: SegTask) -> dict[str, float]:
    """Dice per report region, averaged over the volumes that contain the region.

    Args:
        preds: predicted class-index maps ``(1, H, W, D)``, one per case.
        labels: the cases' label volumes ``(1, H, W, D)``.
        task: the classes and regions.

    Returns:
        ``{"dice": mean over regions, "dice_<region>": ..., "cases": n}``; a region no volume
        contains is NaN and left out of ``dice``.
    """
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    for pred, label in zip(preds, labels):
        metric(task.region_masks(pred[None]), task.region_masks(torch.as_tensor(label).long()[None]))
    scores = metric.aggregate() if preds else torch.full((0, len(task.regions)), math.nan)
    metric.reset()
    per_region = {f"dice_{name}": nanmean(scores[:, i]) for i, name in enumerate(task.regions)}
    return {"dice": nanmean(torch.tensor(list(per_region.values()))), **per_region, "cases": len(preds)}


def nanmean(values: torch.Tensor) -> float:
    """Mean of the non-NaN entries (NaN when there are none)."""
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else math.nan
