"""The segmentation task a federation agrees on: class names and the regions Dice is reported on.

Sites map their own raw label values to these class names (``label_map`` in ``omnifm_site.json``);
the model predicts one channel per class; Dice is reported per region, where a region is a union
of classes (BraTS: WT = necrotic + oedema + enhancing, TC = necrotic + enhancing, ET = enhancing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

BRATS_CLASSES = ("background", "necrotic", "edema", "enhancing")
BRATS_REGIONS = {"WT": ("necrotic", "edema", "enhancing"), "TC": ("necrotic", "enhancing"), "ET": ("enhancing",)}


@dataclass(frozen=True)
class SegTask:
    """Class names (index = model channel; index 0 must be ``background``) and report regions.

    Args:
        classes: class names in channel order.
        regions: region name -> the foreground classes it unites; default one region per class.

    Examples::

        >>> task = SegTask(("background", "tumour"))
        >>> task.regions
        {'tumour': ('tumour',)}
    """

    classes: tuple[str, ...] = BRATS_CLASSES
    regions: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(BRATS_REGIONS))

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        if len(classes) < 2 or classes[0] != "background" or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, start with 'background' and have a foreground, got {classes}")
        regions = {str(k): tuple(v) for k, v in (self.regions or {c: (c,) for c in classes[1:]}).items()}
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
        return cls(tuple(spec.get("classes", BRATS_CLASSES)), spec.get("regions") or {})

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "regions": {k: list(v) for k, v in self.regions.items()}}

    def region_masks(self, labels: torch.Tensor) -> torch.Tensor:
        """Class-index maps (B, 1, *S) -> binary region maps (B, R, *S), regions in dict order."""
        index = {name: i for i, name in enumerate(self.classes)}
        masks = [torch.isin(labels, torch.tensor([index[m] for m in members])) for members in self.regions.values()]
        return torch.cat(masks, dim=1).to(torch.uint8)
