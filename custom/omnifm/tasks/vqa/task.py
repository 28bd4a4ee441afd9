"""Visual question answering (paper section 4.3, Task 2: modality-specific clients), offline.

The paper answers free-text questions with LLaVA / LLaMA. Those weights cannot be fetched here (no
model hub), so this task is the closed-ended version that runs on the built-in phantom: questions
generated from each case's ground truth and modality with several templates per type
(:mod:`omnifm.tasks.vqa.questions`), asked about axial slices (:mod:`omnifm.tasks.vqa.dataset`),
answered by classification over a fixed answer vocabulary. The image encoder is the classification
task's ResNet (OmniFM taps its last feature map), the question encoder a word embedding + GRU
trained from scratch on the templates, the answer head personal (:mod:`omnifm.tasks.vqa.network`).

**How a case's modality reaches the task.** The ``modality`` question needs it, and a loaded case
is only ``image`` / ``label``. The task declares one input slot per modality
(:attr:`VQATask.input_slots`), so the pipeline's slot machinery (:mod:`omnifm.data.slots`, used
unchanged) delivers each case with a one-hot ``present`` naming its modality; the task reads the
present plane and the modality off it. No data-loading code changed for this task.

Metrics (:func:`omnifm.tasks.vqa.metrics.vqa_scores`): the headline ``accuracy`` over the questions
the modality can answer, ``accuracy_<type>`` per question type, ``accuracy_unanswerable`` (questions
the modality cannot answer, :data:`~omnifm.tasks.vqa.questions.UNANSWERABLE`, never in the
headline), and the constant-answer baselines ``majority`` / ``majority_<type>``. The knowledge
bank's values: class-conditional means over the slice's BraTS label (the tumour compartments the
questions ask about). DP-SGD: not supported. ``keep_empty_fraction`` is ignored: every labelled
slice is asked about (the phantom's tumour-free share is about a third).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from omnifm.data.loading import volume_slices
from omnifm.data.modalities import MODALITIES
from omnifm.tasks.base import Case, Task, fixed_out_channels, model_args
from omnifm.tasks.segmentation.task import BRATS_CLASSES
from omnifm.tasks.vqa.dataset import QuestionSliceDataset, case_image, case_modality, write_questions
from omnifm.tasks.vqa.questions import (
    ANSWERS,
    QUESTION_TYPES,
    answerable,
    question_tokens,
    slice_answers,
    template_choice,
)
from omnifm.validation import check_range

_FIELDS = ("kind", "min_area", "margin", "rim_area", "oedema_ratio", "size_bins", "mirror", "template_seed")


class AnswerLoss(nn.Module):
    """Cross-entropy of ``(B, Q, answers)`` logits against ``(B, Q)`` answers, questions not asked ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(ignore_index=-1)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.ce(logits.transpose(1, 2), label.long())


