"""The unsupervised fusion loss in the spirit of U2Fusion (Xu et al., TPAMI 2020), with content-derived weights.

For a fused slice ``F`` and its sources ``I_1, I_2`` (all in ``[0, 1]``), per sample::

    loss = sum_k mean_x[ W_k(x) (1 - SSIM_k(x)) ] + alpha * sum_k mean_x[ W_k(x) (F(x) - I_k(x))^2 ]

``SSIM_k(x)`` is MONAI's SSIM map of ``F`` against ``I_k`` (11x11 Gaussian window, data range 1;
``x`` over the window centres for the first sum, over every pixel for the second). The batch loss
is the mean over samples. The weights ``W`` come from the sources only (no gradient) and sum to 1
over ``k`` at every ``x``:

- ``weighting="image"`` (U2Fusion's form): one weight per source and sample,
  ``w_k = softmax_k(log(g_k + eps) / tau)`` with ``g_k = mean_x |grad I_k|^2`` the source's gradient
  energy (:func:`gradient_energy`). With constant weights the loss is exactly U2Fusion's
  ``sum_k w_k [(1 - SSIM(F, I_k)) + alpha MSE(F, I_k)]``.
- ``weighting="pixel"``: the same softmax per pixel over the *local* gradient energy, ``|grad I_k|^2``
  smoothed by a Gaussian of ``sigma`` 2 pixels (:func:`local_gradient_energy`): each source is kept
  where it has the structure. A smooth PET has little gradient energy overall but a lot at the rim
  of a hot lesion; the per-image weights give it about 0.2 everywhere, so its uptake fades from the
  fused image, the per-pixel weights keep it there.

**Why these weights.** U2Fusion measures each source's information by the gradient energy of its
feature maps in a pretrained VGG-16 and sets ``w = softmax(g / c)``. No pretrained VGG is
available here (nothing is downloaded), so ``g`` is the gradient energy of the source image
itself — the quantity U2Fusion's measure reduces to at VGG's first layer. VGG's feature
magnitudes are what fixed U2Fusion's constant ``c``; a raw image's gradient energy depends on its
modality's range and noise instead, so the softmax is taken over ``log g`` with a temperature
``tau``: the weights are scale-free, ``tau = 1`` makes them proportional to ``g``, ``tau -> inf``
gives equal weights and ``tau -> 0`` selects the sharper source. ``alpha`` is U2Fusion's 20.
"""

from __future__ import annotations

import torch
from monai.metrics.regression import compute_ssim_and_cs
from monai.networks.layers import GaussianFilter
from torch import nn

EPS = 1e-8
WEIGHTINGS = ("image", "pixel")
SSIM_WINDOW, SSIM_SIGMA, LOCAL_SIGMA = 11, 1.5, 2.0


def _squared_gradient(images: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` -> ``(B, K, H, W)``: ``dy^2 + dx^2`` of forward differences (0 past the last row / column)."""
    out = torch.zeros_like(images)
    out[..., :-1, :] += (images[..., 1:, :] - images[..., :-1, :]).square()
    out[..., :, :-1] += (images[..., :, 1:] - images[..., :, :-1]).square()
    return out


def gradient_energy(images: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` -> ``(B, K)``: the mean squared forward-difference gradient of each image.

    Examples::

        >>> x = torch.zeros(1, 2, 4, 4); x[0, 1, :, 2:] = 1.0   # source 2 has one vertical edge
        >>> gradient_energy(x).tolist()
        [[0.0, 0.25]]
    """
    return _squared_gradient(images).mean(dim=(-2, -1))


def local_gradient_energy(images: torch.Tensor, sigma: float = LOCAL_SIGMA) -> torch.Tensor:
    """``(B, K, H, W)`` -> ``(B, K, H, W)``: the squared gradient smoothed by a Gaussian of ``sigma`` pixels."""
    return GaussianFilter(2, sigma).to(images.device)(_squared_gradient(images))


def information_weights(sources: torch.Tensor, temperature: float = 1.0, weighting: str = "image") -> torch.Tensor:
    """Information-preservation weights of ``(B, K, H, W)`` sources, summing to 1 over ``K``.

    Returns:
        ``(B, K)`` for ``weighting="image"``, ``(B, K, H, W)`` for ``"pixel"`` (see the module docstring).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    energy = gradient_energy if weighting == "image" else local_gradient_energy
    return torch.softmax(torch.log(energy(sources.detach()) + EPS) / temperature, dim=1)


class FusionLoss(nn.Module):
    """``loss(fused (B, 1, H, W), sources (B, K, H, W))`` -> scalar (the module docstring's formula).

    Args:
        mse_weight: ``alpha``, the weight of the intensity (MSE) term.
        temperature: ``tau`` of the weights' softmax.
        weighting: ``image`` (one weight per source and sample) or ``pixel`` (per pixel).
    """

    def __init__(self, mse_weight: float = 20.0, temperature: float = 1.0, weighting: str = "image") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.mse_weight, self.temperature, self.weighting = float(mse_weight), float(temperature), weighting

    def forward(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        if fused.ndim != 4 or fused.shape[1] != 1 or sources.shape[0] != fused.shape[0]:
            raise ValueError(f"fused must be (B, 1, H, W) and sources (B, K, H, W), got {tuple(fused.shape)}, "
                             f"{tuple(sources.shape)}")
        weights = information_weights(sources, self.temperature, self.weighting)
        if weights.ndim == 2:
            weights = weights[..., None, None]
        crop = SSIM_WINDOW // 2  # the SSIM map covers the window centres
        total = fused.new_zeros(fused.shape[0])
        for k in range(sources.shape[1]):
            source, weight = sources[:, k : k + 1], weights[:, k : k + 1]
            ssim_map, _ = compute_ssim_and_cs(fused, source, 2, [SSIM_WINDOW] * 2, [SSIM_SIGMA] * 2, data_range=1.0)
            centre = weight if weight.shape[-1] == 1 else weight[..., crop:-crop, crop:-crop]
            total = total + (centre * (1 - ssim_map)).mean(dim=(1, 2, 3))
            total = total + self.mse_weight * (weight * (fused - source).square()).mean(dim=(1, 2, 3))
        return total.mean()
