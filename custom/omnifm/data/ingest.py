"""Ingest real site data: DICOM series or NIfTI volumes into oriented, anonymous NIfTI cases.

Reading goes through MONAI: ``LoadImage`` with ``NibabelReader`` for ``.nii``/``.nii.gz`` and
with a :class:`~monai.data.PydicomReader` subclass for DICOM (pixel data decoded by pydicom's
handlers, so every transfer syntax with an installed plugin works: RLE, deflate, JPEG lossless
and baseline, JPEG-LS and JPEG 2000 through the pylibjpeg plugins). Then
``Orientation(RAS)`` and optionally ``Spacing``. The subclass fixes what MONAI 1.6's
``PydicomReader`` does not do itself (each is covered by a test):

- a classic series is stacked in *position* order along the slice normal (MONAI sorts by
  ``InstanceNumber``, which need not follow position), and duplicate positions (multi-echo or
  multi-phase series) or uneven gaps (missing slices) are rejected;
- an enhanced multi-frame file (one file, many frames) gets its geometry and its
  ``RescaleSlope``/``RescaleIntercept`` from the functional groups (MONAI stacks its frames along
  the wrong axis with an identity affine and no rescale);
- a single-slice file becomes a one-slice 3D volume whose third axis is the slice normal;
- slices (or enhanced frames) with different ``ImageOrientationPatient`` (a localizer or a
  rotated slice mixed into the series) are rejected: MONAI would use slice 0's orientation for all.

Geometry is checked before it is used: an affine (voxel-to-world matrix) holding NaN/Inf or
singular is rejected, for a NIfTI on the matrix its header declares (MONAI silently replaces a
broken sform by the qform or the pixel sizes); the image/label affine comparison fails on NaN;
a target ``spacing`` outside ``SPACING_RANGE_MM`` or one that would resample a case beyond
4096 voxels per side / 2**29 voxels is refused before anything is allocated.

MONAI's own series path applies ``RescaleSlope``/``RescaleIntercept`` per slice, so values are
``slope * stored + intercept`` (e.g. Hounsfield units) in every case.

Supported input layouts (:func:`discover_cases`; hidden files and folders are ignored):

- NIfTI: ``<any>/<case>_image.nii[.gz]`` with an optional ``<case>_label.nii[.gz]`` beside it;
  ``<any>/images/<case>.nii[.gz]`` with an optional ``<any>/labels/<case>.nii[.gz]``; or
  ``<any>/<case>/image.nii[.gz]`` with an optional ``label.nii[.gz]`` beside it.
- DICOM: files anywhere below the input folder, grouped by ``SeriesInstanceUID``; one series is
  one case. A ``label.nii[.gz]`` in the folder holding a series' files is that series' label
  (typical layout ``<input>/<case>/*.dcm`` plus ``<input>/<case>/label.nii.gz``), as is
  ``<any>/labels/<case>.nii[.gz]`` for a series in ``<any>/images/<case>/`` (the layout of the
  DICOM phantom); a label is ignored (with a note) when its folder holds several series. Non-image objects (SR, RT, SEG,
  presentation states, ...) are skipped. A series whose folder also holds a file that claims to
  be DICOM but cannot be parsed (e.g. a truncated slice) is skipped rather than converted with a
  slice missing. Only single-channel (grayscale) images are supported. A DICOM label may be a
  label series or a DICOM SEG (read by MONAI's own SEG support; segment ``c`` becomes ``c + 1``).

Modality (:func:`dicom_modality`): DICOM ``Modality`` ``CT`` -> ``"ct"``, ``PT`` -> ``"pet"``,
``MR`` -> an MR sequence guessed from ``SeriesDescription``/``ProtocolName`` (FLAIR, T2, T1 with
contrast, T1), ``"t1"`` when nothing matches. NIfTI carries no modality: pass one (``modality=``
or ``--modality``), else ``"t1"`` is assumed and the summary says so. An explicit modality
always overrides.

Privacy: case ids are ``case_000``, ``case_001``, ... in the order of the cases' relative paths;
no file name, path, patient name or DICOM tag value appears in ids, outputs, the datalist, the
progress log, the summary or :class:`CaseError` messages. MONAI and pydicom warnings (which
quote file names) are suppressed while reading.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor, NibabelReader, NibabelWriter, PydicomReader
from monai.data.utils import affine_to_spacing, orientation_ras_lps
from monai.transforms import LoadImage, Orientationd, Spacingd
from monai.utils import MetaKeys, SpaceKeys, convert_to_numpy, optional_import

from omnifm.data.modalities import MODALITIES
from omnifm.data.normalize import normalize_intensity
from omnifm.data.site_config import SPACING_RANGE_MM
from omnifm.validation import check_range, is_int

pydicom, _HAS_PYDICOM = optional_import("pydicom")

__all__ = [
    "DATALIST_NAME",
    "CaseError",
    "PrepareSummary",
    "SkippedCase",
    "dicom_modality",
    "discover_cases",
    "load_case",
    "prepare_dataset",
]

DATALIST_NAME = "datalist.json"
_FORMATS = ("dicom", "nifti")
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "ECG"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_POSITION_TOL_MM = 1e-3  # slices closer than this share a position
_GAP_TOL = 0.05  # relative tolerance of the slice gap before a series counts as uneven
_GEOMETRY_TOL_MM = 1e-2  # allowed affine difference between an image and its label
_ORIENTATION_TOL = 1e-3  # allowed difference of direction cosines between the slices of one series
_MIN_SINGULAR = 1e-6  # smallest singular value (mm) of an affine's 3x3 part; below: singular
_MAX_RESAMPLED_SIDE, _MAX_RESAMPLED_VOXELS = 4096, 2**29  # a resampled case beyond these is implausible


class CaseError(ValueError):
    """A case that cannot be ingested.

    The message is safe to log: it never contains a path, file name, patient name or DICOM tag
    value, only what went wrong (e.g. ``"image unreadable: InvalidDicomError"``).
    """


# --------------------------------------------------------------------------- argument checks


def _check_modality(modality: str | None, allow_none: bool = False) -> str | None:
    if modality is None and allow_none:
        return None
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    return modality


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence) or len(spacing) != 3:
        raise ValueError(f"spacing must be three positive numbers (mm) or None, got {spacing!r}")
    for i, value in enumerate(spacing):
        check_range(f"spacing[{i}] (mm)", value, *SPACING_RANGE_MM)
    return tuple(float(v) for v in spacing)  # type: ignore[return-value]


def _check_label_values(label_values: Mapping[int, int] | None) -> dict[int, int] | None:
    if label_values is None:
        return None
    if not isinstance(label_values, Mapping):
        raise ValueError(f"label_values must be a dict {{raw value: class index}}, got {label_values!r}")
    for raw, index in label_values.items():
        if not is_int(raw) or not is_int(index) or not 0 <= index <= 255:
            raise ValueError(f"label_values must map ints to class indices in [0, 255], got entry {raw!r}: {index!r}")
    return {int(raw): int(index) for raw, index in label_values.items()}


def _check_case(case: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(case, Mapping) or "image" not in case or "modality" not in case:
        raise ValueError(f"case must be a dict with 'image' and 'modality' (and optional 'label'), got {case!r}")
    _check_modality(case["modality"])
    return {key: case[key] for key in ("image", "label", "modality") if case.get(key) is not None}


# --------------------------------------------------------------------------- DICOM helpers


def _require_pydicom() -> None:
    if not _HAS_PYDICOM:
        raise CaseError("DICOM support needs pydicom (pip install 'omnifm-flare[dicom]')")


def _is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _has_pixels(ds: Any) -> bool:
    return any(keyword in ds for keyword in _PIXEL_KEYWORDS)


def _floats(value: Any, n: int) -> np.ndarray | None:
    """``value`` as ``n`` finite floats, or ``None`` when missing or malformed."""
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (n,) and np.isfinite(array).all() else None


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise CaseError("image orientation is degenerate")
    return normal / norm


def _order_by_position(positions: np.ndarray) -> np.ndarray:
    """Stable order of slices along the normal; rejects duplicate positions and uneven gaps."""
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    if gaps.size and gaps.min() < _POSITION_TOL_MM:
        raise CaseError("several slices share one position (multi-echo, multi-phase or duplicated files?)")
    if gaps.size > 1:
        median = float(np.median(gaps))
        if np.abs(gaps - median).max() > max(_POSITION_TOL_MM * 10, _GAP_TOL * median):
            raise CaseError("slice spacing is uneven (missing slices?)")
    return order


def _read_dataset(path: str, strict: bool) -> Any | None:
    """Full dataset of one file; ``None`` (or ``CaseError`` when ``strict``) if not a DICOM image."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # pydicom raises many types on malformed files
        if strict:
            raise CaseError(f"not a readable DICOM file ({type(err).__name__})") from None
        return None
    if not _has_pixels(ds):
        if strict:
            raise CaseError("no pixel data (not a DICOM image)")
        return None
    return ds


