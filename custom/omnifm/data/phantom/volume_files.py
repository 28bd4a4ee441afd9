"""Files of one phantom volume: NIfTI (RAS, mm) and DICOM series (standard axial orientation, one
file per slice, CT int16 with intercept -1024, MR/PET/SPECT uint16 with a slope; SPECT as DICOM
Modality ``NM``), each written to a temporary name and renamed into place."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from omnifm.data.dicom_series import decimal_string as _ds
from omnifm.data.dicom_series import write_dicom_series
from omnifm.data.modalities import modality_kind
from omnifm.data.phantom.acquisition import Acquisition

def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save as NIfTI (RAS, mm, qform/sform code 1) via a temporary file and a rename."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.tmp.nii.gz")
    nib.save(img, tmp)
    os.replace(tmp, path)


def _dicom_modality(modality: str) -> str:
    """DICOM Modality of a phantom modality."""
    return {"mr": "MR", "ct": "CT", "pet": "PT", "spect": "NM"}[modality_kind(modality)]


def _rescale(image: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Stored little-endian pixels (CT int16, intercept -1024; MR/PET/SPECT uint16), slope and intercept."""
    if modality == "ct":
        return np.round(image + 1024.0).clip(0, 32767).astype("<i2"), 1.0, -1024.0
    top = float(image.max())
    slope = float(_ds(top / 65000.0)) if modality in ("pet", "spect") or top > 65000.0 else 1.0
    slope = slope if slope > 0 else 1.0
    return np.round(image / slope).clip(0, 65535).astype("<u2"), slope, 0.0


@dataclass(frozen=True)
class _SeriesInfo:
    """What identifies one written DICOM series."""

    modality: str
    acquisition: Acquisition
    site: int  # 1-based site number
    case: int
    entropy: str  # request fingerprint, makes the UIDs deterministic


def _uid(info: _SeriesInfo, *parts: object) -> str:
    """Deterministic UID (pydicom root prefix) from the request fingerprint, case and ``parts``."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["omnifm-phantom", info.entropy, str(info.case), *map(str, parts)])


def _series_attributes(info: _SeriesInfo, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Attributes beyond what :func:`write_dicom_series` writes, shared by all slices of a series."""
    return {
        **_patient_and_study(info),
        "SeriesNumber": 1,
        **_image_geometry(spacing),
        **_modality_attributes(_dicom_modality(info.modality), info.acquisition),
    }


def _patient_and_study(info: _SeriesInfo) -> dict[str, Any]:
    """Synthetic patient and study attributes (no real person; fixed date)."""
    return {
        "PatientBirthDate": "",
        "PatientSex": "O",
        "FrameOfReferenceUID": _uid(info, "frame"),
        "StudyID": f"{info.case:03d}",
        "StudyDate": "20000101",
        "StudyTime": "000000",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "StudyDescription": "OmniFM synthetic brain-tumour phantom",
        "Manufacturer": "OmniFM phantom (synthetic)",
        "InstitutionName": f"SITE{info.site}",
        "BodyPartExamined": "HEAD",
        "PatientPosition": "HFS",
    }


def _image_geometry(spacing: tuple[float, ...]) -> dict[str, Any]:
    """Image attributes of the axial slices beyond pixel spacing, thickness and orientation."""
    return {
        "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
        "BurnedInAnnotation": "NO",
        "SpacingBetweenSlices": _ds(spacing[2]),
    }


def _modality_attributes(dicom_modality: str, acq: Acquisition) -> dict[str, Any]:
    """Modality-specific attributes: MR sequence timing, CT tube voltage, PET units, SPECT image type.

    SPECT is written like the other modalities, one classic single-frame file per axial slice
    (NM Image Storage; a camera usually exports one multi-frame NM file instead).
    """
    if dicom_modality == "CT":
        return {"KVP": "120", "RescaleType": "HU"}
    if dicom_modality == "NM":
        return {"ImageType": ["DERIVED", "SECONDARY", "RECON TOMO", "EMISSION"], "CorrectedImage": ["ATTN"]}
    if dicom_modality == "PT":
        return {
            "Units": "CNTS",
            "SeriesType": ["STATIC", "IMAGE"],
            "DecayCorrection": "NONE",
            "CorrectedImage": ["ATTN"],
        }
    mr = {
        "ScanningSequence": "IR" if acq.ti else "SE",
        "SequenceVariant": "NONE",
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "RepetitionTime": _ds(acq.tr),
        "EchoTime": _ds(acq.te),
        "EchoTrainLength": 1,
        "MagneticFieldStrength": "1.5",
    }
    return {**mr, "InversionTime": _ds(acq.ti)} if acq.ti else mr


def _write_dicom_series(folder: Path, image: np.ndarray, affine: np.ndarray, info: _SeriesInfo) -> None:
    """Write one file per axial slice, in standard axial orientation (LPS, rows posterior).

    Pixel ``[r, c]`` of slice ``k`` is voxel ``[H - 1 - c, W - 1 - r, k]``, so the first pixel
    is the voxel at ``(H - 1, W - 1, k)`` (patient right/anterior flipped to left/posterior).
    """
    shape = image.shape
    spacing = tuple(float(s) for s in np.diag(affine)[:3])
    stored, slope, intercept = _rescale(image, info.modality)
    corner = affine @ np.array([shape[0] - 1, shape[1] - 1, 0, 1.0])  # RAS of pixel [0, 0] of slice 0
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_dicom_series(
        tmp,
        stored[::-1, ::-1].transpose(2, 1, 0),  # (H, W, D) RAS -> (D, rows, cols)
        spacing,
        _dicom_modality(info.modality),
        origin=(-corner[0], -corner[1], corner[2]),
        slope=slope,
        intercept=intercept,
        patient_name=f"PHANTOM^SITE{info.site}^CASE{info.case:03d}",
        patient_id=f"PHANTOM-S{info.site}-C{info.case:03d}",
        series_description=f"PHANTOM {info.modality.upper()}",
        study_uid=_uid(info, "study"),
        series_uid=_uid(info, "series", info.modality),
        sop_uid=lambda k: _uid(info, "sop", info.modality, k),
        slice_location=True,
        attributes=_series_attributes(info, spacing),
    )
    _replace_path(tmp, folder)


def _replace_path(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, first removing whatever ``target`` is."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(source, target)
