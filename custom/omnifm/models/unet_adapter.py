"""Expose the bottleneck and the decoder of a MONAI :class:`~monai.networks.nets.UNet`.

OmniFM conditions the backbone representation ``r`` on retrieved spectral knowledge. For a UNet,
``r`` is the bottleneck feature map flattened to tokens; the decoder (all up-sampling blocks) is
the task head ``h_psi``. MONAI's UNet is built recursively as ``Sequential(down, SkipConnection(
sub), up)``; this module walks that structure instead of re-implementing the network.
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

Conditioner = Callable[[torch.Tensor], torch.Tensor]


class BottleneckTap(nn.Module):
    """Wraps the UNet bottom block and applies a per-call conditioner to its output.

    Args:
        block: the original bottom block.

    The conditioner is set by :class:`~omnifm.models.omnifm.OmniFM` for the duration of one
    forward call; without one the tap is the identity around ``block``.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.conditioner: Conditioner | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.block(x)
        if self.conditioner is None:
            return features
        return self.conditioner(features)


def _levels(unet: UNet) -> list[nn.Sequential]:
    """Return the ``Sequential(down, SkipConnection, up)`` levels, outermost first."""
    levels = []
    node = unet.model
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        levels.append(node)
        node = node[1].submodule
    if not levels:
        raise ValueError("network is not a MONAI UNet with at least one skip level")
    return levels


def install_bottleneck_tap(unet: UNet) -> BottleneckTap:
    """Replace the UNet's bottom block by a :class:`BottleneckTap` (idempotent) and return it."""
    skip = _levels(unet)[-1][1]
    if not isinstance(skip.submodule, BottleneckTap):
        skip.submodule = BottleneckTap(skip.submodule)
    return skip.submodule


def decoder_modules(unet: UNet) -> list[nn.Module]:
    """The up-sampling blocks of ``unet`` (its task head), outermost first."""
    return [level[2] for level in _levels(unet)]
