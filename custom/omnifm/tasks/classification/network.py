"""The classification network: MONAI's ResNet-18 topology tapped at its last feature map.

``r`` is the output of ``layer4`` (the last feature map, before global pooling); the head
``h_psi`` is the final linear layer ``fc``. The default widths (8-16-32-64, an eighth of the
ImageNet ResNet-18's 64-128-256-512) keep a CPU round short; ``block_inplanes`` restores the full
width. For small slices the stem is a 3x3 convolution of stride ``stem_stride`` (2) without max
pooling, so a 64x64 slice leaves a 4x4 feature map (16 tokens) for OmniFM (8x8 with stride 1).
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets import ResNet
from torch import nn

from omnifm.models.omnifm import OmniFM, OmniFMConfig
from omnifm.tasks.base import model_args
from omnifm.models.tap import BottleneckTap

DEFAULT_CLS_MODEL: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 5,
    "layers": [2, 2, 2, 2],
    "block_inplanes": [8, 16, 32, 64],
    "norm": "batch",
    "stem_stride": 2,
    "head_grid": 4,
}
NORMS: dict[str, Any] = {"batch": "batch", "instance_affine": ("instance", {"affine": True})}


class ResNetAdapter:
    """OmniFM on a MONAI ResNet: ``r`` is ``layer4``'s output, the head is ``fc``."""

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        if not isinstance(network.layer4, BottleneckTap):
            network.layer4 = BottleneckTap(network.layer4)
        return network.layer4

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.fc]


def build_cls_model(model: dict[str, Any] | None = None, omnifm: dict[str, Any] | None = None) -> OmniFM:
    """A MONAI ResNet (basic blocks) wrapped as :class:`OmniFM`.

    Args:
        model: ``spatial_dims`` (2), ``in_channels``, ``out_channels`` (classes), ``layers``
            (blocks per stage; ResNet-18: 2-2-2-2), ``block_inplanes`` (stage widths), ``norm``
            (``batch`` or ``instance_affine``), ``stem_stride`` (1 or 2); missing keys take
            :data:`DEFAULT_CLS_MODEL`.
        omnifm: :class:`OmniFMConfig` fields; ``value_classes`` defaults to ``out_channels``.

    Raises:
        ValueError: unknown keys or values, naming them.

    Examples::

        >>> import torch
        >>> model = build_cls_model({"block_inplanes": [8, 8, 16, 16]})
        >>> model(torch.randn(2, 1, 32, 32)).logits.shape
        torch.Size([2, 5])
    """
    cfg = model_args(model, DEFAULT_CLS_MODEL)
    if cfg["norm"] not in NORMS:
        raise ValueError(f"unknown model norm {cfg['norm']!r}; choose one of {sorted(NORMS)}")
    if cfg["stem_stride"] not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {cfg['stem_stride']!r}")
    if cfg["spatial_dims"] != 2 or len(cfg["layers"]) != 4 or len(cfg["block_inplanes"]) != 4:
        raise ValueError("the classification ResNet is 2D with 4 stages: spatial_dims 2, 4 layers, 4 block_inplanes")
    omni_cfg = OmniFMConfig.from_spec(omnifm, value_classes=cfg["out_channels"])
    net = ResNet(
        "basic", list(cfg["layers"]), list(cfg["block_inplanes"]), spatial_dims=2, n_input_channels=cfg["in_channels"],
        conv1_t_size=3, conv1_t_stride=cfg["stem_stride"], no_max_pool=True, num_classes=cfg["out_channels"], norm=NORMS[cfg["norm"]],
    )
    if cfg["norm"] != "batch":  # MONAI's ResNet blocks ignore ``norm`` (their BatchNorm is fixed): swap them
        _to_instance_norm(net)
    if cfg["head_grid"] > 1:  # a location-aware head: pool to a grid, not to one vector
        grid = cfg["head_grid"]
        net.avgpool = nn.AdaptiveAvgPool2d(grid)
        net.fc = nn.Linear(cfg["block_inplanes"][-1] * grid * grid, cfg["out_channels"])
    return OmniFM(net, ResNetAdapter(), 2, cfg["in_channels"], cfg["block_inplanes"][-1], omni_cfg)


def _to_instance_norm(module: nn.Module) -> None:
    """Replace every ``BatchNorm2d`` under ``module`` by an affine ``InstanceNorm2d`` of the same width."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.InstanceNorm2d(child.num_features, affine=True))
        else:
            _to_instance_norm(child)
