"""The classification network: MONAI's ResNet-18 topology tapped at its last feature map.

``r`` is the output of ``layer4`` (the last feature map, before global pooling); the head
``h_psi`` is the final linear layer ``fc``. The default widths (8-16-32-64, an eighth of the
ImageNet ResNet-18's 64-128-256-512) keep a CPU round short; ``block_inplanes`` restores the full
width. For small slices the stem is a 3x3 convolution of stride ``stem_stride`` (2) without max
pooling, so a 64x64 slice leaves a 4x4 feature map (16 tokens) for OmniFM (8x8 with stride 1).

``model.kind`` (alias ``name``) selects the network: ``resnet`` (default) or ``ct_mri_fusion``, the
two-encoder CT+MRI classifier of seed 002 (:mod:`omnifm.tasks.classification.fusion`), built from
two of these ResNets' encoders.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import ResNet
from torch import nn

from omnifm.models.omnifm import OmniFM, OmniFMConfig
from omnifm.tasks.base import model_args
from omnifm.models.tap import BottleneckTap

DEFAULT_CLS_MODEL: dict[str, Any] = {
    "kind": "resnet",
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
FUSION = "ct_mri_fusion"
DEFAULT_FUSION_MODEL: dict[str, Any] = {
    **{k: v for k, v in DEFAULT_CLS_MODEL.items() if k != "in_channels"}, "kind": FUSION, "heads": 4,
}


class FusionAdapter:
    """OmniFM on the fusion classifier: ``r`` is the fused token map, the head is ``fc``.

    The spectral token sees the input with absent slots' image planes zeroed (their presence
    planes are 0), so it does not depend on what an absent plane holds.
    """

    def install_tap(self, network: nn.Module) -> BottleneckTap:
        if not isinstance(network.fused, BottleneckTap):
            network.fused = BottleneckTap(network.fused)
        return network.fused

    def head_modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.fc]

    @staticmethod
    def spectral_view(x: torch.Tensor) -> torch.Tensor:
        slots = x.shape[1] // 2
        return torch.cat([x[:, :slots] * x[:, slots:], x[:, slots:]], dim=1)


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
    model = dict(model or {})
    if model.get("kind", "resnet") == FUSION:
        return build_fusion_model(model, omnifm)
    cfg = _checked(model_args(model, DEFAULT_CLS_MODEL))
    omni_cfg = OmniFMConfig.from_spec(omnifm, value_classes=cfg["out_channels"])
    net = _resnet(cfg, cfg["in_channels"])
    if cfg["head_grid"] > 1:  # a location-aware head: pool to a grid, not to one vector
        grid = cfg["head_grid"]
        net.avgpool = nn.AdaptiveAvgPool2d(grid)
        net.fc = nn.Linear(cfg["block_inplanes"][-1] * grid * grid, cfg["out_channels"])
    return OmniFM(net, ResNetAdapter(), 2, cfg["in_channels"], cfg["block_inplanes"][-1], omni_cfg)


def build_fusion_model(model: dict[str, Any] | None = None, omnifm: dict[str, Any] | None = None) -> OmniFM:
    """The CT+MRI fusion classifier (two ResNet encoders, cross-attention) wrapped as :class:`OmniFM`.

    Args:
        model: as :func:`build_cls_model` (no ``in_channels``: each encoder reads one slot) plus
            ``heads`` (cross-attention heads); missing keys take :data:`DEFAULT_FUSION_MODEL`.
        omnifm: :class:`OmniFMConfig` fields.

    Examples::

        >>> import torch
        >>> from omnifm.tasks.classification.fusion import with_presence
        >>> model = build_fusion_model({"block_inplanes": [8, 8, 16, 16]})
        >>> x = with_presence(torch.randn(3, 2, 32, 32), torch.tensor([1, 0]))  # CT only
        >>> model(x).logits.shape
        torch.Size([3, 5])
    """
    from omnifm.tasks.classification.fusion import FusionClassifier, ResNetEncoder

    cfg = _checked(model_args(model, DEFAULT_FUSION_MODEL))
    dim = cfg["block_inplanes"][-1]
    if dim % cfg["heads"]:
        raise ValueError(f"model.heads ({cfg['heads']}) must divide the last block_inplanes ({dim})")
    omni_cfg = OmniFMConfig.from_spec(omnifm, value_classes=cfg["out_channels"])
    encoders = [ResNetEncoder(_resnet(cfg, 1)) for _ in range(2)]
    net = FusionClassifier(encoders, dim, cfg["heads"], cfg["head_grid"], cfg["out_channels"])
    return OmniFM(net, FusionAdapter(), 2, 4, dim, omni_cfg)


def _checked(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["norm"] not in NORMS:
        raise ValueError(f"unknown model norm {cfg['norm']!r}; choose one of {sorted(NORMS)}")
    if cfg["stem_stride"] not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {cfg['stem_stride']!r}")
    if cfg["spatial_dims"] != 2 or len(cfg["layers"]) != 4 or len(cfg["block_inplanes"]) != 4:
        raise ValueError("the classification ResNet is 2D with 4 stages: spatial_dims 2, 4 layers, 4 block_inplanes")
    return cfg


def _resnet(cfg: dict[str, Any], in_channels: int) -> ResNet:
    """MONAI's ResNet (basic blocks, 3x3 stem, no max pooling) with the configured norm."""
    net = ResNet(
        "basic", list(cfg["layers"]), list(cfg["block_inplanes"]), spatial_dims=2, n_input_channels=in_channels,
        conv1_t_size=3, conv1_t_stride=cfg["stem_stride"], no_max_pool=True, num_classes=cfg["out_channels"], norm=NORMS[cfg["norm"]],
    )
    if cfg["norm"] != "batch":  # MONAI's ResNet blocks ignore ``norm`` (their BatchNorm is fixed): swap them
        _to_instance_norm(net)
    return net


def _to_instance_norm(module: nn.Module) -> None:
    """Replace every ``BatchNorm2d`` under ``module`` by an affine ``InstanceNorm2d`` of the same width."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.InstanceNorm2d(child.num_features, affine=True))
        else:
            _to_instance_norm(child)
