"""The segmentation task: class names, the regions Dice is reported on, and the task protocol.

Sites map their own raw label values to these class names (``label_map`` in ``omnifm_site.json``);
the model predicts one channel per class; Dice is reported per region, where a region is a union
of classes (BraTS: WT = necrotic + oedema + enhancing, TC = necrotic + enhancing, ET = enhancing).

Multi-sequence input: with ``inputs`` (slots, e.g. :data:`MR_SEQUENCE_INPUTS`, one per MR sequence)
each case arrives in those slots with a presence flag each (:mod:`omnifm.data.slots`) and every
sample carries its presence planes; ``model.kind`` ``fedunetmm`` (alias ``name``) is the network
that reads them (:mod:`omnifm.tasks.segmentation.fedunetmm`). The two go together, as for the
classification task's ``ct_mri_fusion``: FedUNetMM needs ``inputs``, the single-image UNet refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset

from omnifm.data.loading import SliceDataset, volume_slices
from omnifm.tasks.base import Case, Task, fixed_out_channels, model_kind

BRATS_CLASSES = ("background", "necrotic", "edema", "enhancing")
BRATS_REGIONS = {"WT": ("necrotic", "edema", "enhancing"), "TC": ("necrotic", "enhancing"), "ET": ("enhancing",)}
MR_SEQUENCES = ("t1", "t1ce", "t2", "flair")
MR_SEQUENCE_INPUTS: tuple[tuple[str, tuple[str, ...]], ...] = tuple((m, (m,)) for m in MR_SEQUENCES)
_MODEL_KINDS = ("unet", "fedunetmm")


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
        inputs: the model's image slots ``((slot, modalities it takes), ...)`` for FedUNetMM (JSON:
            ``{"t1": ["t1"], "t1ce": ["t1ce"], "t2": ["t2"], "flair": ["flair"]}``, or a list of
            ``[slot, modalities]`` pairs, the form :meth:`to_dict` writes); None: one image.

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
    inputs: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def __post_init__(self) -> None:
        if self.inputs is not None:
            from omnifm.data.slots import parse_slots

            object.__setattr__(self, "inputs", parse_slots(self.inputs))
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
        unknown = set(spec) - {"kind", "classes", "regions", "inputs"}
        if unknown:
            raise ValueError(f"unknown segmentation task keys {sorted(unknown)}; allowed: classes, regions, inputs")
        return cls(tuple(spec.get("classes", BRATS_CLASSES)), spec.get("regions") or {}, spec.get("inputs"))

    def to_dict(self) -> dict[str, Any]:
        # a list of [slot, modalities] pairs, not a dict: the slot order is the model's input order, and a
        # spec saved with sorted keys (the persistor's model file) must not reorder it
        inputs = {} if self.inputs is None else {"inputs": [[slot, list(kinds)] for slot, kinds in self.inputs]}
        return {"kind": self.name, "classes": list(self.classes), "regions": {k: list(v) for k, v in self.regions.items()},
                **inputs}

    @property
    def input_slots(self) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        return self.inputs

    @property
    def label_classes(self) -> tuple[str, ...]:
        return self.classes

    @property
    def value_classes(self) -> int:
        return len(self.classes)

    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        model, kind = model_kind(model, "segmentation", _MODEL_KINDS, "fedunetmm", self.inputs,
                                 f"one per MR sequence, {({s: list(k) for s, k in MR_SEQUENCE_INPUTS})}")
        if kind == "unet":
            model.pop("kind", None)  # the UNet's spec stays as it always was
        model = fixed_out_channels(model, len(self.classes), "classes")
        if kind == "fedunetmm":  # validate now, when the job is configured
            from omnifm.tasks.base import model_args
            from omnifm.tasks.segmentation.fedunetmm import DEFAULT_FEDUNETMM_MODEL, check_fedunetmm

            check_fedunetmm(model_args(model, DEFAULT_FEDUNETMM_MODEL))
        return model

    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        from omnifm.tasks.segmentation.network import build_seg_model

        model = dict(model)
        if model.get("kind") == "fedunetmm":  # batch norm already: FedBN's affine, tracked norms
            from omnifm.tasks.segmentation.fedunetmm import build_fedunetmm

            return build_fedunetmm(model, omnifm, len(self.inputs))
        if affine_norm and model.get("norm", "instance") == "instance":
            model["norm"] = "batch"
        return build_seg_model(model, omnifm)

    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        return SliceDataset([self._model_case(c) for c in cases], keep_empty_fraction=keep_empty_fraction, seed=seed)

    def _model_case(self, case: Case) -> Case:
        """The case as the model reads it: with its presence planes when the task has input slots."""
        if self.inputs is None:
            return case
        from omnifm.tasks.classification.fusion import case_with_presence  # the fusion classifier's planes

        return case_with_presence(case)

    def ablations(self) -> dict[str, Callable[[Case], Case | None]]:
        """With input slots: ``without_<slot>``, the sequence masked in cases that have it and another one."""
        if self.inputs is None:
            return {}
        from omnifm.tasks.classification.task import _without

        return {f"without_{slot}": partial(_without, slot=s) for s, (slot, _) in enumerate(self.inputs)}

    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["label"]

    def loss(self) -> nn.Module:
        """Dice + CE; with input slots (FedUNetMM) summed over its deep-supervision outputs in training."""
        if self.inputs is not None:
            from omnifm.tasks.segmentation.fedunetmm import DeepSupervisedDiceCE

            return DeepSupervisedDiceCE()
        return DiceCELoss(to_onehot_y=True, softmax=True)

    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        image = self._model_case(case)["image"]
        return volume_slices(image) if model.spatial_dims == 2 else torch.as_tensor(image)[None]

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
