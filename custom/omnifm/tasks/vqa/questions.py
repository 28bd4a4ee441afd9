"""Closed-ended questions about one axial slice, generated from the ground truth and the case's modality.

**Unit: the axial slice.** The image encoder is the 2D classification ResNet, every question below
has a definite answer on one slice (is there tumour *here*, on which side, how large *here*), and a
case-level question set would leave a 16-case site with 12 training examples per question type
(and "is there a tumour" would be "yes" for nearly every phantom case). The slices asked about are
those :func:`~omnifm.tasks.classification.labels.slice_classes` labels (0-4): a slice whose tumour
is smaller than ``min_area`` or whose tumour centroid lies within ``margin`` of a midline is
ambiguous and gets no questions, as in the classification task.

Question types (:data:`QUESTION_TYPES`), each with several templates (:data:`TEMPLATES`) and a fixed
answer set (:data:`TYPE_ANSWERS`; the network chooses among all :data:`ANSWERS`):

- ``modality``: the case's modality (every asked slice);
- ``tumour``: is there tumour in the slice (every asked slice);
- ``hemisphere``: left / right, from the tumour centroid along axis 0 (RAS: axis 0 points to the
  patient's right, the rule of :mod:`~omnifm.tasks.classification.labels`; tumour slices only);
- ``rim``: is there an enhancing rim, i.e. at least ``rim_area`` of the slice labelled
  ``enhancing`` (tumour slices);
- ``oedema``: is the oedema more than ``oedema_ratio`` times the core (necrotic + enhancing) in
  area. The paper-style "is the oedema larger than the core" is "yes" on 99 % of the phantom's
  tumour slices, so the threshold is the phantom's median ratio (4), which balances the answer;
- ``size``: small / medium / large tumour area, as a fraction of the slice, split at ``size_bins``
  (about the phantom's tertiles).

**Unanswerable questions** (:data:`UNANSWERABLE`): a question whose answer the modality cannot
show. Enhancement is contrast uptake: only T1CE (gadolinium) and the amino-acid PET (its active rim
takes up 2-3.5x grey matter) image it; native T1, T2, FLAIR and non-contrast CT do not, and
perfusion SPECT's 12-18 mm resolution blurs a rim of a few millimetres away. The oedema/core
comparison needs both compartments apart: T2 and FLAIR (oedema bright, fluid core distinct) and
T1CE (enhancing core, hypointense oedema) show them; native T1 (oedema and rim within 10 % in
T1), CT (oedema 15-22 HU, necrosis 12-20 HU), PET and SPECT (heavy blur, overlapping uptake) do
not. Such questions are still asked and scored, but separately (``accuracy_unanswerable``) and
never in the headline.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from omnifm.data.modalities import MODALITIES
from omnifm.tasks.classification.labels import slice_classes

QUESTION_TYPES = ("modality", "tumour", "hemisphere", "rim", "oedema", "size")
TYPE_ANSWERS: dict[str, tuple[str, ...]] = {
    "modality": MODALITIES,
    "tumour": ("no", "yes"),
    "hemisphere": ("left", "right"),
    "rim": ("no", "yes"),
    "oedema": ("no", "yes"),
    "size": ("small", "medium", "large"),
}
ANSWERS: tuple[str, ...] = tuple(dict.fromkeys(a for answers in TYPE_ANSWERS.values() for a in answers))
TEMPLATES: dict[str, tuple[str, ...]] = {
    "modality": (
        "Which modality is this image?",
        "What kind of scan is this?",
        "Which imaging modality was used for this slice?",
        "What modality is shown here?",
    ),
    "tumour": (
        "Is there a tumour in this slice?",
        "Does this slice show a tumour?",
        "Is a lesion visible in this slice?",
        "Can you see a tumour here?",
    ),
    "hemisphere": (
        "Which hemisphere is the tumour in?",
        "Is the tumour in the left or the right hemisphere?",
        "On which side of the brain is the lesion?",
        "Which side is the tumour on?",
    ),
    "rim": (
        "Is there an enhancing rim?",
        "Does the tumour have an enhancing rim?",
        "Is an enhancing rim visible around the core?",
        "Does the lesion show rim enhancement?",
    ),
    "oedema": (
        "Is the oedema more than four times larger than the core?",
        "Does the oedema cover over four times the area of the tumour core?",
        "Is the surrounding oedema more than four times the size of the core?",
    ),
    "size": (
        "Roughly how large is the tumour?",
        "How big is the lesion in this slice?",
        "What is the approximate size of the tumour?",
        "Is the tumour small, medium or large?",
    ),
}
UNANSWERABLE: dict[str, tuple[str, ...]] = {
    "rim": ("t1", "t2", "flair", "ct", "spect"),
    "oedema": ("t1", "ct", "pet", "spect"),
}
NOT_ASKED = -1
PAD, UNKNOWN = 0, 1
NECROTIC, EDEMA, ENHANCING = 1, 2, 3  # BraTS class indices of the label volume (omnifm.tasks.segmentation)


def words(text: str) -> list[str]:
    """Lower-case word tokens of a question.

    Examples::

        >>> words("Is the tumour small, medium or large?")
        ['is', 'the', 'tumour', 'small', 'medium', 'or', 'large']
    """
    return re.findall(r"[a-z0-9]+", text.lower())


VOCABULARY: tuple[str, ...] = ("<pad>", "<unk>", *sorted({w for ts in TEMPLATES.values() for t in ts for w in words(t)}))
_INDEX = {w: i for i, w in enumerate(VOCABULARY)}
MAX_WORDS = max(len(words(t)) for ts in TEMPLATES.values() for t in ts)


def tokenize(text: str, length: int = MAX_WORDS) -> np.ndarray:
    """``(length,)`` int64 word ids of ``text`` (unknown words -> ``<unk>``, padded with ``<pad>`` = 0).

    Raises:
        ValueError: the question has more than ``length`` words, or none.

    Examples::

        >>> ids = tokenize("Is there a tumour nearby?")
        >>> [VOCABULARY[i] for i in ids[:5]], int(ids[5])
        (['is', 'there', 'a', 'tumour', '<unk>'], 0)
    """
    ids = [_INDEX.get(w, UNKNOWN) for w in words(text)]
    if not ids or len(ids) > length:
        raise ValueError(f"a question has 1 to {length} words, got {len(ids)}: {text!r}")
    return np.array(ids + [PAD] * (length - len(ids)), dtype=np.int64)


def answerable(modality: str) -> np.ndarray:
    """``(len(QUESTION_TYPES),)`` bool: which question types ``modality`` can answer (:data:`UNANSWERABLE`).

    Examples::

        >>> dict(zip(QUESTION_TYPES, answerable("ct").tolist()))["rim"]
        False
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known modalities: {list(MODALITIES)}")
    return np.array([modality not in UNANSWERABLE.get(t, ()) for t in QUESTION_TYPES])


