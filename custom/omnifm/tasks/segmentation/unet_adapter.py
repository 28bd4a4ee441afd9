"""Expose the bottleneck and the decoder of a MONAI :class:`~monai.networks.nets.UNet`.

OmniFM conditions the backbone representation ``r`` on retrieved spectral knowledge. For a UNet,
``r`` is the bottleneck feature map flattened to tokens; the decoder (all up-sampling blocks) is
the task head ``h_psi``. MONAI's UNet is built recursively as ``Sequential(down, SkipConnection(
sub), up)``; this module walks that structure instead of re-implementing the network.
"""

from __future__ import annotations

from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

from omnifm.models.tap import BottleneckTap


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


class UNetAdapter:
    """OmniFM on a MONAI UNet: ``r`` is the bottleneck, the head is every up-sampling block."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        return install_bottleneck_tap(network)

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return decoder_modules(network)
