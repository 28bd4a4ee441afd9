"""The super-resolution network: a small EDSR-style residual network on the HR grid, tapped after its body.

``x`` (the LR acquisition on the HR grid, ``(B, C, H, W)``) goes through

- ``head``: pixel-unshuffle by ``shuffle`` (lossless space-to-depth, so the residual body and
  OmniFM's tokens live on an ``H/shuffle x W/shuffle`` grid whatever the SR scale) and one conv;
- ``body``: ``num_blocks`` MONAI :class:`~monai.networks.blocks.ResidualUnit` (conv-ReLU-conv + skip,
  no normalisation, as EDSR), a conv and EDSR's long skip over the whole body. Its output is ``r``;
- ``tail`` (the personal head ``h_psi``): conv-ReLU and MONAI's
  :class:`~monai.networks.blocks.SubpixelUpsample` (conv + pixel shuffle back to ``H x W``, no blur);
- the global residual: output ``= x + tail(r)``. The tail's last conv starts at 1/100 of its
  default scale, so an untrained network is close to its input, the zero-filled interpolation.

No normalisation layers: EDSR dropped batch norm for SR (it flattens the range of the features),
so FedBN has nothing personal here beyond what FedAvg shares.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit, SubpixelUpsample
from torch import nn

from omnifm.models.omnifm import OmniFM, OmniFMConfig
from omnifm.tasks.base import model_args
from omnifm.models.tap import BottleneckTap

DEFAULT_SR_MODEL: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "channels": 32,
    "num_blocks": 4,
    "shuffle": 4,
}


class LongSkip(nn.Module):
    """``block(x) + x``: EDSR's skip over the residual body."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


class SRNet(nn.Module):
    """``x + tail(body(head(x)))`` on ``(B, C, H, W)`` slices (``H``, ``W`` divisible by ``shuffle``).

    Examples::

        >>> net = SRNet(1, channels=8, num_blocks=1, shuffle=2)
        >>> net(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, in_channels: int, channels: int = 32, num_blocks: int = 4, shuffle: int = 4) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.PixelUnshuffle(shuffle), _conv(in_channels * shuffle**2, channels))
        blocks = [ResidualUnit(2, channels, channels, subunits=2, act="RELU", norm=None, last_conv_only=True)
                  for _ in range(num_blocks)]
        self.body = LongSkip(nn.Sequential(*blocks, _conv(channels, channels)))
        upsample = SubpixelUpsample(2, channels, in_channels, scale_factor=shuffle, apply_pad_pool=False)
        with torch.no_grad():
            for p in upsample.parameters():
                p.mul_(0.01)
        self.tail = nn.Sequential(_conv(channels, channels, act="RELU"), upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.body(self.head(x)))


def _conv(in_channels: int, out_channels: int, act: str | None = None) -> Convolution:
    """A 2D 3x3 MONAI convolution, no normalisation (``act`` None: the convolution only)."""
    return Convolution(2, in_channels, out_channels, kernel_size=3, act=act, norm=None, conv_only=act is None)


class SRAdapter:
    """OmniFM on :class:`SRNet`: ``r`` is the body's output (long skip included), the head is ``tail``."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        if not isinstance(network.body, BottleneckTap):
            network.body = BottleneckTap(network.body)
        return network.body

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.tail]


def build_sr_model(model: dict[str, Any] | None = None, omnifm: dict[str, Any] | None = None) -> OmniFM:
    """An :class:`SRNet` wrapped as :class:`OmniFM`.

    Args:
        model: ``spatial_dims`` (2), ``in_channels``, ``out_channels`` (= ``in_channels``),
            ``channels`` (the body's width, OmniFM's token width), ``num_blocks`` (residual units),
            ``shuffle`` (pixel-unshuffle factor: tokens are ``(H/shuffle) * (W/shuffle)``); missing
            keys take :data:`DEFAULT_SR_MODEL`.
        omnifm: :class:`OmniFMConfig` fields (the task sets ``value_classes``).

    Raises:
        ValueError: unknown keys or values, naming them.

    Examples::

        >>> model = build_sr_model({"channels": 8, "num_blocks": 1}, {"value_classes": 5})
        >>> model(torch.zeros(2, 1, 32, 32)).logits.shape
        torch.Size([2, 1, 32, 32])
    """
    cfg = model_args(model, DEFAULT_SR_MODEL)
    if cfg["spatial_dims"] != 2:
        raise ValueError(f"the SR network works on axial slices: spatial_dims must be 2, got {cfg['spatial_dims']!r}")
    if cfg["out_channels"] != cfg["in_channels"]:
        raise ValueError(f"out_channels ({cfg['out_channels']}) must equal in_channels ({cfg['in_channels']}): "
                         "the network restores the image it is given")
    for key in ("channels", "num_blocks", "shuffle"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {cfg[key]!r}")
    omni_cfg = OmniFMConfig.from_spec(omnifm)
    net = SRNet(cfg["in_channels"], cfg["channels"], cfg["num_blocks"], cfg["shuffle"])
    return OmniFM(net, SRAdapter(), 2, cfg["in_channels"], cfg["channels"], omni_cfg)
