"""Super-resolution metrics through MONAI: PSNR and SSIM per case, averaged over cases.

Slices are in ``[0, 1]`` (:func:`~omnifm.tasks.super_resolution.dataset.unit_range`), so PSNR's
``max_val`` and SSIM's ``data_range`` are 1; a reconstruction is clipped to ``[0, 1]`` before
scoring (the network's output and the interpolation baselines alike). Per case: PSNR of all its
scored slices together (one mean squared error), SSIM the mean of MONAI's 2D SSIM (11x11
Gaussian window) over its slices; a site's score is the mean over its cases.
"""

from __future__ import annotations

import math

import torch
from monai.metrics import PSNRMetric, SSIMMetric

DATA_RANGE = 1.0


def case_psnr_ssim(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one case's ``(S, C, H, W)`` reconstruction against its ``(S, C, H, W)`` target.

    Examples::

        >>> target = torch.zeros(2, 1, 16, 16)
        >>> psnr, ssim = case_psnr_ssim(target + 0.1, target)   # MSE 0.01 -> 20 dB
        >>> round(psnr, 3)
        20.0
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must both be (S, C, H, W), got {tuple(pred.shape)}, {tuple(target.shape)}")
    pred = pred.float().clamp(0.0, DATA_RANGE)
    target = target.float()
    psnr = PSNRMetric(max_val=DATA_RANGE, reduction="mean")(pred.flatten(0, 1)[None], target.flatten(0, 1)[None])
    ssim = SSIMMetric(spatial_dims=2, data_range=DATA_RANGE, reduction="mean")(pred, target)
    return float(psnr.mean()), float(ssim.mean())


def mean_scores(per_case: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """The mean over cases of each key (NaN without cases; an infinite PSNR, a perfect case, counts as is)."""
    if not per_case:
        return {k: math.nan for k in keys}
    return {k: float(sum(c[k] for c in per_case) / len(per_case)) for k in keys}
