"""Super-resolution samples: a case's head slices, rescaled to [0, 1], with their LR acquisition.

The sites' normalised intensities live on different ranges (CT ``[0, 1]``, MR a robust z-score
clipped to ``[-6, 6]``, PET an uptake ratio up to 20; :mod:`omnifm.data.normalize`). PSNR needs
one peak value, so every case is mapped to ``[0, 1]`` by its own minimum and maximum
(:func:`unit_range`, per channel): the target's dynamic range is then exactly 1, the ``max_val``
of PSNR and the ``data_range`` of SSIM.

Slices: the axial slices inside the head, i.e. those where at least ``min_head_fraction`` of the
pixels exceed ``HEAD_LEVEL`` of the case's range (every slice of the built-in phantom; air-only
end slices of a real scan are left out, they hold nothing to restore).

Value map (the knowledge bank's class-conditional values, :func:`value_classes_map`): 0 air,
1 head tissue outside the tumour, 2+ the label volume's tumour classes. What an SR network has to
restore differs by region: nothing but ringing in air, the tissue edges of the head, the
texture of each tumour sub-region (whose contrast differs most across modalities); a site's
values are its tapped-feature means per region, so a site retrieves how other sites' features
look there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from omnifm.data.loading import volume_slices
from omnifm.tasks.base import Case
from omnifm.tasks.super_resolution.degrade import kspace_lowpass

HEAD_LEVEL = 0.1  # a pixel is head when above this fraction of the case's [0, 1] range
AIR, TISSUE = 0, 1  # value classes below the tumour classes (label class c > 0 -> value class c + 1)


def unit_range(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(C, H, W, D)`` -> float32 ``(C, H, W, D)`` in ``[0, 1]``: each channel by its own min and max (flat: 0).

    Examples::

        >>> unit_range(np.array([[[[-2.0, 0.0, 2.0]]]])).flatten().tolist()
        [0.0, 0.5, 1.0]
    """
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    low = x.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    span = x.flatten(1).max(dim=1).values.view(-1, 1, 1, 1) - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), torch.zeros_like(x))


def head_slices(unit: torch.Tensor, min_head_fraction: float) -> torch.Tensor:
    """Indices of the axial slices of a ``[0, 1]`` case ``(C, H, W, D)`` with at least that much head."""
    head = (unit.amax(dim=0) > HEAD_LEVEL).float().mean(dim=(0, 1))  # (D,)
    return torch.nonzero(head >= min_head_fraction).flatten()


def case_slices(case: Case, min_head_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The HR targets ``(S, C, H, W)`` of a case (its head slices, in ``[0, 1]``) and their slice indices ``(S,)``."""
    unit = unit_range(case["image"])
    keep = head_slices(unit, min_head_fraction)
    return volume_slices(unit)[keep], keep


def value_classes_map(unit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``(S, C, H, W)`` ``[0, 1]`` slices + ``(S, 1, H, W)`` label classes -> ``(S, 1, H, W)`` int64 value classes."""
    head = torch.where(unit.amax(dim=1, keepdim=True) > HEAD_LEVEL, TISSUE, AIR)
    label = label.long()
    return torch.where(label > 0, label + 1, head)


class SRSliceDataset(Dataset):
    """Head slices of a site's cases with their LR acquisition (nothing random).

    Args:
        cases: the site's loaded cases (``image`` (C, H, W, D), ``label`` (1, H, W, D)).
        scale: 2, 4 or 8 (:func:`~omnifm.tasks.super_resolution.degrade.kspace_lowpass`).
        min_head_fraction: see :func:`head_slices`.

    Items are ``{"image": LR float32 (C, H, W) on the HR grid, "label": HR target (C, H, W),
    "classes": int64 (1, H, W) value classes}``.
    """

    def __init__(self, cases: Sequence[Case], scale: int, min_head_fraction: float) -> None:
        if len(cases) == 0:
            raise ValueError("cases must not be empty, got 0 cases")
        targets, classes = [], []
        for case in cases:
            hr, keep = case_slices(case, min_head_fraction)
            targets.append(hr)
            classes.append(value_classes_map(hr, volume_slices(case["label"])[keep]))
        self.targets, self.classes = torch.cat(targets), torch.cat(classes)
        if len(self.targets) == 0:
            raise ValueError(f"no slice of this site's cases has {min_head_fraction:.0%} head (min_head_fraction)")
        self.inputs = kspace_lowpass(self.targets, scale)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {"image": self.inputs[item], "label": self.targets[item], "classes": self.classes[item]}
