"""Per-case class labels (``labels: "case"``): a case's class, given by the site, on every slice.

A hospital that trains a classifier usually has one label per *case* (a diagnosis in a
spreadsheet), not a segmentation. In case mode a datalist entry carries ``"class"``: the name of one
of the task's ``classes``, or its integer index (0-based, in the order of ``classes``). The
integrity gate checks it (:mod:`omnifm.data.integrity`) and the loaded case carries the index as
``case["class"]`` (an ``int``).

The network is still the slice network. Training gives every *informative* slice of a case (a
slice whose image is not constant: an all-equal slice shows nothing) the case's class. That is
**weak, slice-level supervision**: a slice that does not show what the diagnosis is about (e.g. a
slice far from the lesion) is trained towards the case's class all the same, so the per-slice
targets are noisy by construction and a per-slice accuracy would mean little. Scoring is therefore
at the case level: the mean of the case's slice probabilities is one prediction per case
(:func:`case_probabilities`), and accuracy, macro-F1 and AUC are computed over cases.

Mirroring (``mirror``) serves each slice flipped as well, with the case's class *unchanged*: a
flip moves a tumour's location, not a diagnosis. A class that depends on the side (laterality,
such as the phantom's ``hemisphere`` rule) must train with ``mirror: false``.
"""

from __future__ import annotations

import numpy as np
import torch

from omnifm.tasks.classification.labels import UNLABELLED

LABEL_MODES = ("location", "case")


def informative_slices(image: np.ndarray) -> np.ndarray:
    """``(D,)`` bool: which axial slices of a ``(C, H, W, D)`` image are not constant.

    Examples::

        >>> image = np.zeros((1, 4, 4, 3), np.float32)
        >>> image[0, 1, 1, 2] = 1.0
        >>> informative_slices(image).tolist()
        [False, False, True]
    """
    image = np.asarray(image)
    flat = image.reshape(-1, image.shape[-1])  # (C*H*W, D)
    return flat.max(axis=0) > flat.min(axis=0)


def case_slice_targets(image: np.ndarray, label: int) -> np.ndarray:
    """``(D,)`` int64: ``label`` on every informative slice of ``image``, -1 (not trained, not scored) elsewhere.

    Examples::

        >>> image = np.zeros((1, 4, 4, 2), np.float32)
        >>> image[0, 0, 0, 1] = 1.0
        >>> case_slice_targets(image, 2).tolist()
        [-1, 2]
    """
    return np.where(informative_slices(image), int(label), UNLABELLED).astype(np.int64)


def case_probabilities(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """One case's prediction from its slices' logits ``(S, K)``: the mean slice softmax, ``(1, K)``.

    A case without a scored slice gives ``(0, K)`` (it is left out of the scores).

    Examples::

        >>> p = case_probabilities(torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]]), 2)
        >>> p.shape, bool(p[0, 0] > p[0, 1])
        (torch.Size([1, 2]), True)
    """
    if logits.shape[0] == 0:
        return torch.zeros(0, classes)
    return torch.softmax(logits.float(), dim=1).mean(dim=0, keepdim=True).cpu()


def check_case_classes(classes: tuple[str, ...]) -> tuple[str, ...]:
    """The case mode's class names, checked: at least two unique, non-empty strings.

    Raises:
        ValueError: naming the problem (``classes`` is the task key).
    """
    names = tuple(classes)
    if len(names) < 2 or any(not isinstance(c, str) or not c.strip() for c in names):
        raise ValueError(f'labels "case" needs task "classes": at least two class names (strings), got {list(names)}')
    if len(set(names)) != len(names):
        raise ValueError(f'task "classes" must not repeat a name, got {list(names)}')
    return names