def _source_files(data: Sequence[str]) -> tuple[list[str], bool]:
    """Files behind a reader input and whether they come from a folder (tolerant reading)."""
    if len(data) == 1 and Path(data[0]).is_dir():
        folder = Path(data[0])
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and not _is_nifti(p)]
        return sorted(str(p) for p in files), True
    return [str(p) for p in data], False


def _check_orientations(orientations: Sequence[np.ndarray | None], what: str) -> None:
    """Every slice (or frame) must share one ``ImageOrientationPatient`` (or none may have one)."""
    known = [o for o in orientations if o is not None]
    if not known:
        return
    if len(known) != len(orientations):
        raise CaseError(f"{len(orientations) - len(known)} of {len(orientations)} {what} have no valid orientation")
    distinct = [known[0]]
    for o in known[1:]:
        if all(np.abs(o - d).max() > _ORIENTATION_TOL for d in distinct):
            distinct.append(o)
    if len(distinct) > 1:
        raise CaseError(
            f"the {what} have {len(distinct)} different orientations (a localizer, rotated or reformatted slice "
            "mixed in?); export one orientation per series"
        )


def _check_series(datasets: list[Any]) -> None:
    if any(int(_number(ds.get("SamplesPerPixel"), 1)) != 1 for ds in datasets):
        raise CaseError("not single-channel (colour images are not supported)")
    if len(datasets) == 1:
        return
    _check_orientations([_floats(ds.get("ImageOrientationPatient"), 6) for ds in datasets], "slices of the series")
    if any(int(_number(ds.get("NumberOfFrames"), 1)) > 1 for ds in datasets):
        raise CaseError("a series of multi-frame files is not supported; give one multi-frame file per case")
    if len({str(ds.get("SeriesInstanceUID", "")) for ds in datasets}) > 1:
        raise CaseError("the files belong to more than one DICOM series")
    if len({(ds.get("Rows"), ds.get("Columns")) for ds in datasets}) > 1:
        raise CaseError("the slices of the series differ in size")


