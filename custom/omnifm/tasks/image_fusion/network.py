"""The fusion network: a DenseNet-style feature extractor over both sources, tapped at its bottleneck.

``x`` (the two sources, ``(B, 2, H, W)`` in ``[0, 1]``, slot 0 CT / PET / SPECT, slot 1 MRI) goes through

- ``stem``: pixel-unshuffle by ``shuffle`` (lossless space-to-depth, so OmniFM's tokens live on an
  ``H/shuffle x W/shuffle`` grid: 256 tokens for a 64 x 64 slice) and a conv-ReLU to ``channels``;
- ``features``: dense feature extraction as in U2Fusion / DenseFuse — a MONAI
  :class:`~monai.networks.blocks.ConvDenseBlock` (``dense_layers`` conv-ReLU layers of ``growth``
  channels, each reading the concatenation of every earlier output) and a 1x1 transition back to
  ``channels``. Its output is OmniFM's ``r``;
- ``head`` (the personal head ``h_psi``, the reconstruction): conv-ReLU and MONAI's
  :class:`~monai.networks.blocks.SubpixelUpsample` back to ``H x W`` with two output planes, a
  per-pixel mixing logit ``m`` and a detail term ``d``;
- the fused image ``F = clip(sigmoid(m) * A + (1 - sigmoid(m)) * B + d, 0, 1)``, ``(B, 1, H, W)``.

The head's last conv starts at 1/100 of its default scale, so an untrained network outputs about
the average ``(A + B) / 2`` (the trivial fusion it is compared with) and learns where to depart
from it. Expressing ``F`` as an adaptive per-pixel mix plus detail keeps it in the sources' range
without a saturating output layer. No normalisation layers (U2Fusion's DenseNet has none), so
FedBN has nothing personal here beyond what FedAvg shares.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.blocks import Convolution, ConvDenseBlock, SubpixelUpsample
from torch import nn

from omnifm.models.omnifm import OmniFM, OmniFMConfig
from omnifm.models.tap import BottleneckTap
from omnifm.tasks.base import model_args

SOURCES = 2
DEFAULT_FUSION_NET: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": SOURCES,
    "out_channels": 1,
    "channels": 32,
    "growth": 16,
    "dense_layers": 3,
    "shuffle": 4,
}


class FusionNet(nn.Module):
    """The two-source fusion network of the module docstring.

    Examples::

        >>> net = FusionNet(channels=8, growth=4, dense_layers=2, shuffle=2)
        >>> net(torch.rand(3, 2, 16, 16)).shape
        torch.Size([3, 1, 16, 16])
    """

    def __init__(self, channels: int = 32, growth: int = 16, dense_layers: int = 3, shuffle: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.PixelUnshuffle(shuffle), _conv(SOURCES * shuffle**2, channels, act="RELU"))
        dense = ConvDenseBlock(2, channels, [growth] * dense_layers, act="RELU", norm=None)
        self.features = nn.Sequential(dense, _conv(channels + growth * dense_layers, channels, kernel_size=1))
        upsample = SubpixelUpsample(2, channels, 2, scale_factor=shuffle, apply_pad_pool=False)
        with torch.no_grad():
            for p in upsample.parameters():
                p.mul_(0.01)
        self.head = nn.Sequential(_conv(channels, channels, act="RELU"), upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != SOURCES:
            raise ValueError(f"the fusion network reads both sources, (B, {SOURCES}, H, W); got {tuple(x.shape)}")
        mix, detail = self.head(self.features(self.stem(x))).split(1, dim=1)
        weight = torch.sigmoid(mix)
        return (weight * x[:, :1] + (1 - weight) * x[:, 1:] + detail).clamp(0.0, 1.0)


def _conv(in_channels: int, out_channels: int, act: str | None = None, kernel_size: int = 3) -> Convolution:
    """A 2D MONAI convolution, no normalisation (``act`` None: the convolution only)."""
    return Convolution(2, in_channels, out_channels, kernel_size=kernel_size, act=act, norm=None,
                       conv_only=act is None)


class FusionNetAdapter:
    """OmniFM on :class:`FusionNet`: ``r`` is the dense features' output, the head is ``head``."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        if not isinstance(network.features, BottleneckTap):
            network.features = BottleneckTap(network.features)
        return network.features

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.head]


def build_fusion_net(model: dict[str, Any] | None = None, omnifm: dict[str, Any] | None = None) -> OmniFM:
    """A :class:`FusionNet` wrapped as :class:`OmniFM` (the spectral encoder sees both sources).

    Args:
        model: ``spatial_dims`` (2), ``in_channels`` (2, the sources), ``out_channels`` (1, the fused
            image), ``channels`` (OmniFM's token width), ``growth`` and ``dense_layers`` (the dense
            block), ``shuffle`` (tokens are ``(H/shuffle) * (W/shuffle)``); missing keys take
            :data:`DEFAULT_FUSION_NET`.
        omnifm: :class:`OmniFMConfig` fields (the task sets ``value_classes``).

    Raises:
        ValueError: unknown keys or values, naming them.

    Examples::

        >>> model = build_fusion_net({"channels": 8, "growth": 4, "dense_layers": 1}, {"value_classes": 5})
        >>> model(torch.rand(2, 2, 32, 32)).logits.shape
        torch.Size([2, 1, 32, 32])
    """
    cfg = model_args(model, DEFAULT_FUSION_NET)
    fixed = {"spatial_dims": 2, "in_channels": SOURCES, "out_channels": 1}
    for key, value in fixed.items():
        if cfg[key] != value:
            raise ValueError(f"model.{key} must be {value} for image fusion (axial slices, two sources, one fused "
                             f"image), got {cfg[key]!r}")
    for key in ("channels", "growth", "dense_layers", "shuffle"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {cfg[key]!r}")
    net = FusionNet(cfg["channels"], cfg["growth"], cfg["dense_layers"], cfg["shuffle"])
    return OmniFM(net, FusionNetAdapter(), 2, SOURCES, cfg["channels"], OmniFMConfig.from_spec(omnifm))
