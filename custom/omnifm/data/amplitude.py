"""FedDG-style continuous frequency-space interpolation (Liu et al., FedDG, CVPR 2021).

A slice's 2D Fourier transform splits into amplitude (mostly "style": contrast, intensity
profile, scanner) and phase (mostly "content": anatomy). FedDG lets every site see other sites'
styles by interpolating the *low-frequency* amplitude of its images towards another site's
amplitude, keeping the phase:

    A_new[window] = (1 - lam) * A_local[window] + lam * A_other[window],   lam ~ U(0, 1)

where ``window`` is the centred ``(2b + 1) x (2b + 1)`` block with ``b = floor(ratio * min(H, W))``.
Here sites share only *group means* of their amplitude windows (never one image's spectrum),
pooled by the server into an amplitude bank.
"""

from __future__ import annotations

import torch


def window_half_size(height: int, width: int, ratio: float) -> int:
    """``b = floor(ratio * min(H, W))``: the low-frequency window is ``2b + 1`` wide."""
    if not 0.0 <= ratio <= 0.5:
        raise ValueError(f"amplitude ratio must be in [0, 0.5], got {ratio!r}")
    return int(ratio * min(height, width))


def _window(height: int, width: int, b: int) -> tuple[slice, slice]:
    ch, cw = height // 2, width // 2
    return slice(ch - b, ch + b + 1), slice(cw - b, cw + b + 1)


def amplitude_windows(images: torch.Tensor, ratio: float) -> torch.Tensor:
    """Centred low-frequency amplitude windows ``(N, C, 2b+1, 2b+1)`` of images ``(N, C, H, W)``."""
    h, w = images.shape[-2:]
    rows, cols = _window(h, w, window_half_size(h, w, ratio))
    amplitude = torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1)).abs()
    return amplitude[..., rows, cols]


def group_mean_amplitudes(
    images: torch.Tensor, ratio: float, groups: int, min_count: int, generator: torch.Generator
) -> torch.Tensor:
    """Mean amplitude window of random disjoint groups of at least ``min_count`` images.

    Args:
        images: a site's training slices ``(N, C, H, W)``.
        ratio: low-frequency window ratio (see :func:`window_half_size`).
        groups: at most this many groups (fewer if ``N < groups * min_count``; none if ``N < min_count``).
        min_count: smallest group, so no upload is one image's spectrum.
        generator: seeds the random partition.

    Returns:
        ``(G, C, 2b+1, 2b+1)`` with ``0 <= G <= groups``.
    """
    n = images.shape[0]
    count = min(groups, n // max(min_count, 1))
    windows = amplitude_windows(images, ratio)
    if count == 0:
        return windows.new_zeros((0, *windows.shape[1:]))
    order = torch.randperm(n, generator=generator)
    return torch.stack([windows[part].mean(dim=0) for part in torch.tensor_split(order, count)])


def interpolate_amplitude(
    images: torch.Tensor, bank: torch.Tensor, ratio: float, generator: torch.Generator, probability: float = 0.5
) -> torch.Tensor:
    """Move each image's low-frequency amplitude towards a random bank entry, keeping its phase.

    Args:
        images: ``(B, C, H, W)``.
        bank: ``(M, C, 2b+1, 2b+1)`` amplitude windows (M may be 0: images are returned unchanged).
        ratio: the window ratio the bank was made with.
        generator: draws which images change, the bank entry and ``lam ~ U(0, 1)``.
        probability: chance that an image is augmented.

    Returns:
        Real images of the same shape and dtype.
    """
    b, h, w = images.shape[0], *images.shape[-2:]
    rows, cols = _window(h, w, window_half_size(h, w, ratio))
    if bank.shape[0] == 0:
        return images
    if bank.shape[1:] != (images.shape[1], rows.stop - rows.start, cols.stop - cols.start):
        raise ValueError(f"amplitude bank entries have shape {tuple(bank.shape[1:])}, images need "
                         f"{(images.shape[1], rows.stop - rows.start, cols.stop - cols.start)}")
    pick = torch.randint(bank.shape[0], (b,), generator=generator)
    lam = torch.rand(b, generator=generator) * (torch.rand(b, generator=generator) < probability)
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1))
    amplitude, phase = spectrum.abs(), spectrum.angle()
    lam = lam.view(b, 1, 1, 1)
    amplitude[..., rows, cols] = (1 - lam) * amplitude[..., rows, cols] + lam * bank[pick].to(amplitude)
    mixed = torch.polar(amplitude, phase)
    return torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=(-2, -1))).real.to(images.dtype)
