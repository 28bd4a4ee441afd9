"""Write a classic single-frame DICOM series, one file per slice, with pydicom.

:func:`write_dicom_series` is the one writer behind the phantom's DICOM output, the ingestion
benchmark and the tests that need a DICOM series on disk. It writes explicit VR little endian
files of the MR, CT, PET or NM (SPECT) image storage SOP class with the patient, study and series identity,
the slice geometry (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
``SliceThickness``), the rescale (``RescaleSlope``/``RescaleIntercept``) and 16-bit stored pixels.
pydicom is imported only when a series is written, so importing this module does not need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["decimal_string", "write_dicom_series"]

_SOP_CLASSES = {  # DICOM modality -> name of its image storage SOP class in pydicom.uid
    "MR": "MRImageStorage",
    "CT": "CTImageStorage",
    "PT": "PositronEmissionTomographyImageStorage",
    "NM": "NuclearMedicineImageStorage",
}


def decimal_string(value: float) -> str:
    """A DICOM decimal string (DS) of ``value``, at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def write_dicom_series(
    folder: str | Path,
    stored: np.ndarray,
    spacing: Sequence[float],
    modality: str = "MR",
    *,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    slope: float = 1.0,
    intercept: float = 0.0,
    patient_name: str = "ANONYMOUS",
    patient_id: str = "",
    series_description: str = "",
    file_order: Sequence[int] | None = None,
    instance_numbers: Sequence[int] | None = None,
    file_name: str | Callable[[int, int], str] = "slice_{index:04d}.dcm",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: Callable[[int], str] | None = None,
    slice_location: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``stored`` as one DICOM file per slice into ``folder`` (created if missing).

    Slice ``k`` lies at ``origin + k * spacing[2] * normal`` (LPS millimetres), where ``normal`` is
    the cross product of the row and column directions in ``orientation``.

    Args:
        folder: Output folder.
        stored: Stored pixel values, shape ``(D, rows, cols)``: ``D`` slices of ``rows x cols``
            pixels, dtype int16 or uint16 (``PixelRepresentation`` follows the signedness).
        spacing: ``(column spacing, row spacing, slice gap)`` in mm, i.e. x, y, z of the voxel grid;
            ``PixelSpacing`` is written in DICOM order ``[row spacing, column spacing]`` and
            ``SliceThickness`` is the slice gap.
        modality: DICOM modality, ``"MR"``, ``"CT"``, ``"PT"`` or ``"NM"``; picks the SOP class.
        origin: ``ImagePositionPatient`` of slice 0.
        orientation: ``ImageOrientationPatient`` (row direction, then column direction).
        slope: ``RescaleSlope``.
        intercept: ``RescaleIntercept``.
        patient_name: ``PatientName``.
        patient_id: ``PatientID``.
        series_description: ``SeriesDescription``.
        file_order: Slice indices in the order the files are written (a permutation of
            ``range(D)``); ``None`` writes slice 0 first.
        instance_numbers: ``InstanceNumber`` of each slice (indexed by slice); ``None`` gives
            ``k + 1``.
        file_name: File name of each slice: a format string with the fields ``index`` (slice
            index) and ``count`` (how many files were written before), or a callable
            ``(index, count) -> name``.
        study_uid: ``StudyInstanceUID``; ``None`` generates a random one.
        series_uid: ``SeriesInstanceUID``; ``None`` generates a random one.
        sop_uid: ``SOPInstanceUID`` of slice ``k`` (for deterministic UIDs); ``None`` generates
            random ones.
        slice_location: Also write ``SliceLocation`` (the z of ``ImagePositionPatient``).
        attributes: Further attributes (keyword -> value) written to every slice; they override
            the ones above.

    Returns:
        The written files, in the order they were written.

    Raises:
        ValueError: If ``stored`` is not a 3-D int16/uint16 array, ``modality`` is unknown, or
            ``spacing``, ``origin``, ``orientation``, ``file_order`` or ``instance_numbers`` has
            the wrong length.
    """
    import pydicom.uid
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(stored)
    if pixels.ndim != 3 or pixels.dtype.kind not in "iu" or pixels.dtype.itemsize != 2:
        raise ValueError(f"stored must be a (D, rows, cols) int16 or uint16 array, got {pixels.dtype} {pixels.shape}")
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASSES)}, got {modality!r}")
    if len(spacing) != 3 or len(origin) != 3 or len(orientation) != 6:
        raise ValueError("spacing and origin need 3 values and orientation 6")
    slices = len(pixels)
    order = range(slices) if file_order is None else [int(k) for k in file_order]
    if sorted(order) != list(range(slices)):
        raise ValueError(f"file_order must be a permutation of range({slices})")
    if instance_numbers is not None and len(instance_numbers) != slices:
        raise ValueError(f"instance_numbers needs {slices} values")
    pixels = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    start = np.asarray(origin, dtype=float)
    sop_class = getattr(pydicom.uid, _SOP_CLASSES[modality])
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    name = file_name if callable(file_name) else lambda index, count: file_name.format(index=index, count=count)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for k in order:
        sop = sop_uid(k) if sop_uid is not None else generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.PatientName, ds.PatientID, ds.Modality = patient_name, patient_id, modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesDescription = series_description
        ds.InstanceNumber = int(instance_numbers[k]) if instance_numbers is not None else k + 1
        position = start + k * float(spacing[2]) * normal
        ds.ImagePositionPatient = [decimal_string(float(v)) for v in position]
        if slice_location:
            ds.SliceLocation = decimal_string(float(position[2]))
        ds.ImageOrientationPatient = [decimal_string(float(v)) for v in iop]
        ds.PixelSpacing = [decimal_string(float(spacing[1])), decimal_string(float(spacing[0]))]
        ds.SliceThickness = decimal_string(float(spacing[2]))
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.RescaleSlope, ds.RescaleIntercept = decimal_string(float(slope)), decimal_string(float(intercept))
        for key, value in (attributes or {}).items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        files.append(folder / name(k, len(files)))
        ds.save_as(files[-1], enforce_file_format=True)
    return files
