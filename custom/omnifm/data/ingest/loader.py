"""Loading one case: MONAI ``LoadImage`` (NIfTI or DICOM reader), RAS orientation, optional
resampling, the geometry checks, label values to class indices and intensity normalisation
(:func:`load_case`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor, NibabelReader
from monai.transforms import LoadImage, Orientationd, Spacingd
from monai.utils import convert_to_numpy

from omnifm.data.ingest.arguments import _check_case, _check_label_values, _check_spacing
from omnifm.data.ingest.common import CaseError, _is_nifti
from omnifm.data.ingest.dicom_reader import _DicomReader
from omnifm.data.ingest.geometry import _check_affine, _check_geometry, _check_nifti_affine, _check_resampled_size
from omnifm.data.normalize import normalize_intensity

@contextmanager
def _quiet() -> Iterator[None]:
    """Silence MONAI/pydicom warnings and log records, which quote file names."""
    loggers = [logging.getLogger(name) for name in ("monai", "pydicom", "LoadImage")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@lru_cache(maxsize=1)
def _loader() -> LoadImage:
    """One ``LoadImage`` per process (building it instantiates every default MONAI reader)."""
    with _quiet():
        return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)


def _reader_for(source: Any) -> NibabelReader | _DicomReader:
    if isinstance(source, (str, Path)) and _is_nifti(source):
        return NibabelReader()
    return _DicomReader()


def _read(source: Any, what: str) -> MetaTensor:
    """One image through ``LoadImage``; any failure becomes a path-free :class:`CaseError`."""
    sources = [str(s) for s in source] if isinstance(source, (list, tuple)) else str(source)
    if isinstance(source, (str, Path)) and _is_nifti(source):
        _check_nifti_affine(source, what)
    try:
        with _quiet():
            image = _loader()(sources, reader=_reader_for(source))
    except CaseError as err:
        raise CaseError(f"{what}: {err}") from None
    except Exception as err:
        raise CaseError(f"{what} unreadable: {type(err).__name__}") from None
    if image.ndim != 4:
        raise CaseError(f"{what} is not a 3D volume")
    _check_affine(image, what)
    return image


def _labels_to_index(label: MetaTensor) -> MetaTensor:
    """Several binary label channels (e.g. DICOM SEG segments) -> one map, channel ``c`` = ``c + 1``."""
    if label.shape[0] == 1:
        return label
    index = np.zeros((1, *label.shape[1:]), dtype=np.float32)
    for c in range(label.shape[0]):
        index[0][convert_to_numpy(label[c]) > 0] = c + 1
    return MetaTensor(index, affine=label.affine, meta=label.meta)


def _load_tensors(case: Mapping[str, Any], spacing: tuple[float, float, float] | None) -> tuple[dict, int]:
    """RAS-oriented (and resampled) image/label MetaTensors and the number of input slices."""
    data = {"image": _read(case["image"], "image")}
    if data["image"].shape[0] != 1:
        raise CaseError("image is not single-channel (colour or multi-volume images are not supported)")
    slices = int(data["image"].shape[-1])
    if case.get("label") is not None:
        data["label"] = _labels_to_index(_read(case["label"], "label"))
    keys = list(data)
    data = Orientationd(keys=keys, axcodes="RAS", labels=None)(data)
    if "label" in data:
        _check_geometry(data["image"], data["label"])
    if spacing is not None:
        _check_resampled_size(data["image"], spacing)
        modes = ["bilinear" if key == "image" else "nearest" for key in keys]
        data = Spacingd(keys=keys, pixdim=spacing, mode=modes)(data)
    return data, slices


def _integral(label: np.ndarray) -> np.ndarray:
    rounded = np.rint(label)
    if not np.allclose(label, rounded, atol=1e-3):
        raise CaseError("label is not integer-valued")
    return rounded.astype(np.int64)


def _class_indices(label: np.ndarray, label_values: dict[int, int] | None) -> np.ndarray:
    """Raw label values -> uint8 class indices (raw values when ``label_values`` is None)."""
    raw = _integral(label)
    values = np.unique(raw)
    if label_values is None:
        outside = values[(values < 0) | (values > 255)]
        if outside.size:
            raise CaseError(f"label value {int(outside[0])} is outside [0, 255]; pass label_values to map it")
        return raw.astype(np.uint8)
    mapping = {0: 0, **label_values}
    unknown = [value for value in values.tolist() if value not in mapping]
    if unknown:
        raise CaseError(f"label value {unknown[0]} is not in label_values (known raw values: {sorted(mapping)})")
    keys = np.array(sorted(mapping), dtype=np.int64)
    lookup = np.array([mapping[key] for key in keys.tolist()], dtype=np.uint8)
    return lookup[np.searchsorted(keys, raw)]


def load_case(
    case: Mapping[str, Any],
    spacing: tuple[float, float, float] | None = None,
    label_values: Mapping[int, int] | None = None,
    normalize: bool = True,
) -> dict[str, np.ndarray]:
    """Load one case as plain numpy arrays, oriented RAS.

    Args:
        case: ``{"image": path, "label": path (optional), "modality": one of MODALITIES}``.
            A path is a NIfTI file (``.nii``/``.nii.gz``), a DICOM file (single slice or enhanced
            multi-frame), a folder holding one DICOM series, or a list of the files of one series.
        spacing: Target voxel spacing in mm ``(x, y, z)`` (bilinear for the image, nearest for the
            label), or ``None`` to keep the native grid.
        label_values: ``{raw label value: class index}``; raw ``0`` maps to ``0`` unless given.
            ``None`` keeps the raw values (which must then be integers in ``[0, 255]``).
        normalize: Apply :func:`omnifm.data.normalize.normalize_intensity` for the case's modality.

    Returns:
        ``{"image": float32 (1, H, W, D)}`` plus ``"label": uint8 (1, H, W, D)`` class indices when
        the case has a label.

    Raises:
        CaseError: The case cannot be read or is inconsistent (path-free reason, e.g.
            ``"image unreadable: InvalidDicomError"`` or ``"label value 7 is not in label_values"``).
        ValueError: An argument is invalid.
    """
    case = _check_case(case)
    spacing = _check_spacing(spacing)
    values = _check_label_values(label_values)
    data, _ = _load_tensors(case, spacing)
    image = convert_to_numpy(data["image"], dtype=np.float32)
    if normalize:
        image = normalize_intensity(image, case["modality"])
    out = {"image": np.ascontiguousarray(image, dtype=np.float32)}
    if "label" in data:
        out["label"] = np.ascontiguousarray(_class_indices(convert_to_numpy(data["label"]), values))
    return out