def _sort_series(datasets: list[Any]) -> list[Any]:
    """Slices in position order; renumbers ``InstanceNumber`` (in memory) so MONAI keeps that order."""
    orientation = _floats(datasets[0].get("ImageOrientationPatient"), 6)
    positions = [_floats(ds.get("ImagePositionPatient"), 3) for ds in datasets]
    if orientation is not None and all(p is not None for p in positions):
        order = _order_by_position(np.stack(positions) @ _normal(orientation))
    else:  # no geometry: acquisition order, then file order
        order = np.argsort([_number(ds.get("InstanceNumber"), 0.0) for ds in datasets], kind="stable")
    ordered = [datasets[i] for i in order]
    for rank, ds in enumerate(ordered, start=1):
        ds.InstanceNumber = rank  # MONAI's _combine_dicom_series stacks by InstanceNumber
    return ordered


@dataclass
class _Frames:
    """Decoded frames of one DICOM file with their geometry (LPS), in acquisition order."""

    pixels: np.ndarray  # (n, rows, cols), rescaled float32
    orientation: np.ndarray  # (6,) row and column direction cosines
    pixel_spacing: np.ndarray  # (2,) row spacing, column spacing
    positions: np.ndarray | None  # (n, 3) or None when unknown
    slice_spacing: float  # frame step along the normal when positions are unknown (or n == 1)


