"""Loading volumes through MONAI and slicing them into a 2D axial dataset.

Real data and the synthetic phantom (:mod:`omnifm.data.phantom`) take the same path:
:func:`load_volumes` reads each datalist entry with :func:`omnifm.data.ingest.load_case`
(MONAI readers for NIfTI and DICOM, channel-first, RAS orientation, optional resampling) and
normalises intensities per modality (:func:`omnifm.data.normalize.normalize_intensity`).
:class:`SliceDataset` then serves axial slices (last axis in RAS, i.e. superior) for 2D
training and :func:`volume_slices` batches all slices of a volume for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from omnifm.data.ingest import CaseError, load_case
from omnifm.data.modalities import MODALITIES
from omnifm.validation import check_int, check_range

__all__ = ["SliceDataset", "load_volumes", "split_cases", "volume_slices"]

_KEYS = ("image", "label")


def _check_datalist(datalist: Sequence[Mapping[str, Any]]) -> None:
    for i, case in enumerate(datalist):
        if not isinstance(case, Mapping) or any(case.get(key) is None for key in _KEYS):
            raise ValueError(f"datalist[{i}] must be a dict with keys {_KEYS}, got {case!r}")


def load_volumes(
    datalist: Sequence[Mapping[str, Any]],
    normalize: bool = True,
    *,
    label_values: Mapping[int, int] | None = None,
    binarize_labels: bool = False,
    spacing: tuple[float, float, float] | None = None,
    default_modality: str = "t1",
) -> list[dict[str, np.ndarray]]:
    """Load image/label volumes through :func:`omnifm.data.ingest.load_case`.

    Args:
        datalist: ``[{"image": path, "label": path, "modality": str (optional)}, ...]``; paths
            as accepted by ``load_case`` (NIfTI, DICOM file, DICOM series folder).
        normalize: Normalise each image for its modality (CT window, MR robust z-score, PET
            uptake ratio; see :mod:`omnifm.data.normalize`).
        label_values: ``{raw label value: class index}`` applied to every case; ``None`` keeps
            the raw values (integers in ``[0, 255]``).
        binarize_labels: Turn labels into whole-tumour masks (``label > 0``) after mapping.
        spacing: Resample to this voxel spacing in mm, or ``None`` for the native grid.
        default_modality: Modality of entries without a ``"modality"`` key.

    Returns:
        One ``{"image": float32 (1, H, W, D), "label": uint8 (1, H, W, D)}`` dict of plain numpy
        arrays per case, oriented RAS.

    Raises:
        ValueError: If a datalist entry lacks ``image``/``label`` or an argument is invalid.
        CaseError: If a case cannot be loaded (e.g. the label does not match the image's
            spatial shape); the message starts with ``datalist[i]`` and contains no path.
    """
    _check_datalist(datalist)
    if default_modality not in MODALITIES:
        raise ValueError(f"default_modality must be one of {list(MODALITIES)}, got {default_modality!r}")
    volumes = []
    for i, entry in enumerate(datalist):
        case = {"image": entry["image"], "label": entry["label"], "modality": entry.get("modality") or default_modality}
        try:
            volume = load_case(case, spacing=spacing, label_values=label_values, normalize=normalize)
        except CaseError as err:
            raise CaseError(f"datalist[{i}]: {err}") from None
        if binarize_labels:
            volume["label"] = (volume["label"] > 0).astype(np.uint8)
        volumes.append(volume)
    return volumes


def split_cases(
    n: int, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> tuple[list[int], list[int], list[int]]:
    """Deterministically split case indices into training, validation and test sets.

    One seeded permutation of ``range(n)``: its first ``n_test`` entries are the test set, the next
    ``n_val`` the validation set, the rest training. With ``test_fraction == 0`` the train and
    validation sets are exactly those of a two-way split with the same seed.

    Args:
        n: Number of cases, >= 1.
        val_fraction: Fraction of cases used for validation, in ``(0, 1)``. The number of
            validation cases is ``round(n * val_fraction)`` clipped to ``[1, n - 1]``, so both
            training and validation are non-empty when ``n >= 2``; with ``n == 1`` the only case
            is for training.
        seed: Non-negative seed of the permutation.
        test_fraction: Fraction held out as a test set, in ``[0, 1)``; ``n_test =
            round(n * test_fraction)``, at least 1 when ``test_fraction > 0``, and never so many
            that training or validation (for ``n >= 3``) would be empty.

    Returns:
        ``(train_indices, val_indices, test_indices)``, each sorted, disjoint, together ``range(n)``.

    Raises:
        ValueError: If an argument is out of range or ``val_fraction + test_fraction >= 1``.

    Examples::

        >>> split_cases(10, 0.2, seed=0, test_fraction=0.2)
        ([0, 1, 3, 5, 8, 9], [2, 7], [4, 6])
    """
    n = check_int("n", n)
    check_range("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    check_range("test_fraction", test_fraction, 0, 1, high_open=True)
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    order = np.random.default_rng(check_int("seed", seed, 0)).permutation(n)
    n_test = min(max(round(n * test_fraction), 1), max(n - 2, 0)) if test_fraction > 0 else 0
    rest = order[n_test:]
    n_val = min(max(round(n * val_fraction), 1), len(rest) - 1)
    return (
        sorted(int(i) for i in rest[n_val:]),
        sorted(int(i) for i in rest[:n_val]),
        sorted(int(i) for i in order[:n_test]),
    )


def volume_slices(volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turn a ``(C, H, W, D)`` volume into a ``(D, C, H, W)`` float32 batch of axial slices.

    Args:
        volume: Channel-first volume (numpy array or tensor).

    Returns:
        Contiguous float32 tensor; slice ``d`` of the batch is ``volume[..., d]``.

    Raises:
        ValueError: If ``volume`` is not 4-dimensional.
    """
    tensor = torch.as_tensor(volume)
    if tensor.ndim != 4:
        raise ValueError(f"volume must have shape (C, H, W, D), got {tuple(tensor.shape)}")
    return tensor.permute(3, 0, 1, 2).to(torch.float32).contiguous()


