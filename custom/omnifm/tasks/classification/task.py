"""Cross-modality classification (paper Table 1): the tumour's location in each axial slice.

Samples are axial slices labelled by :func:`~omnifm.tasks.classification.labels.slice_classes`
from the site's segmentation ground truth (so every phantom site, whatever its modality, has the
labels); the network is a MONAI ResNet-18 topology tapped at its last feature map
(:mod:`omnifm.tasks.classification.network`); the loss cross-entropy; the headline ``accuracy``
with ``macro_f1`` and ``auc`` beside it (:mod:`omnifm.tasks.classification.metrics`). The
knowledge bank's values are class-conditional means of the tapped features (every cell of a
slice belongs to the slice's class). Label skew across sites: ``class_skew`` (Dirichlet alpha,
:mod:`omnifm.tasks.classification.dataset`).

Multi-modality input: with ``inputs`` (slots, e.g. :data:`CT_MRI_INPUTS`) each case arrives in
those slots with a presence flag each (:mod:`omnifm.data.slots`) and every sample carries its
presence planes (:func:`~omnifm.tasks.classification.fusion.with_presence`); ``model.kind``
``ct_mri_fusion`` (alias ``name``) is the network that reads them. The two go together: the
fusion model needs ``inputs``, the single-image ResNet refuses them.

Per-case labels: with ``labels`` ``"case"`` the classes are the user's ``classes`` and each case's
class comes from its datalist entry (``"class"``), not from a segmentation; the slices of a case are
trained with the case's class (weak, slice-level supervision) and scored per case, from the mean of
the slice probabilities (:mod:`omnifm.tasks.classification.case_labels`). The default ``"location"``
is the rule above, unchanged (its ``to_dict`` has no ``labels`` key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from omnifm.data.loading import volume_slices
from omnifm.tasks.base import Case, Task, fixed_out_channels, model_kind
from omnifm.tasks.classification.case_labels import LABEL_MODES, case_probabilities, case_slice_targets, check_case_classes
from omnifm.tasks.classification.dataset import LabelledSliceDataset, skew_fractions
from omnifm.tasks.classification.labels import LOCATION_CLASSES, slice_classes
from omnifm.tasks.segmentation.task import BRATS_CLASSES
from omnifm.validation import check_range

_FIELDS = ("kind", "classes", "min_area", "margin", "class_skew", "skew_seed", "mirror", "inputs", "labels")
MR = ("t1", "t1ce", "t2", "flair")
CT_MRI_INPUTS: tuple[tuple[str, tuple[str, ...]], ...] = (("ct", ("ct",)), ("mri", MR))
_MODEL_KINDS = ("resnet", "ct_mri_fusion")


@dataclass(frozen=True)
class ClsTask(Task):
    """Slice classification by tumour location, or by a class given per case.

    Args:
        classes: class names; fixed by the labelling rule (:data:`LOCATION_CLASSES`) with
            ``labels`` ``"location"``, the user's (at least two) with ``"case"``.
        min_area: smallest tumour area (fraction of the slice) that gets a quadrant class (location only).
        margin: ambiguous band around each midline (fraction of the slice size; location only).
        class_skew: Dirichlet alpha of the label skew across sites' training samples (0: none).
        skew_seed: seed of the skew draws (with each site's name).
        mirror: train on every slice's four mirror images; location classes are mirrored with them,
            a per-case class is kept (a flip does not change a diagnosis; a side-dependent class
            needs ``False``).
        inputs: the model's image slots ``((slot, modalities it takes), ...)`` for a multi-modality
            model (JSON: ``{"ct": ["ct"], "mri": ["t1", "t1ce", "t2", "flair"]}``); None: one image.
        labels: ``"location"`` (slice classes from the segmentation ground truth, the default) or
            ``"case"`` (each datalist entry's ``"class"``; :mod:`~omnifm.tasks.classification.case_labels`).

    Examples::

        >>> task = ClsTask(class_skew=0.5)
        >>> task.to_dict()["kind"], task.headline, task.value_classes
        ('classification', 'accuracy', 5)
        >>> ClsTask(labels="case", classes=("benign", "malignant")).per_case_classes
        ('benign', 'malignant')
    """

    name: ClassVar[str] = "classification"
    headline: ClassVar[str] = "accuracy"

    classes: tuple[str, ...] = LOCATION_CLASSES
    min_area: float = 0.005
    margin: float = 0.03
    class_skew: float = 0.0
    skew_seed: int = 0
    mirror: bool = True
    inputs: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    labels: str = "location"

    def __post_init__(self) -> None:
        if self.inputs is not None:
            from omnifm.data.slots import parse_slots

            object.__setattr__(self, "inputs", parse_slots(self.inputs))
        if self.labels not in LABEL_MODES:
            raise ValueError(f"classification labels must be one of {list(LABEL_MODES)}, got {self.labels!r}")
        if self.labels == "case":
            object.__setattr__(self, "classes", check_case_classes(self.classes))
        elif tuple(self.classes) != LOCATION_CLASSES:
            raise ValueError(f"classification classes are fixed by the location rule: {list(LOCATION_CLASSES)} "
                             '(for classes of your own, per case, set "labels": "case")')
        object.__setattr__(self, "classes", tuple(self.classes))
        check_range("min_area", self.min_area, 0, 1)
        check_range("margin", self.margin, 0, 0.5, high_open=True)
        check_range("class_skew", self.class_skew, 0)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ClsTask:
        unknown = set(spec) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown classification task keys {sorted(unknown)}; allowed: {list(_FIELDS[1:])}")
        if spec.get("labels") == "case" and "classes" not in spec:
            raise ValueError('labels "case" needs the task\'s "classes": the class names the datalist\'s "class" '
                             'fields use, in index order, e.g. ["benign", "malignant"]')
        return cls(**{k: tuple(v) if k == "classes" else v for k, v in spec.items() if k != "kind"})

    def to_dict(self) -> dict[str, Any]:
        inputs = {} if self.inputs is None else {"inputs": {slot: list(kinds) for slot, kinds in self.inputs}}
        labels = {} if self.labels == "location" else {"labels": self.labels}  # the location spec is unchanged
        return {"kind": self.name, "classes": list(self.classes), "min_area": self.min_area, "margin": self.margin,
                "class_skew": self.class_skew, "skew_seed": self.skew_seed, "mirror": self.mirror, **inputs, **labels}

    @property
    def input_slots(self) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        return self.inputs

    @property
    def label_classes(self) -> tuple[str, ...]:
        return BRATS_CLASSES  # the segmentation ground truth the slice classes are derived from (case mode: optional)

    @property
    def per_case_classes(self) -> tuple[str, ...] | None:
        """Case mode: the class names a datalist entry's ``"class"`` names (or indexes); location: None."""
        return self.classes if self.labels == "case" else None

    @property
    def value_classes(self) -> int:
        return len(self.classes)

    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        model, kind = model_kind(model, "classification", _MODEL_KINDS, "ct_mri_fusion", self.inputs,
                                 str({s: list(k) for s, k in CT_MRI_INPUTS}))
        if kind == "ct_mri_fusion" and len(self.inputs) != 2:
            raise ValueError(f"model 'ct_mri_fusion' has two input slots (CT, MRI); task inputs has {len(self.inputs)}")
        return fixed_out_channels(model, len(self.classes), "classes")

    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        from omnifm.tasks.classification.network import build_cls_model

        return build_cls_model(model, omnifm)  # batch norm by default: FedBN's affine, tracked norms already

    def slice_targets(self, case: Case) -> np.ndarray:
        """``(D,)`` slice classes of one case (-1: not trained, not scored): the location rule's, or the
        case's class on each informative slice (case mode)."""
        if self.labels == "case":
            return case_slice_targets(case["image"], int(case["class"]))
        return slice_classes(case["label"], self.min_area, self.margin)

    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        """Labelled slices; ``no_tumour`` slices thinned to ``keep_empty_fraction`` (location; case mode keeps
        every informative slice); skewed by ``class_skew``."""
        thin = np.ones(len(self.classes))
        if self.labels == "location":
            thin[0] = keep_empty_fraction
        skew = skew_fractions(len(self.classes), self.class_skew, site, self.skew_seed) if self.class_skew else None
        classes = [self.slice_targets(c) for c in cases]
        return LabelledSliceDataset([self._model_case(c) for c in cases], classes, thin, seed, self.mirror, skew,
                                    remap_mirrored=self.labels == "location")

    def ablations(self) -> dict[str, Callable[[Case], Case | None]]:
        """With input slots: ``without_<slot>``, the slot masked in cases that have it and another one."""
        if self.inputs is None:
            return {}
        return {f"without_{slot}": partial(_without, slot=s) for s, (slot, _) in enumerate(self.inputs)}

    def _model_case(self, case: Case) -> Case:
        """The case as the model reads it: with its presence planes when the task has input slots."""
        if self.inputs is None:
            return case
        from omnifm.tasks.classification.fusion import case_with_presence  # the fusion classifier's planes

        return case_with_presence(case)

    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = batch["image"]
        return batch["label"].view(-1, 1, 1, 1).expand(-1, 1, *image.shape[2:])

    def loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        return volume_slices(self._model_case(case)["image"])[torch.as_tensor(self.slice_targets(case) >= 0)]

    def reduce(self, model: nn.Module, logits: torch.Tensor, case: Case) -> torch.Tensor:
        """Location: ``(S, K)`` slice probabilities; case mode: ``(1, K)``, their mean (one prediction per case)."""
        if self.labels == "case":
            return case_probabilities(logits, len(self.classes))
        if logits.shape[0] == 0:
            return torch.zeros(0, len(self.classes))
        return torch.softmax(logits.float(), dim=1).cpu()

    def score(self, predictions: list[Any], cases: list[Case]) -> dict[str, float]:
        """Accuracy, macro-F1, AUC over the scored slices (location) or over the cases (case mode)."""
        from omnifm.tasks.classification.metrics import class_scores

        probs = torch.cat(predictions) if predictions else torch.zeros(0, len(self.classes))
        return {**class_scores(probs, self._targets(predictions, cases), self.classes), "cases": len(cases)}

    def _targets(self, predictions: list[Any], cases: list[Case]) -> torch.Tensor:
        """The targets of ``predictions``' rows: each scored slice's class, or each predicted case's class."""
        if self.labels == "case":
            return torch.tensor([int(c["class"]) for p, c in zip(predictions, cases) if p.shape[0]], dtype=torch.long)
        targets = [torch.as_tensor(self.slice_targets(c)) for c in cases]
        return torch.cat([t[t >= 0] for t in targets]) if targets else torch.zeros(0, dtype=torch.long)

    def describe(self, scores: dict[str, float]) -> str:
        """``accuracy 0.612, macro-F1 0.540, AUC 0.801, 6 cases`` (case mode: ``..., 6 cases, scored per case``)."""
        per_case = ", scored per case" if self.labels == "case" else ""
        return (f"accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}, AUC {scores['auc']:.3f}, "
                f"{scores['cases']} cases{per_case}")


def _without(case: Case, slot: int) -> Case | None:
    """``case`` with input slot ``slot`` masked (as if absent), or None unless it has that slot and another."""
    present = np.asarray(case["present"]).copy()
    if not present[slot] or present.sum() < 2:
        return None
    image = np.array(case["image"], copy=True)
    image[slot], present[slot] = 0, 0
    return {**case, "image": image, "present": present}
