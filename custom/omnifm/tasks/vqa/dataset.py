"""VQA samples: an asked slice with all its questions, written into one model input.

The engine hands a model one tensor per sample, so a sample's questions travel with its image:
``x`` is ``(2, H, W)``, plane 0 the slice, plane 1 the questions' word ids (question type ``t`` in
the flattened plane's entries ``[t * MAX_WORDS, (t + 1) * MAX_WORDS)``, ``<pad>`` = 0 elsewhere and
for a question not asked). :func:`read_questions` is the inverse the network uses. The label is
``(Q,)`` answer indices (:data:`~omnifm.tasks.vqa.questions.NOT_ASKED` where not asked), and
``classes`` the slice's BraTS label, the knowledge bank's value map.

Each case arrives in the task's one-slot-per-modality layout (``present`` one-hot, see
:meth:`omnifm.tasks.vqa.task.VQATask.input_slots`): :func:`case_modality` reads the modality off
``present`` and :func:`case_image` keeps the one present plane. With ``mirror`` every asked slice
is also served flipped left-right (axis 0), its ``hemisphere`` answer swapped and its templates
drawn again, and front-back (axis 1) and both, with their own templates; no other answer changes
under these flips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from omnifm.data.loading import volume_slices
from omnifm.data.modalities import MODALITIES
from omnifm.tasks.base import Case
from omnifm.tasks.vqa.questions import ANSWERS, MAX_WORDS, NOT_ASKED, QUESTION_TYPES, TYPE_ANSWERS

LOG = logging.getLogger(__name__)
Questions = Callable[[Case, int], tuple[np.ndarray, np.ndarray, np.ndarray]]  # (slices, answers, tokens)
FLIPS = ((), (0,), (1,), (0, 1))  # the mirror images served with ``mirror``: left-right, front-back, both
_SWAP = {ANSWERS.index("left"): ANSWERS.index("right"), ANSWERS.index("right"): ANSWERS.index("left")}


def case_modality(case: Case) -> str:
    """The case's modality: its ``modality`` entry, else the one slot ``present`` marks.

    Raises:
        ValueError: no modality, or several (a paired case: VQA reads one image per case).

    Examples::

        >>> case_modality({"present": np.array([0, 0, 0, 0, 1, 0, 0], np.uint8)})
        'ct'
    """
    if "modality" in case:
        return str(case["modality"])
    present = np.asarray(case.get("present", ()))
    if present.shape != (len(MODALITIES),) or int(present.sum()) != 1:
        raise ValueError(f"a VQA case holds exactly one modality (present one-hot over {list(MODALITIES)}), got "
                         f"present {present.tolist()}: a paired site cannot be asked which modality it shows")
    return MODALITIES[int(np.argmax(present))]


def case_image(case: Case) -> np.ndarray:
    """The case's one image ``(1, H, W, D)`` (its present slot, or its only channel)."""
    image = np.asarray(case["image"])
    if "present" in case and image.shape[0] == len(MODALITIES):
        slot = MODALITIES.index(case_modality(case))
        return image[slot : slot + 1]
    if image.shape[0] != 1:
        raise ValueError(f"a VQA case has one image channel, got {image.shape[0]}")
    return image


def write_questions(images: torch.Tensor, tokens: np.ndarray) -> torch.Tensor:
    """``(N, 1, H, W)`` slices and ``(N, Q, MAX_WORDS)`` word ids -> ``(N, 2, H, W)`` model input.

    Examples::

        >>> x = write_questions(torch.zeros(1, 1, 9, 9), np.ones((1, len(QUESTION_TYPES), MAX_WORDS), np.int64))
        >>> x.shape, bool((read_questions(x) == 1).all())
        (torch.Size([1, 2, 9, 9]), True)
    """
    n, _, height, width = images.shape
    size = tokens.shape[1] * tokens.shape[2]
    if size > height * width:
        raise ValueError(f"{size} question words do not fit a {height}x{width} slice")
    plane = torch.zeros(n, height * width, dtype=images.dtype)
    plane[:, :size] = torch.as_tensor(tokens.reshape(n, size), dtype=images.dtype)
    return torch.cat([images, plane.view(n, 1, height, width)], dim=1)


def read_questions(x: torch.Tensor) -> torch.Tensor:
    """The ``(B, Q, MAX_WORDS)`` int64 word ids written by :func:`write_questions`."""
    size = len(QUESTION_TYPES) * MAX_WORDS
    return x[:, 1].flatten(1)[:, :size].round().long().view(x.shape[0], len(QUESTION_TYPES), MAX_WORDS)


def mirrored(answers: np.ndarray) -> np.ndarray:
    """The answers of the left-right mirrored slice (``hemisphere`` swapped, the rest unchanged)."""
    out = answers.copy()
    column = out[:, QUESTION_TYPES.index("hemisphere")]
    for a, b in _SWAP.items():
        column[answers[:, QUESTION_TYPES.index("hemisphere")] == a] = b
    return out


class QuestionSliceDataset(Dataset):
    """Every asked slice of a site's cases with its questions (nothing random but the seeded templates).

    Args:
        cases: the site's loaded cases.
        questions: ``questions(case, variant)`` -> ``(slices, answers, tokens)`` (the task's
            :meth:`~omnifm.tasks.vqa.task.VQATask.case_questions`; ``variant`` picks the templates).
        mirror: also serve each slice in its three mirror images (:data:`FLIPS`; variants 1-3).
        site: the site's name, for the log line.

    Items are ``{"image": float32 (2, H, W), "label": int64 (Q,), "classes": int64 (1, H, W)}``.
    :attr:`answer_counts` counts each type's answers (the majority baseline's source).

    Raises:
        ValueError: no case, or no asked slice.
    """

    def __init__(self, cases: Sequence[Case], questions: Questions, mirror: bool = True, site: str = "") -> None:
        if len(cases) == 0:
            raise ValueError("cases must not be empty, got 0 cases")
        images, labels, classes = [], [], []
        for case in cases:
            for variant, axes in enumerate(FLIPS if mirror else FLIPS[:1]):
                slices, answers, tokens = questions(case, variant)
                image = volume_slices(case_image(case))[slices]
                label = volume_slices(np.asarray(case["label"]))[slices].long()
                if axes:
                    dims = [2 + axis for axis in axes]  # (N, C, H, W): H is axis 0 (right), W axis 1 (anterior)
                    image, label = image.flip(dims), label.flip(dims)
                if 0 in axes:
                    answers = mirrored(answers)
                images.append(write_questions(image, tokens))
                labels.append(torch.from_numpy(answers))
                classes.append(label)
        self.images, self.labels, self.classes = torch.cat(images), torch.cat(labels), torch.cat(classes)
        if len(self.images) == 0:
            raise ValueError("no slice of this site's cases is asked about (every slice ambiguous)")
        self.answer_counts = {t: np.bincount(self.labels[:, j][self.labels[:, j] != NOT_ASKED].numpy(),
                                             minlength=len(ANSWERS))[[ANSWERS.index(a) for a in TYPE_ANSWERS[t]]]
                              for j, t in enumerate(QUESTION_TYPES)}
        LOG.info("%s: %d training slices; answers per type %s", site or "this site", len(self.images),
                 "; ".join(f"{t} " + "/".join(f"{a} {n}" for a, n in zip(TYPE_ANSWERS[t], c) if n)
                           for t, c in self.answer_counts.items()))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[item], "label": self.labels[item], "classes": self.classes[item]}
