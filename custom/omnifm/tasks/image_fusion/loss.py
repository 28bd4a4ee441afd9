"""The unsupervised fusion loss in the spirit of U2Fusion (Xu et al., TPAMI 2020), with content-derived weights.

For a fused slice ``F`` and its sources ``I_1, I_2`` (all in ``[0, 1]``), per sample::

    g_k   = mean over pixels of |grad I_k|^2           (forward differences; the source's gradient energy)
    w_k   = softmax_k( log(g_k + eps) / tau )          (= g_k^(1/tau) / sum_j g_j^(1/tau))
    loss  = sum_k w_k * ( (1 - SSIM(F, I_k)) + alpha * MSE(F, I_k) )

and the batch loss is the mean over samples. ``w`` is computed from the sources only (no gradient).

**Why these weights.** U2Fusion measures each source's information by the gradient energy of its
feature maps in a pretrained VGG-16 and sets ``w = softmax(g / c)``. No pretrained VGG is
available here (nothing is downloaded), so ``g_k`` is the gradient energy of the source image
itself — the quantity U2Fusion's measure reduces to at VGG's first layer. VGG's feature
magnitudes are what fixed U2Fusion's constant ``c``; a raw image's gradient energy depends on its
modality's range and noise instead, so the softmax is taken over ``log g`` with a temperature
``tau``: the weights are scale-free, ``tau = 1`` makes them proportional to ``g`` (a source with
twice the gradient energy gets twice the weight), ``tau -> inf`` gives equal weights and
``tau -> 0`` selects the sharper source. ``alpha`` is U2Fusion's 20. SSIM is MONAI's (11x11
Gaussian window, data range 1).
"""

from __future__ import annotations

import torch
from monai.losses import SSIMLoss
from torch import nn

EPS = 1e-8


def gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` -> ``(B, K)``: the mean squared forward-difference gradient of each image.

    Examples::

        >>> x = torch.zeros(1, 2, 4, 4); x[0, 1, :, 2:] = 1.0   # source 2 has one vertical edge
        >>> gradient_energy(x).tolist()
        [[0.0, 0.25]]
    """
    dy = images[..., 1:, :] - images[..., :-1, :]
    dx = images[..., :, 1:] - images[..., :, :-1]
    height, width = images.shape[-2:]
    return (dy.square().sum(dim=(-2, -1)) + dx.square().sum(dim=(-2, -1))) / (height * width)


def information_weights(sources: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(B, K, H, W)`` sources -> ``(B, K)`` information-preservation weights (rows sum to 1), see the module docstring."""
    return torch.softmax(torch.log(gradient_energy(sources.detach()) + EPS) / temperature, dim=1)


class FusionLoss(nn.Module):
    """``loss(fused (B, 1, H, W), sources (B, K, H, W))`` -> scalar (the module docstring's formula).

    Args:
        mse_weight: ``alpha``, the weight of the intensity (MSE) term.
        temperature: ``tau`` of the weights' softmax.
    """

    def __init__(self, mse_weight: float = 20.0, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.mse_weight, self.temperature = float(mse_weight), float(temperature)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, reduction="none")

    def forward(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        if fused.ndim != 4 or fused.shape[1] != 1 or sources.shape[0] != fused.shape[0]:
            raise ValueError(f"fused must be (B, 1, H, W) and sources (B, K, H, W), got {tuple(fused.shape)}, "
                             f"{tuple(sources.shape)}")
        weights = information_weights(sources, self.temperature)  # (B, K)
        terms = []
        for k in range(sources.shape[1]):
            source = sources[:, k : k + 1]
            ssim_loss = self.ssim(fused, source).view(-1)  # (B,) 1 - SSIM
            mse = (fused - source).square().mean(dim=(1, 2, 3))
            terms.append(ssim_loss + self.mse_weight * mse)
        return (weights * torch.stack(terms, dim=1)).sum(dim=1).mean()
