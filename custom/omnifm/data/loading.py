"""Loading volumes through MONAI and slicing them into a 2D axial dataset.

Real data and the synthetic phantom (:mod:`omnifm.data.phantom`) take the same path:
a datalist of NIfTI files is read by :func:`load_volumes` with MONAI's ``NibabelReader``,
made channel-first, reoriented to RAS and z-normalised over the nonzero (head) region.
:class:`SliceDataset` then serves axial slices (last axis in RAS, i.e. superior) for 2D
training and :func:`volume_slices` batches all slices of a volume for evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Orientationd
from monai.utils import convert_to_numpy
from torch.utils.data import Dataset

from omnifm.validation import check_int, check_range

__all__ = ["SliceDataset", "load_volumes", "split_cases", "volume_slices"]

_KEYS = ("image", "label")


def _transform(normalize: bool) -> Compose:
    """The MONAI loading pipeline shared by real and phantom data."""
    with warnings.catch_warnings():
        # LoadImage also instantiates every default reader; the DICOM one warns when the
        # optional nvImageCodec plugin is missing, which is irrelevant to NibabelReader.
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        load = LoadImaged(keys=_KEYS, reader="NibabelReader", image_only=True)
    transforms = [
        load,
        EnsureChannelFirstd(keys=_KEYS),
        # labels=None: axis labels follow the MetaTensor's "space" (RAS for NIfTI).
        Orientationd(keys=_KEYS, axcodes="RAS", labels=None),
    ]
    if normalize:
        transforms.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    return Compose(transforms)


def _check_datalist(datalist: Sequence[dict[str, str]]) -> None:
    for i, case in enumerate(datalist):
        if not isinstance(case, dict) or any(key not in case for key in _KEYS):
            raise ValueError(f"datalist[{i}] must be a dict with keys {_KEYS}, got {case!r}")


def _to_numpy(case: dict) -> dict[str, np.ndarray]:
    """Plain numpy arrays: float32 image, binary uint8 label (any label > 0 is tumour)."""
    image = convert_to_numpy(case["image"], dtype=np.float32)
    label = (convert_to_numpy(case["label"]) > 0).astype(np.uint8)
    if label.shape[0] != 1 or label.shape[1:] != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape}")
    return {"image": np.ascontiguousarray(image), "label": np.ascontiguousarray(label)}


def load_volumes(datalist: Sequence[dict[str, str]], normalize: bool = True) -> list[dict[str, np.ndarray]]:
    """Load image/label volumes through MONAI.

    Each case goes through ``LoadImaged(NibabelReader)``, ``EnsureChannelFirstd``,
    ``Orientationd("RAS")`` and, if ``normalize``, ``NormalizeIntensityd(nonzero=True,
    channel_wise=True)`` on the image.

    Args:
        datalist: ``[{"image": path, "label": path}, ...]``.
        normalize: Z-normalise each image channel over its nonzero voxels.

    Returns:
        One ``{"image": float32 (C, H, W, D), "label": uint8 (1, H, W, D)}`` dict of plain
        numpy arrays per case. Labels are binarised (``label > 0``), so multi-class tumour
        masks become whole-tumour masks.

    Raises:
        ValueError: If a datalist entry lacks ``image``/``label`` or the label does not
            match the image's spatial shape.
    """
    _check_datalist(datalist)
    transform = _transform(normalize)
    return [_to_numpy(transform(dict(case))) for case in datalist]


def split_cases(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministically split case indices into training and validation sets.

    Args:
        n: Number of cases, >= 1.
        val_fraction: Fraction of cases used for validation, in ``(0, 1)``. The number of
            validation cases is ``round(n * val_fraction)`` clipped to ``[1, n - 1]``, so both
            sets are non-empty when ``n >= 2``; with ``n == 1`` the only case is for training.
        seed: Non-negative seed of the permutation.

    Returns:
        ``(train_indices, val_indices)``, each sorted, disjoint, together ``range(n)``.

    Raises:
        ValueError: If ``n``, ``val_fraction`` or ``seed`` is out of range.
    """
    n = check_int("n", n)
    check_range("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    order = np.random.default_rng(check_int("seed", seed, 0)).permutation(n)
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


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

    All slices containing tumour are kept, plus a deterministic, seeded selection of
    ``round(keep_empty_fraction * n_empty)`` of the ``n_empty`` tumour-free slices (counted
    over all volumes). Items are ``{"image": float32 (C, H, W), "label": float32 (1, H, W)}``.

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
