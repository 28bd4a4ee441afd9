"""DICOM reading: MONAI's ``PydicomReader`` with the fix-ups listed in :mod:`omnifm.data.ingest`
(position-ordered series, enhanced multi-frame geometry and rescale, single slices, mixed
orientations rejected) and the header/pixel helpers it uses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PydicomReader
from monai.data.utils import affine_to_spacing, orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys

from omnifm.data.ingest.common import CaseError, _is_nifti, _require_pydicom, pydicom

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_POSITION_TOL_MM = 1e-3  # slices closer than this share a position
_GAP_TOL = 0.05  # relative tolerance of the slice gap before a series counts as uneven
_ORIENTATION_TOL = 1e-3  # allowed difference of direction cosines between the slices of one series


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
    """MONAI's ``PydicomReader`` with the fix-ups listed in :mod:`omnifm.data.ingest`.

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
