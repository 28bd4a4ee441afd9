"""The segmentation task: class names, the regions Dice is reported on, and the task protocol.

Sites map their own raw label values to these class names (``label_map`` in ``omnifm_site.json``);
the model predicts one channel per class; Dice is reported per region, where a region is a union
of classes (BraTS: WT = necrotic + oedema + enhancing, TC = necrotic + enhancing, ET = enhancing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset

from omnifm.data.loading import SliceDataset, volume_slices
from omnifm.tasks.base import Case, Task, fixed_out_channels

BRATS_CLASSES = ("background", "necrotic", "edema", "enhancing")
BRATS_REGIONS = {"WT": ("necrotic", "edema", "enhancing"), "TC": ("necrotic", "enhancing"), "ET": ("enhancing",)}


@dataclass(frozen=True)
class SegTask(Task):
    """Segmentation: class names (index = model channel; index 0 must be ``background``) and report regions.

    Samples are axial slices (all tumour slices plus ``keep_empty_fraction`` of the empty ones),
    the network a MONAI UNet tapped at its bottleneck (the decoder is the head), the loss Dice + CE,
    the headline ``dice`` (mean over regions of MONAI's Dice, per case volume).

    Args:
        classes: class names in channel order.
        regions: region name -> the foreground classes it unites; default WT/TC/ET for the BraTS classes,
            else one region per class.

    Examples::

        >>> task = SegTask(("background", "tumour"))
        >>> task.regions
        {'tumour': ('tumour',)}
    """

    name: ClassVar[str] = "segmentation"
    headline: ClassVar[str] = "dice"
    supports_dp: ClassVar[bool] = True

    classes: tuple[str, ...] = BRATS_CLASSES
    regions: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        if len(classes) < 2 or classes[0] != "background" or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, start with 'background' and have a foreground, got {classes}")
        given = self.regions if self.regions is not None else (BRATS_REGIONS if classes == BRATS_CLASSES else {})
        regions = {str(k): tuple(v) for k, v in (given or {c: (c,) for c in classes[1:]}).items()}
        for name, members in regions.items():
            unknown = [m for m in members if m not in classes[1:]]
            if not members or unknown:
                raise ValueError(f"region {name!r} must list foreground classes of {classes[1:]}, got {members}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "regions", regions)

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> SegTask:
        if not spec:
            return cls()
        unknown = set(spec) - {"kind", "classes", "regions"}
        if unknown:
            raise ValueError(f"unknown segmentation task keys {sorted(unknown)}; allowed: classes, regions")
        return cls(tuple(spec.get("classes", BRATS_CLASSES)), spec.get("regions") or {})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "classes": list(self.classes), "regions": {k: list(v) for k, v in self.regions.items()}}

    @property
    def label_classes(self) -> tuple[str, ...]:
        return self.classes

    @property
    def value_classes(self) -> int:
        return len(self.classes)

    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        return fixed_out_channels(model, len(self.classes), "classes")

    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        from omnifm.tasks.segmentation.network import build_seg_model

        model = dict(model)
        if affine_norm and model.get("norm", "instance") == "instance":
            model["norm"] = "batch"
        return build_seg_model(model, omnifm)

    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        return SliceDataset(cases, keep_empty_fraction=keep_empty_fraction, seed=seed)

    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["label"]

    def loss(self) -> nn.Module:
        return DiceCELoss(to_onehot_y=True, softmax=True)

    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        return volume_slices(case["image"]) if model.spatial_dims == 2 else torch.as_tensor(case["image"])[None]

    def reduce(self, model: nn.Module, logits: torch.Tensor, case: Case) -> torch.Tensor:
        """(D, classes, H, W) slice logits or (1, classes, H, W, D) -> the (1, H, W, D) label map."""
        labels = logits.argmax(dim=1, keepdim=True).cpu()
        return labels.permute(1, 2, 3, 0) if model.spatial_dims == 2 else labels[0]

    def score(self, predictions: list[Any], cases: list[Case]) -> dict[str, float]:
        from omnifm.tasks.segmentation.metrics import region_dice

        return region_dice(predictions, [case["label"] for case in cases], self)

    def describe(self, scores: dict[str, float]) -> str:
        """``Dice 0.612 (WT 0.801 / TC 0.598 / ET 0.437), 6 cases``."""
        regions = " / ".join(f"{k[5:]} {v:.3f}" for k, v in scores.items() if k.startswith("dice_"))
        return f"Dice {scores['dice']:.3f} ({regions}), {scores['cases']} cases"

    def region_masks(self, labels: torch.Tensor) -> torch.Tensor:
        """Class-index maps (B, 1, *S) -> binary region maps (B, R, *S), regions in dict order."""
        index = {name: i for i, name in enumerate(self.classes)}
        masks = [torch.isin(labels, torch.tensor([index[m] for m in members])) for members in self.regions.values()]
        return torch.cat(masks, dim=1).to(torch.uint8)