def _check_volume(i: int, volume: dict[str, np.ndarray]) -> None:
    image, label = volume.get("image"), volume.get("label")
    if image is None or label is None or np.ndim(image) != 4 or np.shape(label) != (1, *np.shape(image)[1:]):
        shapes = (np.shape(image), np.shape(label))
        raise ValueError(f"volumes[{i}] needs image (C, H, W, D) and label (1, H, W, D), got shapes {shapes}")


class SliceDataset(Dataset):
    """Axial 2D slices of a list of loaded volumes.

    All slices containing tumour (any label value > 0, whatever the class) are kept, plus a
    deterministic, seeded selection of ``round(keep_empty_fraction * n_empty)`` of the
    ``n_empty`` tumour-free slices (counted over all volumes). Items are
    ``{"image": float32 (C, H, W), "label": float32 (1, H, W)}``; labels keep their class indices.

    Args:
        volumes: Output of :func:`load_volumes` (or any dicts of the same shapes).
        keep_empty_fraction: Fraction of tumour-free slices to keep, in ``[0, 1]``.
        seed: Seed of the selection of tumour-free slices.

    Raises:
        ValueError: If ``volumes`` is empty or malformed, or an argument is out of range.
    """

    def __init__(
        self, volumes: Sequence[dict[str, np.ndarray]], keep_empty_fraction: float = 0.3, seed: int = 0
    ) -> None:
        if len(volumes) == 0:
            raise ValueError("volumes must not be empty, got 0 volumes")
        check_range("keep_empty_fraction", keep_empty_fraction, 0, 1)
        seed = check_int("seed", seed, 0)
        for i, volume in enumerate(volumes):
            _check_volume(i, volume)
        self._images = [torch.as_tensor(np.asarray(v["image"], dtype=np.float32)) for v in volumes]
        self._labels = [torch.as_tensor(np.asarray(v["label"], dtype=np.float32)) for v in volumes]
        self.index = self._select(float(keep_empty_fraction), seed)

    def _select(self, keep_empty_fraction: float, seed: int) -> list[tuple[int, int]]:
        """Sorted ``(volume, slice)`` pairs: every tumour slice plus the sampled empty ones."""
        tumour, empty = [], []
        for v, label in enumerate(self._labels):
            has_tumour = label.flatten(0, 2).amax(dim=0) > 0
            for z, flag in enumerate(has_tumour.tolist()):
                (tumour if flag else empty).append((v, z))
        n_keep = round(keep_empty_fraction * len(empty))
        picked = np.random.default_rng(seed).permutation(len(empty))[:n_keep]
        return sorted(tumour + [empty[i] for i in picked])

    @property
    def num_slices(self) -> int:
        """Number of slices served (same as ``len(self)``)."""
        return len(self.index)

    @property
    def num_tumour_slices(self) -> int:
        """Number of served slices that contain tumour."""
        return sum(int(self._labels[v][..., z].any()) for v, z in self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        v, z = self.index[item]
        return {"image": self._images[v][..., z].contiguous(), "label": self._labels[v][..., z].contiguous()}
