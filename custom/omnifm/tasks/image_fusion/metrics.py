"""Fusion metrics as the paper's Table 7 reads them: MI and SSIM between the fused image and each source, and L1.

Per case (all its scored head slices together), with the fused image ``F`` and the sources ``A``
(slot 0: CT / PET / SPECT) and ``B`` (slot 1: MRI), all in ``[0, 1]``:

- ``mi_a`` / ``mi_b``: mutual information ``MI(F, A)`` / ``MI(F, B)`` in **bits**, from a joint
  histogram of 32 x 32 equal bins on ``[0, 1]`` over every pixel of the slices (:func:`mutual_information`);
  higher is better (the fused image carries more of that source). ``mi`` = ``mi_a + mi_b``, the usual
  fusion MI (Qu et al., 2002).
- ``ssim_a`` / ``ssim_b``: MONAI's 2D SSIM (11x11 Gaussian window, data range 1), mean over slices;
  higher is better. ``ssim`` = their mean.
- ``l1_a`` / ``l1_b``: mean absolute difference; lower is better. ``l1`` = their mean. Note that
  ``|F - A| + |F - B| = |A - B|`` wherever ``F`` lies between the sources, so ``l1`` is the same for
  every fusion that stays between them (the average, max-selection, any per-pixel mix): only the
  split into ``l1_a`` / ``l1_b`` says which source the fused image keeps.
- ``ssim_w``: the information-weighted SSIM ``mean over slices of sum_k w_k SSIM(F, I_k)``, with
  per-slice gradient-energy weights ``w`` (:func:`~omnifm.tasks.image_fusion.loss.information_weights`,
  ``weighting="image"``, computed from the sources alone, so every method is weighted alike) — SSIM weighted by each
  source's saliency, in the spirit of Piella and Heijmans' weighted fusion quality index (2003).
  The task's headline (:mod:`omnifm.tasks.image_fusion.task` says why).

A site's score is the mean over its paired cases. The air around the head is in every pixel count
(for the network and the baselines alike), so MI includes the shared head outline.
"""

from __future__ import annotations

import torch
from monai.metrics import SSIMMetric

BINS = 32


def mutual_information(x: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> float:
    """MI (bits) of two same-shaped images in ``[0, 1]`` from their ``bins x bins`` joint histogram.

    Examples::

        >>> x = torch.tensor([0.0, 0.0, 1.0, 1.0])
        >>> mutual_information(x, x), mutual_information(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))
        (1.0, 0.0)
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    ix = (x.flatten().float().clamp(0, 1) * bins).long().clamp_max(bins - 1)
    iy = (y.flatten().float().clamp(0, 1) * bins).long().clamp_max(bins - 1)
    joint = torch.bincount(ix * bins + iy, minlength=bins * bins).view(bins, bins).double()
    joint = joint / joint.sum()
    px, py = joint.sum(dim=1, keepdim=True), joint.sum(dim=0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * torch.log2(joint[nz] / (px @ py)[nz])).sum())


def fusion_scores(fused: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
    """``mi_a, mi_b, ssim_a, ssim_b, l1_a, l1_b``, the summaries ``mi, ssim, l1`` and ``ssim_w`` of one case.

    Args:
        fused: ``(S, 1, H, W)`` in ``[0, 1]`` (clipped here).
        sources: ``(S, 2, H, W)`` in ``[0, 1]``.
        weights: ``(S, 2)`` information weights of the sources (rows sum to 1).
    """
    if fused.ndim != 4 or fused.shape[1] != 1 or sources.shape[1] != 2 or fused.shape[0] != sources.shape[0]:
        raise ValueError(f"fused must be (S, 1, H, W) and sources (S, 2, H, W), got {tuple(fused.shape)}, "
                         f"{tuple(sources.shape)}")
    fused = fused.float().clamp(0, 1)
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
    out: dict[str, float] = {}
    per_slice = []
    for k, name in enumerate("ab"):
        source = sources[:, k : k + 1].float()
        per_slice.append(ssim(fused, source).view(-1))  # (S,)
        out[f"mi_{name}"] = mutual_information(fused, source)
        out[f"ssim_{name}"] = float(per_slice[-1].mean())
        out[f"l1_{name}"] = float((fused - source).abs().mean())
    out.update({"mi": out["mi_a"] + out["mi_b"], "ssim": (out["ssim_a"] + out["ssim_b"]) / 2,
                "l1": (out["l1_a"] + out["l1_b"]) / 2,
                "ssim_w": float((weights.float() * torch.stack(per_slice, dim=1)).sum(dim=1).mean())})
    return out


def baselines(sources: torch.Tensor) -> dict[str, torch.Tensor]:
    """The trivial fusions of ``(S, 2, H, W)`` sources: ``avg`` (A + B) / 2 and ``max`` pixel-wise maximum."""
    return {"avg": sources.mean(dim=1, keepdim=True), "max": sources.amax(dim=1, keepdim=True)}
