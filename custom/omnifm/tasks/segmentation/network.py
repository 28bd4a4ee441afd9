"""The segmentation network: a MONAI UNet wrapped as OmniFM, built from the run spec's ``model`` dict."""

from __future__ import annotations

from typing import Any

from monai.networks.nets import UNet

from omnifm.models.omnifm import OmniFM, OmniFMConfig
from omnifm.tasks.base import model_args
from omnifm.tasks.segmentation.unet_adapter import UNetAdapter

DEFAULT_SEG_MODEL: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [16, 32, 64, 64],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": "instance",
}

NORMS: dict[str, Any] = {
    "instance": ("instance", {"affine": False}),
    "instance_affine": ("instance", {"affine": True}),
    "batch": "batch",
}


def build_seg_model(model: dict[str, Any] | None = None, omnifm: dict[str, Any] | None = None) -> OmniFM:
    """A MONAI UNet for segmentation wrapped as :class:`OmniFM`.

    Args:
        model: UNet arguments (``spatial_dims``, ``in_channels``, ``out_channels``, ``channels``,
            ``strides``, ``num_res_units``, ``norm``); missing keys take :data:`DEFAULT_SEG_MODEL`.
            ``norm`` is ``instance`` (MONAI's default, no affine parameters), ``instance_affine``
            or ``batch`` (affine parameters and running statistics).
        omnifm: :class:`OmniFMConfig` fields; ``value_classes`` defaults to ``out_channels`` (the bank's
            values are per-class bottleneck-feature means).

    Raises:
        ValueError: unknown keys, naming them.
    """
    cfg = model_args(model, DEFAULT_SEG_MODEL)
    if cfg["norm"] not in NORMS:
        raise ValueError(f"unknown model norm {cfg['norm']!r}; choose one of {sorted(NORMS)}")
    omni_cfg = OmniFMConfig.from_spec(omnifm, value_classes=cfg["out_channels"])
    unet = UNet(
        spatial_dims=cfg["spatial_dims"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        channels=tuple(cfg["channels"]),
        strides=tuple(cfg["strides"]),
        num_res_units=cfg["num_res_units"],
        norm=NORMS[cfg["norm"]],
    )
    return OmniFM(unet, UNetAdapter(), cfg["spatial_dims"], cfg["in_channels"], cfg["channels"][-1], omni_cfg)
