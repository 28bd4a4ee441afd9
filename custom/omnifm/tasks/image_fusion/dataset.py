"""Fusion samples: a paired case's head slices, each source rescaled to [0, 1], with their value classes.

A case arrives in the task's two input slots (:mod:`omnifm.data.slots`): ``image`` (2, H, W, D) —
slot 0 the functional or CT image, slot 1 the MRI — and ``present`` (2,). Fusion needs **both**
sources: a case whose ``present`` is not all 1 (the integrity gate masked a failing modality, or the
case never had it) is **left out** of training and evaluation, and counted (:func:`split_paired`;
the site log says how many, the scores carry ``unpaired``). It is not zero-filled: a fused image of
one source and an empty channel would teach the network to copy, and would score as fusion.

Each source is mapped to ``[0, 1]`` by its own minimum and maximum
(:func:`~omnifm.tasks.super_resolution.dataset.unit_range`, as super-resolution does), so SSIM's
data range is 1 and the mutual-information histogram has fixed bins. Slices: those where at least
``min_head_fraction`` of the pixels are head in either source
(:func:`~omnifm.tasks.super_resolution.dataset.head_slices`).

Value map (the knowledge bank's class-conditional values): super-resolution's, 0 air, 1 head tissue
outside the tumour, 2+ the label volume's tumour classes
(:func:`~omnifm.tasks.super_resolution.dataset.value_classes_map`): what a fusion network has to
preserve differs by region (nothing in air, the edges of the head, the tumour's contrast, which
is where the sources differ most).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from omnifm.data.loading import volume_slices
from omnifm.tasks.base import Case
from omnifm.tasks.super_resolution.dataset import head_slices, unit_range, value_classes_map

LOG = logging.getLogger(__name__)


def is_paired(case: Case) -> bool:
    """True when every input slot of the case holds an image (a case without ``present``: a 2-channel image).

    Examples::

        >>> is_paired({"image": np.zeros((2, 4, 4, 1)), "present": np.array([1, 0], np.uint8)})
        False
    """
    present = case.get("present")
    if present is None:
        return np.asarray(case["image"]).shape[0] == 2
    return bool(np.asarray(present).all()) and len(present) == 2


def split_paired(cases: Sequence[Case]) -> tuple[list[Case], int]:
    """The paired cases and how many were left out for a missing source."""
    paired = [c for c in cases if is_paired(c)]
    return paired, len(cases) - len(paired)


def case_sources(case: Case, min_head_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A paired case's sources ``(S, 2, H, W)`` in ``[0, 1]`` (its head slices) and their slice indices ``(S,)``."""
    unit = unit_range(case["image"])
    keep = head_slices(unit, min_head_fraction)
    return volume_slices(unit)[keep], keep


class FusionSliceDataset(Dataset):
    """Head slices of a site's paired cases (nothing random).

    Args:
        cases: the site's loaded cases in the task's two slots (see the module docstring).
        min_head_fraction: see :func:`~omnifm.tasks.super_resolution.dataset.head_slices`.
        site: the site's name, for the log line about unpaired cases.

    Items are ``{"image": float32 (2, H, W) sources, "label": the same (the unsupervised loss's
    reference), "classes": int64 (1, H, W) value classes}``. :attr:`unpaired` counts the cases left out.

    Raises:
        ValueError: no paired case, or no head slice, is left.
    """

    def __init__(self, cases: Sequence[Case], min_head_fraction: float, site: str = "") -> None:
        paired, self.unpaired = split_paired(cases)
        if self.unpaired:
            LOG.warning("%s: %d of %d training case(s) lack one of the two fusion sources (masked by the integrity "
                        "gate or absent) and are left out", site or "this site", self.unpaired, len(cases))
        if not paired:
            raise ValueError(f"no paired case at this site ({len(cases)} case(s), {self.unpaired} without both "
                             "sources): image fusion needs both input slots in every case it uses")
        sources, classes = [], []
        for case in paired:
            unit, keep = case_sources(case, min_head_fraction)
            sources.append(unit)
            classes.append(value_classes_map(unit, volume_slices(case["label"])[keep]))
        self.sources, self.classes = torch.cat(sources), torch.cat(classes)
        if len(self.sources) == 0:
            raise ValueError(f"no slice of this site's cases has {min_head_fraction:.0%} head (min_head_fraction)")

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {"image": self.sources[item], "label": self.sources[item], "classes": self.classes[item]}