def slice_answers(
    label: np.ndarray, modality: str, min_area: float = 0.005, margin: float = 0.03, rim_area: float = 0.002,
    oedema_ratio: float = 4.0, size_bins: tuple[float, float] = (0.02, 0.035),
) -> tuple[np.ndarray, np.ndarray]:
    """The asked slices of a label volume and their answers.

    Args:
        label: ``(1, H, W, D)`` BraTS class indices (0 background, 1 necrotic, 2 edema, 3 enhancing).
        modality: the case's modality (the ``modality`` question's answer).
        min_area, margin: the ambiguity rule of :func:`~omnifm.tasks.classification.labels.slice_classes`.
        rim_area: least enhancing area, as a fraction of the slice, that is a rim.
        oedema_ratio: ``oedema`` is "yes" when the oedema area exceeds this times the core's.
        size_bins: tumour-area fractions of the slice between small / medium / large.

    Returns:
        ``slices`` ``(N,)`` (the asked slices' indices along D) and ``answers`` ``(N, len(QUESTION_TYPES))``
        int64, each an index into :data:`ANSWERS` or :data:`NOT_ASKED`.

    Examples::

        >>> label = np.zeros((1, 20, 20, 2), np.uint8)
        >>> label[0, 13:19, 5:11, 1] = 2      # oedema on the patient's right
        >>> label[0, 15:17, 7:9, 1] = 3       # an enhancing core inside it
        >>> slices, answers = slice_answers(label, "t2")
        >>> slices.tolist(), [[ANSWERS[a] if a != NOT_ASKED else "-" for a in row] for row in answers]
        ([0, 1], [['t2', 'no', '-', '-', '-', '-'], ['t2', 'yes', 'right', 'yes', 'yes', 'large']])
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known modalities: {list(MODALITIES)}")
    if not 0 < size_bins[0] < size_bins[1]:
        raise ValueError(f"size_bins must be two increasing fractions, got {size_bins!r}")
    classes = slice_classes(label, min_area, margin)
    volume = np.asarray(label)[0]
    slices = np.flatnonzero(classes >= 0)
    answers = np.full((len(slices), len(QUESTION_TYPES)), NOT_ASKED, dtype=np.int64)
    pixels = volume.shape[0] * volume.shape[1]
    for row, z in enumerate(slices):
        given = {"modality": modality, "tumour": "no" if classes[z] == 0 else "yes"}
        if classes[z] > 0:
            area = np.bincount(volume[..., z].ravel(), minlength=4)
            tumour = area[1:].sum() / pixels
            given["hemisphere"] = "right" if classes[z] in (1, 2) else "left"
            given["rim"] = "yes" if area[ENHANCING] >= rim_area * pixels else "no"
            given["oedema"] = "yes" if area[EDEMA] > oedema_ratio * (area[NECROTIC] + area[ENHANCING]) else "no"
            given["size"] = TYPE_ANSWERS["size"][int(np.searchsorted(size_bins, tumour, side="right"))]
        for t, name in enumerate(QUESTION_TYPES):
            if name in given:
                answers[row, t] = ANSWERS.index(given[name])
    return slices, answers


def template_choice(content: np.ndarray, slices: np.ndarray, seed: int, variant: int = 0) -> np.ndarray:
    """``(N, len(QUESTION_TYPES))`` template index per asked slice and type, seeded by the case's content.

    ``content`` is the case's image (not its label: every tumour-free label is the same all-zero
    volume, so label-seeded templates would repeat one pattern in every tumour-free case, and the
    template alone would hint at the answer). The same case, seed and variant always get the same
    templates, whatever the order of the site's cases; over a site's slices every template is used.
    """
    digest = zlib.crc32(np.ascontiguousarray(content).tobytes())
    rng = np.random.default_rng([int(seed), digest, int(variant)])
    counts = np.array([len(TEMPLATES[t]) for t in QUESTION_TYPES])
    return (rng.random((len(slices), len(counts))) * counts).astype(np.int64)


def question_tokens(templates: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """``(N, Q, MAX_WORDS)`` word ids of the asked questions (all ``<pad>`` where not asked)."""
    out = np.zeros((*answers.shape, MAX_WORDS), dtype=np.int64)
    for (row, t), asked in np.ndenumerate(answers != NOT_ASKED):
        if asked:
            out[row, t] = TOKENS[QUESTION_TYPES[t]][templates[row, t]]
    return out


TOKENS: dict[str, tuple[np.ndarray, ...]] = {t: tuple(tokenize(q) for q in TEMPLATES[t]) for t in QUESTION_TYPES}
