"""Classification samples: labelled axial slices of a site's cases, optionally class-skewed.

Label skew across sites (paper Table 1) is drawn per site from a Dirichlet distribution: site
``s`` draws class proportions ``p ~ Dir(alpha * 1)`` from a seed derived from its name and keeps,
of the samples it serves with class ``c`` (after mirroring, below), the fraction ``p_c / max(p)``
(its favoured class entirely).
Small ``alpha`` (0.1) leaves most sites one or two classes; ``alpha`` 0.5 is milder. Only the
training samples are skewed: validation and test keep every labelled slice, so a model is scored
on all classes.

With ``mirror`` every training slice is also served flipped left-right, front-back and both, its
class mirrored with it (:data:`MIRRORED`): the same tumour appears in every quadrant, so a site
cannot learn its cases' appearance in place of where the tumour is. With per-case classes
(``remap_mirrored=False``, :mod:`omnifm.tasks.classification.case_labels`) the flipped slices keep
the case's class: a flip moves a tumour, it does not change a diagnosis. The skew is applied to the
mirrored samples: applied to the slices before mirroring it would be undone (every kept tumour
slice serves all four quadrant classes), and a site whose few cases lack its favoured quadrant
would be left with nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from omnifm.data.loading import volume_slices
from omnifm.tasks.base import Case
from omnifm.validation import check_range

# class index after flipping axis 0 (right <-> left) and axis 1 (anterior <-> posterior);
# classes are no_tumour, right_anterior, right_posterior, left_anterior, left_posterior
MIRRORED = {0: (0, 3, 4, 1, 2), 1: (0, 2, 1, 4, 3)}


def skew_fractions(num_classes: int, alpha: float, site: str, seed: int = 0) -> np.ndarray:
    """The fraction of each class's slices a site keeps under Dirichlet(``alpha``) skew (1s when ``alpha`` is 0).

    Examples::

        >>> skew_fractions(3, 0.0, "site-1").tolist()
        [1.0, 1.0, 1.0]
        >>> bool(skew_fractions(5, 0.1, "site-1").max() == 1.0)
        True
    """
    check_range("alpha", alpha, 0)
    if alpha == 0:
        return np.ones(num_classes)
    rng = np.random.default_rng([int(seed), zlib.crc32(site.encode())])
    p = rng.dirichlet(np.full(num_classes, float(alpha)))
    return p / p.max()


class LabelledSliceDataset(Dataset):
    """Axial slices with a class each (``classes[case][z]``; -1 slices are left out).

    Args:
        cases: the site's loaded cases (``image`` (C, H, W, D)).
        classes: per case, the ``(D,)`` slice classes (:func:`~omnifm.tasks.classification.labels.slice_classes`).
        keep_fractions: per class, the fraction of its slices kept (seeded selection; the
            trainer thins ``no_tumour`` slices with it).
        seed: seed of the selections.
        mirror: serve each kept slice in its four mirror images (see the module docstring).
        skew: per class, the fraction of the *served* samples of that class kept (the label skew,
            :func:`skew_fractions`); None: all.
        remap_mirrored: a mirrored slice's class is mirrored too (:data:`MIRRORED`, the location
            classes); False: it keeps its class (per-case classes).

    Items are ``{"image": float32 (C, H, W), "label": int64 scalar}``.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        classes: Sequence[np.ndarray],
        keep_fractions: np.ndarray,
        seed: int = 0,
        mirror: bool = False,
        skew: np.ndarray | None = None,
        remap_mirrored: bool = True,
    ) -> None:
        if len(cases) == 0:
            raise ValueError("cases must not be empty, got 0 cases")
        self._slices = [volume_slices(case["image"]) for case in cases]
        rng = np.random.default_rng(seed)
        index = []
        for c, fraction in enumerate(keep_fractions):
            members = [(v, z) for v, zs in enumerate(classes) for z in np.flatnonzero(np.asarray(zs) == c)]
            keep = rng.permutation(len(members))[: round(float(fraction) * len(members))]
            index += [(members[i][0], int(members[i][1]), c) for i in keep]
        flips = ((), (0,), (1,), (0, 1)) if mirror else ((),)
        self._flips = flips
        self._remap = bool(remap_mirrored)
        self.index = sorted((v, z, c, f) for v, z, c in index for f in range(len(flips)))
        if skew is not None:
            self.index = self._skewed(np.asarray(skew, dtype=float), np.random.default_rng([int(seed), 1]))
        if not self.index:
            raise ValueError("no labelled slice is left at this site (every slice ambiguous or skewed away)")

    def _skewed(self, skew: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
        """Of the served samples of each class ``l``, keep the fraction ``skew[l]`` (seeded)."""
        kept = []
        for label, fraction in enumerate(skew):
            members = [entry for entry in self.index if self._label(entry[2], entry[3]) == label]
            kept += [members[i] for i in rng.permutation(len(members))[: round(float(fraction) * len(members))]]
        return sorted(kept)

    def class_counts(self, num_classes: int) -> list[int]:
        """How many samples of each class the dataset serves."""
        return np.bincount([self._label(c, f) for _, _, c, f in self.index], minlength=num_classes).tolist()

    def _label(self, c: int, flip: int) -> int:
        if not self._remap:
            return c
        for axis in self._flips[flip]:
            c = MIRRORED[axis][c]
        return c

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        v, z, c, f = self.index[item]
        image = self._slices[v][z]
        axes = [1 + axis for axis in self._flips[f]]  # image is (C, H, W)
        image = torch.flip(image, axes) if axes else image
        return {"image": image, "label": torch.tensor(self._label(c, f), dtype=torch.int64)}