@dataclass(frozen=True)
class VQATask(Task):
    """Closed-ended VQA about axial slices (see the module docstring).

    Args:
        min_area, margin: which slices are asked about (the classification task's ambiguity rule).
        rim_area: least enhancing area (fraction of the slice) that answers ``rim`` "yes".
        oedema_ratio: ``oedema`` is "yes" when the oedema exceeds this times the core in area.
        size_bins: the tumour-area fractions between small / medium / large.
        mirror: also train on every slice mirrored left-right (its hemisphere swapped).
        template_seed: seed of the template drawn for each slice and question type.

    Examples::

        >>> task = VQATask()
        >>> task.to_dict()["kind"], task.headline, task.value_classes, len(task.input_slots)
        ('vqa', 'accuracy', 4, 7)
    """

    name: ClassVar[str] = "vqa"
    headline: ClassVar[str] = "accuracy"

    min_area: float = 0.005
    margin: float = 0.03
    rim_area: float = 0.002
    oedema_ratio: float = 4.0
    size_bins: tuple[float, float] = (0.02, 0.035)
    mirror: bool = True
    template_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_bins", tuple(float(b) for b in self.size_bins))
        check_range("min_area", self.min_area, 0, 1)
        check_range("margin", self.margin, 0, 0.5, high_open=True)
        check_range("rim_area", self.rim_area, 0, 1)
        check_range("oedema_ratio", self.oedema_ratio, 0)
        if len(self.size_bins) != 2 or not 0 < self.size_bins[0] < self.size_bins[1] < 1:
            raise ValueError(f"size_bins must be two increasing fractions in (0, 1), got {list(self.size_bins)}")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> VQATask:
        unknown = set(spec) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown vqa task keys {sorted(unknown)}; allowed: {list(_FIELDS[1:])}")
        return cls(**{k: v for k, v in spec.items() if k != "kind"})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "min_area": self.min_area, "margin": self.margin, "rim_area": self.rim_area,
                "oedema_ratio": self.oedema_ratio, "size_bins": list(self.size_bins), "mirror": self.mirror,
                "template_seed": self.template_seed}

    @property
    def input_slots(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """One slot per modality: the case's ``present`` one-hot names its modality (module docstring)."""
        return tuple((m, (m,)) for m in MODALITIES)

    @property
    def label_classes(self) -> tuple[str, ...]:
        return BRATS_CLASSES  # the ground truth the answers are derived from

    @property
    def value_classes(self) -> int:
        return len(BRATS_CLASSES)

    def check_model(self, model: dict[str, Any]) -> dict[str, Any]:
        from omnifm.tasks.vqa.network import DEFAULT_VQA_MODEL

        model = fixed_out_channels(dict(model), len(ANSWERS), "answers")
        model_args(model, DEFAULT_VQA_MODEL)  # unknown keys refused here, naming them
        return model

    def build_network(self, model: dict[str, Any], omnifm: dict[str, Any], affine_norm: bool = False) -> nn.Module:
        from omnifm.tasks.vqa.network import build_vqa_model

        return build_vqa_model(model, {"value_classes": self.value_classes, **omnifm})  # batch norm: FedBN-ready

    def case_questions(self, case: Case, variant: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(slices, answers (N, Q), word ids (N, Q, L))`` of one case; ``variant`` redraws the templates."""
        slices, answers = slice_answers(case["label"], case_modality(case), self.min_area, self.margin,
                                        self.rim_area, self.oedema_ratio, self.size_bins)
        templates = template_choice(case_image(case), slices, self.template_seed, variant)
        return slices, answers, question_tokens(templates, answers)

    def dataset(self, cases: list[Case], keep_empty_fraction: float, seed: int, site: str = "") -> Dataset:
        return QuestionSliceDataset(cases, self.case_questions, self.mirror, site)

    def value_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["classes"]

    def loss(self) -> nn.Module:
        return AnswerLoss()

    def case_inputs(self, model: nn.Module, case: Case) -> torch.Tensor:
        slices, _, tokens = self.case_questions(case)
        return write_questions(volume_slices(case_image(case))[slices], tokens)

    def reduce(self, model: nn.Module, logits: torch.Tensor, case: Case) -> torch.Tensor:
        """``(N, Q)`` predicted answer indices (argmax over every answer)."""
        if logits.shape[0] == 0:
            return torch.zeros(0, len(QUESTION_TYPES), dtype=torch.long)
        return logits.argmax(dim=-1).cpu()

    def score(self, predictions: list[Any], cases: list[Case]) -> dict[str, float]:
        from omnifm.tasks.vqa.metrics import vqa_scores

        empty = np.zeros((0, len(QUESTION_TYPES)), np.int64)
        answers = [self.case_questions(c)[1] for c in cases]
        able = [np.broadcast_to(answerable(case_modality(c)), a.shape) for c, a in zip(cases, answers)]
        predicted = [np.asarray(p, dtype=np.int64).reshape(-1, len(QUESTION_TYPES)) for p in predictions]
        cat = (lambda parts: np.concatenate(parts) if parts else empty)
        return {**vqa_scores(cat(predicted), cat(answers), cat(able).astype(bool)), "cases": len(cases)}

    def metric_names(self, scores: dict[str, float]) -> list[str]:
        from omnifm.tasks.vqa.metrics import COUNTS

        return [k for k in scores if k not in COUNTS]

    def describe(self, scores: dict[str, float]) -> str:
        """``accuracy 0.812 (majority 0.640; tumour 0.900/0.600, ...), unanswerable 0.550 of 120, 6 cases``."""
        types = ", ".join(f"{t} {scores[f'accuracy_{t}']:.3f}/{scores[f'majority_{t}']:.3f}" for t in QUESTION_TYPES)
        return (f"accuracy {scores['accuracy']:.3f} (majority {scores['majority']:.3f}; per type model/majority: "
                f"{types}) on {scores['questions']} answerable questions, unanswerable "
                f"{scores['accuracy_unanswerable']:.3f} of {scores['unanswerable']}, {scores['cases']} cases")