def _functional(ds: Any, index: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from frame ``index``'s functional group, the shared group, else the top level."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and items[0].get(keyword) not in (None, ""):
            return items[0].get(keyword)
    return ds.get(keyword)


def _decode(ds: Any) -> np.ndarray:
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:  # decoder plugins raise RuntimeError, ValueError, ...
        raise CaseError(f"pixel data could not be decoded ({type(err).__name__})") from None
    n = int(_number(ds.get("NumberOfFrames"), 1)) or 1
    if pixels.size != n * int(ds.Rows) * int(ds.Columns):
        raise CaseError("pixel data does not match the image size")
    return pixels.reshape(n, int(ds.Rows), int(ds.Columns))


def _frames(ds: Any) -> _Frames:
    stored = _decode(ds)
    n = stored.shape[0]
    transform = "PixelValueTransformationSequence"
    slopes = np.array([_number(_functional(ds, i, transform, "RescaleSlope"), 1.0) for i in range(n)])
    intercepts = np.array([_number(_functional(ds, i, transform, "RescaleIntercept"), 0.0) for i in range(n)])
    pixels = stored.astype(np.float32) * slopes[:, None, None].astype(np.float32)
    pixels += intercepts[:, None, None].astype(np.float32)
    orientations = [_floats(_functional(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"), 6) for i in range(n)]
    _check_orientations(orientations, "frames of the file")
    orientation = orientations[0]
    spacing = _floats(_functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), 2)
    positions = [_floats(_functional(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3) for i in range(n)]
    between = _number(_functional(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices"), 0.0)
    thickness = _number(_functional(ds, 0, "PixelMeasuresSequence", "SliceThickness"), 0.0)
    # a lone slice extends over its thickness; a stack without positions steps by the spacing
    preferred = (thickness, between) if n == 1 else (between, thickness)
    slice_spacing = next((v for v in preferred if v > 0), 1.0)
    return _Frames(
        pixels=pixels,
        orientation=np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]) if orientation is None else orientation,
        pixel_spacing=np.ones(2) if spacing is None else spacing,
        positions=np.stack(positions) if all(p is not None for p in positions) else None,
        slice_spacing=slice_spacing,
    )


class _DicomReader(PydicomReader):
    """MONAI's ``PydicomReader`` with the fix-ups listed in the module docstring.

    ``read`` accepts a folder (tolerant: non-image files are skipped), one file, or the files of
    one series; a classic series then takes MONAI's own stacking path (``_combine_dicom_series``,
    which applies the rescale per slice and derives the affine from the first and last slice),
    after :func:`_sort_series`. DICOM SEG objects take MONAI's SEG path. Every other single file
    (one slice or an enhanced multi-frame image) is assembled by :meth:`_file_data`.
    """

    def __init__(self) -> None:
        super().__init__(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> Any:
        _require_pydicom()
        files, from_folder = _source_files([str(d) for d in ((data,) if isinstance(data, (str, Path)) else data)])
        datasets = [ds for ds in (_read_dataset(f, strict=not from_folder) for f in files) if ds is not None]
        if not datasets:
            raise CaseError("no DICOM image files found")
        _check_series(datasets)
        if len(datasets) == 1:
            self.has_series, self.filenames = False, files[:1]
            return datasets[0]
        self.has_series, self.filenames = True, [files]
        return _sort_series(datasets)

    def get_data(self, data: Any) -> tuple[np.ndarray, dict]:
        if isinstance(data, list) or "SegmentSequence" in data:
            try:
                return super().get_data(data)
            except CaseError:
                raise
            except Exception as err:
                raise CaseError(f"series could not be decoded or assembled ({type(err).__name__})") from None
        return self._file_data(data)

    def _file_data(self, ds: Any) -> tuple[np.ndarray, dict]:
        frames = _frames(ds)
        normal = _normal(frames.orientation)
        pixels, first, last = frames.pixels, None, None
        if frames.positions is not None:
            order = _order_by_position(frames.positions @ normal)
            pixels, positions = pixels[order], frames.positions[order]
            first, last = positions[0], positions[-1]
        else:
            top = _floats(ds.get("ImagePositionPatient"), 3)
            first = np.zeros(3) if top is None else top
            last = first + normal * frames.slice_spacing * (len(pixels) - 1)
        n = len(pixels)
        meta: dict[str, Any] = {
            "00200037": {"vr": "DS", "Value": frames.orientation.tolist()},
            "00200032": {"vr": "DS", "Value": first.tolist()},
            "00280030": {"vr": "DS", "Value": frames.pixel_spacing.tolist()},
            "lastImagePositionPatient": np.asarray(last),
            MetaKeys.SPATIAL_SHAPE: (pixels.shape[1], pixels.shape[2], n),
        }
        affine = self._get_affine(meta, lps_to_ras=False)
        if n == 1:  # MONAI leaves (0, 0, 1) as the third column of a single slice
            affine[:3, 2] = normal * frames.slice_spacing
        affine = orientation_ras_lps(affine) @ np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        array = np.ascontiguousarray(np.moveaxis(pixels, 0, -1).swapaxes(0, 1))
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: array.shape,
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "spacing": affine_to_spacing(affine, r=3),
        }
        return array, meta


# --------------------------------------------------------------------------- loading


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


def _check_nifti_affine(path: str | Path, what: str) -> None:
    """The affine a NIfTI header declares (MONAI silently replaces a broken sform by the qform or pixdim)."""
    import nibabel

    try:
        affine = nibabel.load(str(path)).header.get_best_affine()
    except Exception as err:  # nibabel raises many types on malformed headers
        raise CaseError(f"{what} unreadable: {type(err).__name__}") from None
    _check_affine_matrix(np.asarray(affine, dtype=np.float64), what)


def _check_affine(image: MetaTensor, what: str) -> None:
    """The voxel-to-world matrix must be finite and invertible (else geometry checks mean nothing)."""
    _check_affine_matrix(convert_to_numpy(image.affine, dtype=np.float64), what)


def _check_affine_matrix(affine: np.ndarray, what: str) -> None:
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise CaseError(f"{what} geometry is invalid: its affine (voxel-to-world matrix) holds NaN or Inf")
    if np.linalg.svd(affine[:3, :3], compute_uv=False).min() < _MIN_SINGULAR:
        raise CaseError(f"{what} geometry is invalid: its affine is singular (a zero-length or repeated voxel axis)")


def _labels_to_index(label: MetaTensor) -> MetaTensor:
    """Several binary label channels (e.g. DICOM SEG segments) -> one map, channel ``c`` = ``c + 1``."""
    if label.shape[0] == 1:
        return label
    index = np.zeros((1, *label.shape[1:]), dtype=np.float32)
    for c in range(label.shape[0]):
        index[0][convert_to_numpy(label[c]) > 0] = c + 1
    return MetaTensor(index, affine=label.affine, meta=label.meta)


def _check_geometry(image: MetaTensor, label: MetaTensor) -> None:
    if tuple(label.shape) != tuple(image.shape):
        raise CaseError(f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}")
    difference = float(np.abs(convert_to_numpy(label.affine) - convert_to_numpy(image.affine)).max())
    if not difference <= _GEOMETRY_TOL_MM:  # written so that NaN fails
        raise CaseError("label position or orientation does not match the image")


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


def _check_resampled_size(image: MetaTensor, spacing: tuple[float, float, float]) -> None:
    """Refuse a target spacing that would blow the case up to an implausible grid (before allocating it)."""
    native = np.linalg.norm(convert_to_numpy(image.affine, dtype=np.float64)[:3, :3], axis=0)
    shape = np.ceil(np.asarray(image.shape[1:], dtype=np.float64) * native / np.asarray(spacing)).astype(np.int64)
    if shape.max() > _MAX_RESAMPLED_SIDE or float(np.prod(shape, dtype=np.float64)) > _MAX_RESAMPLED_VOXELS:
        raise CaseError(
            f'resampling to "spacing" {list(spacing)} mm would make a {tuple(shape.tolist())} volume '
            f"(native spacing {tuple(np.round(native, 3).tolist())} mm): choose a coarser spacing"
        )


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


# --------------------------------------------------------------------------- discovery

_FLAIR = ("flair", "darkfluid", "dark fluid", "dark-fluid", "tirm")
_CONTRAST = {"ce", "gd", "gad", "gado", "post", "postcontrast", "postgd", "t1c", "t1ce", "t1gd", "t1post"}
_T1 = ("t1", "mprage", "mp-rage", "mp_rage", "spgr", "bravo", "tfl", "tfe")


def _mr_sequence(description: str, contrast_agent: bool) -> str:
    """Guess the MR sequence from a series description; ``"t1"`` when nothing matches."""
    text = description.lower()
    tokens = set(re.split(r"[^a-z0-9+]+", text))
    if any(word in text for word in _FLAIR):
        return "flair"
    if any(token.startswith("t2") for token in tokens):
        return "t2"
    if tokens & _CONTRAST or any(word in text for word in ("+c", "c+", "+gd", "gad", "contrast")):
        return "t1ce"
    if contrast_agent and any(word in text for word in _T1):
        return "t1ce"
    return "t1"


def dicom_modality(ds: Any) -> str | None:
    """The omnifm modality of a DICOM header; ``None`` for modalities other than MR, CT and PT.

    ``CT`` -> ``"ct"``, ``PT`` -> ``"pet"``, ``MR`` -> ``"flair"`` if ``SeriesDescription`` or
    ``ProtocolName`` mentions FLAIR/dark fluid/TIRM, else ``"t2"`` for a ``T2*`` token, else
    ``"t1ce"`` for contrast words (``+C``, ``Gd``, ``gad``, ``contrast``, a ``post``, ``CE`` or
    ``T1C`` token...) or a ``ContrastBolusAgent`` on a T1-type series, else ``"t1"`` (also the
    default for MR series whose description says nothing).
    """
    kind = str(ds.get("Modality", "")).upper()
    if kind == "CT":
        return "ct"
    if kind == "PT":
        return "pet"
    if kind != "MR":
        return None
    description = f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}"
    return _mr_sequence(description, bool(str(ds.get("ContrastBolusAgent", "")).strip()))


def _visible_files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def _nifti_stem(path: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def _sibling_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _nifti_case(path: Path) -> dict[str, Any] | None:
    """The case an image NIfTI file starts, or ``None`` if the file is not a case image."""
    stem = _nifti_stem(path)
    if stem.endswith("_image"):
        label = _sibling_nifti(path.parent, f"{stem[: -len('_image')]}_label")
    elif path.parent.name == "images":
        label = _sibling_nifti(path.parent.parent / "labels", stem)
    elif stem == "image":
        label = _sibling_nifti(path.parent, "label")
    else:
        return None
    label = None if label is None else str(label)
    return {"image": str(path), "label": label, "modality": None, "format": "nifti", "problem": None}


def _discover_nifti(root: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in _visible_files(root):
        if _is_nifti(path) and (case := _nifti_case(path)) is not None:
            found.append((path.relative_to(root).as_posix(), case))
    return found


_UNREADABLE = object()  # a file that claims to be DICOM but cannot be parsed
_NOT_DICOM_SUFFIXES = (".json", ".txt", ".csv", ".md", ".py", ".zip", ".gz", ".tar", ".xml", ".pdf")


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        return bool(pydicom.misc.is_dicom(path))
    except OSError:
        return False


def _dicom_header(path: Path) -> Any:
    """Header of a DICOM image file; ``None`` for anything else; ``_UNREADABLE`` for broken DICOM.

    Broken means: cannot be parsed but claims to be DICOM (``.dcm`` suffix or ``DICM`` preamble),
    or an image object (SOP class "... Image Storage") without its image attributes (truncated).
    """
    if _is_nifti(path) or path.suffix.lower() in _NOT_DICOM_SUFFIXES:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
            return None
        if all(keyword in ds for keyword in ("SeriesInstanceUID", "Rows", "Columns")):
            return ds
        sop_class = ds.get("SOPClassUID")
        if sop_class is not None:
            return _UNREADABLE if "Image Storage" in getattr(sop_class, "name", "") else None
    except Exception:  # pydicom raises many types on malformed input
        pass
    return _UNREADABLE if _looks_like_dicom(path) else None


def _dicom_label(folder: Path) -> Path | None:
    """``<folder>/label.nii[.gz]``, else ``labels/<case>.nii[.gz]`` for a series in ``images/<case>/``."""
    label = _sibling_nifti(folder, "label")
    if label is None and folder.parent.name == "images":
        label = _sibling_nifti(folder.parent.parent / "labels", folder.name)
    return label


def _dicom_case(files: list[Path], header: Any, label: Path | None, problem: str | None) -> dict[str, Any]:
    return {
        "image": [str(f) for f in files],
        "label": None if label is None else str(label),
        "modality": dicom_modality(header),
        "format": "dicom",
        "problem": problem,
    }


def _discover_dicom(root: Path, notes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    series: dict[str, list[tuple[Path, Any]]] = {}
    unreadable: dict[Path, int] = {}
    for path in _visible_files(root):
        ds = _dicom_header(path)
        if ds is _UNREADABLE:
            unreadable[path.parent] = unreadable.get(path.parent, 0) + 1
        elif ds is not None:
            series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    per_folder: dict[Path, int] = {}
    for members in series.values():
        per_folder[members[0][0].parent] = per_folder.get(members[0][0].parent, 0) + 1
    found, ambiguous = [], 0
    for members in series.values():
        files = sorted(path for path, _ in members)
        folders = {f.parent for f in files}
        folder = files[0].parent
        label = _dicom_label(folder) if len(folders) == 1 else None
        if label is not None and per_folder[folder] > 1:
            label, ambiguous = None, ambiguous + 1
        broken = sum(unreadable.get(f, 0) for f in folders)
        problem = f"{broken} unreadable DICOM file(s) in the series folder" if broken else None
        found.append((files[0].relative_to(root).as_posix(), _dicom_case(files, members[0][1], label, problem)))
    if ambiguous:
        notes.append(f"{ambiguous} DICOM series left unlabelled: their folder holds several series and one label")
    orphans = sum(n for folder, n in unreadable.items() if folder not in per_folder)
    if orphans:
        notes.append(f"{orphans} unreadable DICOM file(s) outside any series folder were ignored")
    return found


def _discover(input_dir: str | Path, fmt: str | None, notes: list[str]) -> list[dict[str, Any]]:
    if fmt is not None and fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {list(_FORMATS)} or None, got {fmt!r}")
    root = Path(input_dir)
    if not root.is_dir():
        raise ValueError(f"input_dir must be an existing directory, got {str(input_dir)!r}")
    found = []
    if fmt in (None, "nifti"):
        found += _discover_nifti(root)
    if fmt in (None, "dicom") and (fmt == "dicom" or _HAS_PYDICOM):
        _require_pydicom()
        found += _discover_dicom(root, notes)
    found.sort(key=lambda item: item[0])
    return [{"id": f"case_{i:03d}", **case} for i, (_, case) in enumerate(found)]


def discover_cases(input_dir: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Find the cases under ``input_dir`` (layouts in the module docstring).

    Args:
        input_dir: Folder to search (recursively).
        fmt: ``"dicom"``, ``"nifti"`` or ``None`` for both.

    Returns:
        ``[{"id": "case_000", "image": path or [paths of one series], "label": path or None,
        "modality": str or None, "format": "dicom" | "nifti", "problem": str or None}, ...]``
        sorted by the relative path of each case's (first) image file; ids follow that order.
        ``modality`` is ``None`` for NIfTI and for DICOM modalities other than MR/CT/PT.
        ``problem`` is a path-free reason not to convert the case (a series whose folder also
        holds files that claim to be DICOM but cannot be parsed, e.g. a truncated slice: such a
        series could silently miss slices); :func:`prepare_dataset` skips those cases.

    Raises:
        ValueError: If ``input_dir`` is not a directory or ``fmt`` is unknown.
    """
    return _discover(input_dir, fmt, [])


# --------------------------------------------------------------------------- preparation


@dataclass
class SkippedCase:
    """A case that was not converted: its position, anonymous id and a path-free reason."""

    index: int
    case_id: str
    reason: str


@dataclass
class PrepareSummary:
    """What :func:`prepare_dataset` did; contains no path, name or tag value."""

    cases_found: int
    converted: list[str] = field(default_factory=list)
    skipped: list[SkippedCase] = field(default_factory=list)
    slices: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``skipped`` as ``{"index", "id", "reason"}`` dicts)."""
        return {
            "cases_found": self.cases_found,
            "converted": list(self.converted),
            "skipped": [{"index": s.index, "id": s.case_id, "reason": s.reason} for s in self.skipped],
            "slices": self.slices,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "slices_per_second": round(self.slices_per_second, 1),
            "megabytes_per_second": round(self.megabytes_per_second, 2),
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """Markdown table of the totals, then one row per skipped case and the notes."""
        rows = [
            ("cases found", self.cases_found),
            ("cases converted", len(self.converted)),
            ("cases skipped", len(self.skipped)),
            ("slices read", self.slices),
            ("MB read", f"{self.bytes_read / 1e6:.1f}"),
            ("seconds", f"{self.seconds:.2f}"),
            ("slices/s", f"{self.slices_per_second:.1f}"),
            ("MB/s", f"{self.megabytes_per_second:.2f}"),
        ]
        lines = ["| item | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        if self.skipped:
            lines += ["", "| # | case | skipped because |", "|---|---|---|"]
            lines += [f"| {s.index} | {s.case_id} | {s.reason} |" for s in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _source_bytes(source: Any) -> int:
    paths = [Path(p) for p in source] if isinstance(source, (list, tuple)) else [Path(source)]
    files = [f for p in paths for f in (p.iterdir() if p.is_dir() else [p])]
    return sum(f.stat().st_size for f in files if f.is_file())


def _save_nifti(tensor: MetaTensor, path: Path, dtype: Any) -> None:
    """Write a ``(1, H, W, D)`` MetaTensor with its affine through MONAI's ``NibabelWriter``."""
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(tensor, channel_dim=0)
    affine = convert_to_numpy(tensor.affine, dtype=np.float64)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.partial.nii.gz")
    writer.write(tmp)
    os.replace(tmp, path)


def _image_dtype(image: np.ndarray) -> type:
    """int16 when every value is an integer in its range (typical for rescaled CT/MR), else float32."""
    if image.size and image.min() >= -32768 and image.max() <= 32767 and np.array_equal(image, np.rint(image)):
        return np.int16
    return np.float32


def _label_dtype(label: np.ndarray) -> type:
    raw = _integral(label)
    return np.uint8 if raw.size == 0 or (raw.min() >= 0 and raw.max() <= 255) else np.int32


def _convert(case: dict[str, Any], out: Path, spacing: tuple[float, float, float] | None) -> tuple[dict, int]:
    """Write one case; returns its datalist entry and the number of slices read."""
    data, slices = _load_tensors(case, spacing)
    entry = {"id": case["id"], "image": f"images/{case['id']}.nii.gz", "label": None, "modality": case["modality"]}
    label_dtype = _label_dtype(convert_to_numpy(data["label"])) if "label" in data else None
    _save_nifti(data["image"], out / entry["image"], _image_dtype(convert_to_numpy(data["image"])))
    if label_dtype is not None:
        entry["label"] = f"labels/{case['id']}.nii.gz"
        _save_nifti(data["label"], out / entry["label"], label_dtype)
    return entry, slices


def _case_modality(case: dict[str, Any], override: str | None) -> str:
    if override is not None:
        return override
    if case["modality"] is not None:
        return case["modality"]
    if case["format"] == "nifti":
        return "t1"
    raise CaseError("unsupported DICOM modality (not MR, CT or PT); pass a modality to force one")


def _check_output(input_dir: str | Path, output_dir: str | Path) -> Path:
    out = Path(output_dir).resolve()
    inp = Path(input_dir).resolve()
    if out == inp or inp in out.parents:
        raise ValueError(f"output_dir must not be inside input_dir, got {str(output_dir)!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file, not a folder: choose a folder path")
    return out


def _make_output(out: Path, output_dir: str | Path) -> None:
    """Create ``images/`` and ``labels/`` in ``out`` and check that files can be written there."""
    try:
        for sub in ("images", "labels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"output_dir {str(output_dir)!r} cannot be created or written ({reason}): choose a writable folder "
            "(an existing images/ or labels/ inside it must be folders)"
        ) from None


def _write_datalist(out: Path, entries: list[dict[str, Any]]) -> None:
    tmp = out / f".{DATALIST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"cases": entries}, indent=2) + "\n")
    os.replace(tmp, out / DATALIST_NAME)


def _progress_line(index: int, total: int, case_id: str, outcome: str) -> str:
    return f"[{index + 1}/{total}] {case_id} {outcome}"


def prepare_dataset(
    input_dir: str | Path,
    output_dir: str | Path,
    fmt: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    modality: str | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Convert every case under ``input_dir`` to anonymous, RAS-oriented NIfTI in ``output_dir``.

    Writes ``images/<id>.nii.gz`` (values after rescale, e.g. HU, as int16 when they are all
    integers in its range, else float32; no intensity normalisation, which happens at training
    time), ``labels/<id>.nii.gz`` (raw label values, uint8 when they fit, else int32) and
    ``datalist.json`` = ``{"cases": [{"id", "image", "label", "modality"}, ...]}`` with paths
    relative to ``output_dir`` (``label`` is ``null`` for unlabelled cases). Only converted cases
    are listed; ids of skipped cases are not reused.
    A case that fails is skipped with a path-free reason; the run never stops for one case.

    Args:
        input_dir: Folder with the site's data (see :func:`discover_cases`).
        output_dir: Output folder (created; must not be inside ``input_dir``).
        fmt: ``"dicom"``, ``"nifti"`` or ``None`` to look for both.
        spacing: Resample to this voxel spacing in mm, or ``None`` for the native grid.
        modality: Force this modality for every case (else DICOM's ``Modality``; NIfTI: ``"t1"``).
        progress: Print one line per case (index, id, outcome) to stdout.

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        ValueError: If an argument is invalid (not for bad cases), including an ``output_dir``
            that is a file or cannot be created or written.
        OSError: If writing fails later (e.g. the disk fills up).
    """
    start = time.perf_counter()
    spacing = _check_spacing(spacing)
    modality = _check_modality(modality, allow_none=True)
    out = _check_output(input_dir, output_dir)
    summary = PrepareSummary(cases_found=0)
    cases = _discover(input_dir, fmt, summary.notes)
    summary.cases_found = len(cases)
    _make_output(out, output_dir)
    entries = []
    for index, case in enumerate(cases):
        outcome = _prepare_one(index, case, out, spacing, modality, summary, entries)
        if progress:
            print(_progress_line(index, len(cases), case["id"], outcome), flush=True)
    assumed = sum(1 for c in cases if c["format"] == "nifti" and modality is None)
    if assumed:
        summary.notes.append(f"modality t1 assumed for {assumed} NIfTI case(s); pass a modality to set it")
    _write_datalist(out, entries)
    summary.seconds = time.perf_counter() - start
    return summary


def _prepare_one(
    index: int,
    case: dict[str, Any],
    out: Path,
    spacing: tuple[float, float, float] | None,
    modality: str | None,
    summary: PrepareSummary,
    entries: list[dict[str, Any]],
) -> str:
    """Convert one case into ``out``, recording the result in ``summary``/``entries``."""
    tick = time.perf_counter()
    try:
        if case.get("problem"):
            raise CaseError(case["problem"])
        case = {**case, "modality": _case_modality(case, modality)}
        summary.bytes_read += _source_bytes(case["image"]) + (_source_bytes(case["label"]) if case["label"] else 0)
        entry, slices = _convert(case, out, spacing)
    except CaseError as err:
        reason = str(err)
    except Exception as err:  # never let one case stop the run; the class name is path-free
        reason = f"unexpected error: {type(err).__name__}"
    else:
        entries.append(entry)
        summary.converted.append(case["id"])
        summary.slices += slices
        labelled = "labelled" if entry["label"] else "unlabelled"
        return f"ok ({entry['modality']}, {slices} slices, {labelled}, {time.perf_counter() - tick:.2f} s)"
    summary.skipped.append(SkippedCase(index=index, case_id=case["id"], reason=reason))
    return f"skipped: {reason}"
