"""Spectral tokenizer: low-pass magnitude spectrum -> unit-norm spectral token (OmniFM, Sec. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnifm.validation import check_int, check_range

__all__ = ["fft_magnitude", "low_pass_crop", "SpectralEncoder"]

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _check_fraction(fraction: float) -> None:
    check_range("low_pass_fraction", fraction, 0, 1, low_open=True, require_real=False)


def fft_magnitude(x: Tensor, spatial_dims: int, log_scale: bool = True) -> Tensor:
    """Centred magnitude spectrum ``|fftshift(FFT(x))|`` over the last ``spatial_dims`` axes.

    Args:
        x: real floating-point tensor ``(..., *spatial)``, typically ``(B, C, H, W[, D])``.
        spatial_dims: number of trailing spatial axes to transform (2 or 3).
        log_scale: apply ``log1p`` to the magnitude to compress its dynamic range.

    Returns:
        Tensor with the same shape and dtype as ``x``; the DC component sits at index ``n // 2``
        of every spatial axis of size ``n``.

    Raises:
        ValueError: if ``x`` is not floating point, or has fewer than ``spatial_dims`` axes.

    Examples::

        >>> spec = fft_magnitude(torch.ones(1, 1, 4, 4), spatial_dims=2, log_scale=False)
        >>> spec[0, 0, 2, 2].item()
        16.0
    """
    _check_spatial_dims(spatial_dims)
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a real floating-point tensor, got dtype {x.dtype}")
    if x.ndim < spatial_dims:
        raise ValueError(f"x must have at least {spatial_dims} axes, got shape {tuple(x.shape)}")
    dims = tuple(range(-spatial_dims, 0))
    # CPU FFT does not support half precision: compute in float32 and cast back.
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mag = torch.fft.fftshift(torch.fft.fftn(work, dim=dims), dim=dims).abs()
    if log_scale:
        mag = torch.log1p(mag)
    return mag.to(x.dtype)


def low_pass_crop(spectrum: Tensor, spatial_dims: int, fraction: float) -> Tensor:
    """Centre crop of a centred (fftshift-ed) spectrum, keeping the low frequencies.

    Each spatial axis of size ``n`` is cropped to ``m = max(1, round(fraction * n))`` entries,
    starting at ``n // 2 - m // 2``, so the DC component (index ``n // 2``) is always kept and
    lands at index ``m // 2`` of the crop, i.e. the crop is itself fftshift-centred.

    Args:
        spectrum: tensor ``(..., *spatial)`` from :func:`fft_magnitude`.
        spatial_dims: number of trailing spatial axes to crop (2 or 3).
        fraction: kept fraction of every spatial axis, in ``(0, 1]``.

    Returns:
        Tensor ``(..., *cropped_spatial)`` (a view of ``spectrum``).

    Examples::

        >>> low_pass_crop(torch.zeros(2, 3, 8, 7), spatial_dims=2, fraction=0.5).shape
        torch.Size([2, 3, 4, 4])
    """
    _check_spatial_dims(spatial_dims)
    _check_fraction(fraction)
    if spectrum.ndim < spatial_dims:
        raise ValueError(
            f"spectrum must have at least {spatial_dims} axes, got shape {tuple(spectrum.shape)}"
        )
    out = spectrum
    for axis in range(spectrum.ndim - spatial_dims, spectrum.ndim):
        n = spectrum.shape[axis]
        m = max(1, int(round(fraction * n)))
        out = out.narrow(axis, n // 2 - m // 2, m)
    return out


class SpectralEncoder(nn.Module):
    """Spectral tokenizer ``s = normalize(Pool(U(W2 . GELU(W1 . FreqMix(S_LP)))))``.

    ``S_LP`` is the low-pass crop of the centred magnitude spectrum of the input. ``FreqMix``
    (``in_channels -> hidden_dim``), ``W1``, ``W2`` (``hidden_dim -> hidden_dim``) and ``U``
    (``hidden_dim -> embed_dim``) are all 1x1 convolutions, i.e. a per-frequency MLP shared over
    spectral positions; ``Pool`` is a global average over the spectral positions. Because only
    the magnitude spectrum is used, the token is invariant to circular spatial shifts of ``x``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of image channels ``C``.
        embed_dim: size of the spectral token.
        hidden_dim: width of the per-frequency MLP.
        low_pass_fraction: kept fraction of every spatial axis of the spectrum, in ``(0, 1]``.
        log_scale: use ``log1p`` of the magnitude spectrum.

    Shapes:
        - input ``x``: ``(B, in_channels, *spatial)``
        - output: ``(B, embed_dim)`` with unit L2-norm rows.

    Examples::

        >>> enc = SpectralEncoder(spatial_dims=3, in_channels=1, embed_dim=16)
        >>> enc(torch.randn(2, 1, 16, 16, 8)).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_dim: int = 32,
        hidden_dim: int = 32,
        low_pass_fraction: float = 0.25,
        log_scale: bool = True,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        in_channels = check_int("in_channels", in_channels)
        embed_dim = check_int("embed_dim", embed_dim)
        hidden_dim = check_int("hidden_dim", hidden_dim)
        _check_fraction(low_pass_fraction)
        conv = _CONV[spatial_dims]
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.low_pass_fraction = low_pass_fraction
        self.log_scale = log_scale
        self.freq_mix = conv(in_channels, hidden_dim, kernel_size=1)
        self.w1 = conv(hidden_dim, hidden_dim, kernel_size=1)
        self.act = nn.GELU()
        self.w2 = conv(hidden_dim, hidden_dim, kernel_size=1)
        self.proj = conv(hidden_dim, embed_dim, kernel_size=1)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"x must have shape (B, C, *spatial) with {self.spatial_dims} spatial axes, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, C, *spatial)`` to unit-norm spectral tokens ``(B, embed_dim)``."""
        self._check_input(x)
        spec = fft_magnitude(x, self.spatial_dims, log_scale=self.log_scale)
        spec = low_pass_crop(spec, self.spatial_dims, self.low_pass_fraction)
        h = self.w2(self.act(self.w1(self.freq_mix(spec))))
        s = self.proj(h).flatten(2).mean(dim=-1)
        return F.normalize(s, p=2.0, dim=-1, eps=1e-12)
