"""Where OmniFM meets a task network: the feature tap and the head, behind one small adapter.

OmniFM conditions the backbone representation ``r`` (a feature map flattened to tokens) on
retrieved spectral knowledge and hands the prompted sequence back to the rest of the network,
the task head ``h_psi``. A :class:`NetworkAdapter` says where that is for one network family:
it installs a :class:`BottleneckTap` around the block whose output is ``r`` and lists the head's
modules (the personal part of FedPer-style algorithms). The UNet's adapter lives in
``omnifm.tasks.segmentation``, the ResNet's in ``omnifm.tasks.classification``.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

Conditioner = Callable[[torch.Tensor], torch.Tensor]


class BottleneckTap(nn.Module):
    """Wraps the block whose output is ``r`` and applies a per-call conditioner to that output.

    Args:
        block: the original block.

    The conditioner is set by :class:`~omnifm.models.omnifm.OmniFM` for the duration of one
    forward call; without one the tap is the identity around ``block``.

    Examples::

        >>> tap = BottleneckTap(nn.Identity())
        >>> tap.conditioner = lambda features: 2 * features
        >>> tap(torch.ones(1)).tolist()
        [2.0]
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


class NetworkAdapter(Protocol):
    """Where OmniFM taps one network family and which modules are its head."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        """Wrap the block that produces ``r`` in a :class:`BottleneckTap` (idempotent) and return it."""

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        """The task head ``h_psi``: modules after the tap whose parameters are personal."""

    # Optional: ``spectral_view(x) -> x'``, what the spectral encoder sees of the input (default: ``x``).
