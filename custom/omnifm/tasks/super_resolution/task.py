"""Super-resolution (paper Table 2): x2, x4 or x8 in-plane, from each site's own modality.

Samples are the head slices of a site's cases, each case mapped to ``[0, 1]``
(:mod:`omnifm.tasks.super_resolution.dataset`); the LR input is the k-space truncation of the HR
slice, zero-filled to the HR grid, for every modality (:mod:`omnifm.tasks.super_resolution.degrade`
says why); the network a small EDSR-style residual network tapped after its residual body, its
reconstruction tail the personal head (:mod:`omnifm.tasks.super_resolution.network`); the loss L1;
the headline ``psnr`` with ``ssim`` beside it and, on the same LR inputs, the baselines
``psnr_interp`` / ``ssim_interp`` (the network's input itself: zero-filled k-space, i.e. ideal
band-limited interpolation) and ``psnr_bicubic`` (bicubic interpolation of the LR image on its own
grid), all through MONAI (:mod:`omnifm.tasks.super_resolution.metrics`). The knowledge bank's
values are class-conditional means over air / head tissue / tumour classes (the label volume's).
DP-SGD: not supported (no case-level sampler for this task).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from omnifm.tasks.base import Case, Task
from omnifm.tasks.segmentation.task import BRATS_CLASSES
from omnifm.tasks.super_resolution.dataset import SRSliceDataset, case_slices
from omnifm.tasks.super_resolution.degrade import SCALES, bicubic_upsample, kspace_lowpass, lowres_grid
from omnifm.validation import check_range

_FIELDS = ("kind", "scale", "min_head_fraction")
_SCORES = ("psnr", "ssim", "psnr_interp", "ssim_interp", "psnr_bicubic")


@dataclass(frozen=True)
class SRTask(Task):
    """In-plane super-resolution of axial slices.

    Args:
        scale: the SR factor, 2, 4 or 8 (k-space truncation to ``1/scale`` per axis).
        min_head_fraction: a slice is used when at least this fraction of it is head.

    ``keep_empty_fraction`` (a segmentation setting of the site's training config) has no meaning
    here and is ignored.

    Examples::

        >>> task = SRTask(scale=4)
        >>> task.to_dict(), task.headline, task.value_classes
        ({'kind': 'super_resolution', 'scale': 4, 'min_head_fraction': 0.05}, 'psnr', 5)
    """

    name: ClassVar[str] = "super_resolution"
    headline: ClassVar[str] = "psnr"

    scale: int = 4
    min_head_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.scale not in SCALES or isinstance(self.scale, bool):
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        check_range("min_head_fraction", self.min_head_fraction, 0, 1)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SRTask:
        unknown = set(spec) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown super_resolution task keys {sorted(unknown)}; allowed: {list(_FIELDS[1:])}")
        return cls(**{k: v for k, v in spec.items() if k != "kind"})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "scale": self.scale, "min_head_fraction": self.min_head_fraction}

    @property
    def label_classes(self) -> tuple[str, ...]:
        return BRATS_CLASSES  # the tumour classes of the value map (dataset.value_classes_map)

    @property
    def value_classes(self) -> int:
        return len(self.label_classes) + 1  # air, head tissue, then each tumour class

    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        model = dict(model)
        channels = model.setdefault("in_channels", 1)
        if model.setdefault("out_channels", channels) != channels:
            raise ValueError(f"model.out_channels is {model['out_channels']} but in_channels is {channels}; "
                             "drop out_channels, it follows in_channels")
        return model

    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        from omnifm.tasks.super_resolution.network import build_sr_model

        return build_sr_model(model, {"value_classes": self.value_classes, **omnifm})  # no norm layers (EDSR)

    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        """Every head slice of the cases with its LR acquisition (deterministic: ``seed`` is not needed)."""
        return SRSliceDataset(cases, self.scale, self.min_head_fraction)

    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["classes"]

    def loss(self) -> nn.Module:
        return nn.L1Loss()

    def targets(self, case: Case) -> torch.Tensor:
        """The HR targets ``(S, C, H, W)`` of a case: its head slices in ``[0, 1]``."""
        return case_slices(case, self.min_head_fraction)[0]

    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        return kspace_lowpass(self.targets(case), self.scale)

    def reduce(self, model: nn.Module, logits: torch.Tensor, case: Case) -> torch.Tensor:
        """The ``(S, C, H, W)`` reconstruction, clipped to ``[0, 1]``."""
        return logits.float().clamp(0.0, 1.0).cpu()

    def score(self, predictions: list[Any], cases: list[Case]) -> dict[str, float]:
        from omnifm.tasks.super_resolution.metrics import case_psnr_ssim, mean_scores

        per_case = []
        for pred, case in zip(predictions, cases):
            target = self.targets(case)
            interp = kspace_lowpass(target, self.scale)
            bicubic = bicubic_upsample(lowres_grid(target, self.scale), tuple(target.shape[-2:]))
            (psnr, ssim), (psnr_i, ssim_i) = case_psnr_ssim(pred, target), case_psnr_ssim(interp, target)
            per_case.append({"psnr": psnr, "ssim": ssim, "psnr_interp": psnr_i, "ssim_interp": ssim_i,
                             "psnr_bicubic": case_psnr_ssim(bicubic, target)[0]})
        return {**mean_scores(per_case, _SCORES), "cases": len(cases)}

    def describe(self, scores: dict[str, float]) -> str:
        """``PSNR 27.31 dB (interpolation 25.12, bicubic 24.80), SSIM 0.853 (0.801), x4, 6 cases``."""
        return (f"PSNR {scores['psnr']:.2f} dB (interpolation {scores['psnr_interp']:.2f}, bicubic "
                f"{scores['psnr_bicubic']:.2f}), SSIM {scores['ssim']:.3f} ({scores['ssim_interp']:.3f}), "
                f"x{self.scale}, {scores['cases']} cases")
