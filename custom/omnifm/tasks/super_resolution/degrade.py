"""The low-resolution acquisition of a high-resolution slice: k-space truncation, for every modality.

**MR** is acquired in k-space: a scan at ``1/scale`` of the in-plane resolution samples only the
central ``1/scale`` of k-space along each axis. :func:`kspace_lowpass` keeps exactly those
frequencies of the HR slice, ``|k| < N / (2 * scale)`` per axis (``N`` the axis length; a
frequency exactly on that edge, the LR grid's Nyquist bin, at half weight on both sides so the
kept fraction is exactly ``1/scale`` and the result stays real), zeroes the rest and transforms
back: the zero-filled reconstruction, i.e. the LR image on the HR grid. That is the network's
input (same grid as the target; the network's pixel-unshuffle stem keeps its token count
independent of ``scale``). Nothing is random.

**CT and PET** get the same degradation. Their in-plane resolution is set by a low-pass too (the
detector and the reconstruction kernel's point-spread function), so a band limit is a fair model
of a coarser scan; using one degradation for every site keeps the task identical across sites,
so the sites differ by their images only, which is the cross-modality setting of the paper; and a
case carries no modality (``{"image", "label"}``), so a per-modality rule would need the site
config at the task. Area downsampling would blur less sharply (no Gibbs ringing) but is not the
physical MR model.

:func:`lowres_grid` samples the band-limited image at the centres of the LR pixels (``N/scale``
per axis): the LR image at its own grid, which :func:`bicubic_upsample` takes back to the HR grid
as the usual interpolation baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCALES = (2, 4, 8)


def _check_scale(scale: int) -> int:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return int(scale)


def band_weights(n: int, scale: int) -> torch.Tensor:
    """``(n,)`` k-space weights of one axis in FFT order: 1 for ``|k| < n / (2 scale)``, 1/2 on it, 0 beyond.

    Examples::

        >>> band_weights(8, 2).tolist()   # frequencies 0, 1, 2, 3, -4, -3, -2, -1
        [1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.5, 1.0]
    """
    cutoff = n / (2 * _check_scale(scale))
    k = torch.fft.fftfreq(n, dtype=torch.float64).abs() * n
    return torch.where(k < cutoff, 1.0, torch.where(k == cutoff, 0.5, 0.0))


def _filtered(images: torch.Tensor, scale: int, shift: float = 0.0) -> torch.Tensor:
    """The band-limited ``images`` (..., H, W), optionally shifted by ``shift`` pixels towards the origin."""
    height, width = images.shape[-2:]
    spectrum = torch.fft.fft2(images.to(torch.float64))
    weights = []
    for n in (height, width):
        w = band_weights(n, scale).to(torch.complex128)
        if shift:
            w = w * torch.exp(2j * torch.pi * torch.fft.fftfreq(n, dtype=torch.float64) * shift)
        weights.append(w)
    out = torch.fft.ifft2(spectrum * weights[0][:, None] * weights[1][None, :])
    return out.real.to(images.dtype if images.is_floating_point() else torch.float32)


def kspace_lowpass(images: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR acquisition on the HR grid: the central ``1/scale`` of k-space per axis, zero-filled.

    Args:
        images: ``(..., H, W)`` real slices.
        scale: 2, 4 or 8.

    Returns:
        Same shape and dtype as ``images``.

    Examples::

        >>> x = torch.zeros(1, 8, 8); x[0, 4, 4] = 1.0
        >>> y = kspace_lowpass(x, 2)
        >>> y.shape, round(float(y.sum()), 6)   # the mean (k = 0) is kept
        (torch.Size([1, 8, 8]), 1.0)
    """
    return _filtered(images, scale)


def lowres_grid(images: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR acquisition on its own grid ``(..., H/scale, W/scale)``: sampled at the LR pixel centres.

    LR pixel ``i`` covers HR pixels ``i*scale .. (i+1)*scale - 1``; its centre ``(i + 1/2) scale - 1/2``
    is between HR pixels for even ``scale``, so the band-limited image is shifted there exactly
    (a Fourier phase ramp) before sampling. This is the convention of ``F.interpolate`` with
    ``align_corners=False``, so :func:`bicubic_upsample` puts each sample back where it came from.

    Raises:
        ValueError: ``H`` or ``W`` not divisible by ``scale``.
    """
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"slice size {height}x{width} is not divisible by scale {scale}")
    shifted = _filtered(images, scale, shift=(scale - 1) / 2)
    return shifted[..., ::scale, ::scale].contiguous()


def bicubic_upsample(lowres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` LR slices -> ``(B, C, *size)`` by bicubic interpolation (the baseline)."""
    return F.interpolate(lowres, size=size, mode="bicubic", align_corners=False)
