from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from omnifm.engine import evaluate_volumes
from omnifm.tasks.segmentation import SegTask


class _Oracle(nn.Module):
    """Predicts a fixed label volume slice by slice (stands in for a trained model)."""

    def __init__(self, prediction: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.prediction = torch.as_tensor(prediction).long()  # (1, H, W, D)
        self.spatial_dims, self.num_classes = 2, num_classes
        self.calls = 0

    def spectral_token(self, x):
        return None

    def forward(self, x, prototypes=None, spectral_token=None, values=None):
        depth = self.prediction.shape[-1]
        index = torch.arange(self.calls, self.calls + x.shape[0]) % depth
        self.calls += x.shape[0]
        labels = self.prediction[0].permute(2, 0, 1)[index]  # (b, H, W)
        logits = nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()
        return type("Out", (), {"logits": logits})()


def _case(label: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": np.zeros((1, *label.shape[1:]), np.float32), "label": label.astype(np.uint8)}


def test_perfect_prediction_scores_one_per_region():
    label = np.zeros((1, 8, 8, 3), np.uint8)
    label[0, 2:6, 2:6, 1] = 2  # edema
    label[0, 3:5, 3:5, 1] = 3  # enhancing
    scores = evaluate_volumes(_Oracle(label, 4), [_case(label)], torch.device("cpu"), None, SegTask())
    assert scores["dice_WT"] == 1.0 and scores["dice_ET"] == 1.0
    assert math.isnan(scores["dice_TC"]) is False and scores["dice_TC"] == 1.0  # TC = necrotic + enhancing
    assert scores["dice"] == 1.0 and scores["cases"] == 1


def test_region_dice_matches_hand_computation_and_skips_empty_regions():
    label = np.zeros((1, 4, 4, 1), np.uint8)
    label[0, 0, :, 0] = 2  # 4 edema voxels; no necrotic, no enhancing
    pred = np.zeros_like(label)
    pred[0, 0, :2, 0] = 2  # 2 of them found
    pred[0, 3, 3, 0] = 1  # one false necrotic voxel
    scores = evaluate_volumes(_Oracle(pred, 4), [_case(label)], torch.device("cpu"), None, SegTask())
    assert abs(scores["dice_WT"] - 2 * 2 / (3 + 4)) < 1e-6
    assert math.isnan(scores["dice_TC"]) and math.isnan(scores["dice_ET"]), "empty in the reference: not scored"
    assert abs(scores["dice"] - scores["dice_WT"]) < 1e-6


def test_no_volumes_gives_nan_not_an_error():
    scores = evaluate_volumes(_Oracle(np.zeros((1, 2, 2, 1)), 4), [], torch.device("cpu"), None, SegTask())
    assert math.isnan(scores["dice"]) and scores["cases"] == 0
