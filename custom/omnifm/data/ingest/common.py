"""Shared by the ingest modules: :class:`CaseError` (path-free failures), the optional pydicom
import and the NIfTI file-name test."""

from __future__ import annotations

from pathlib import Path

from monai.utils import optional_import

pydicom, _HAS_PYDICOM = optional_import("pydicom")


class CaseError(ValueError):
    """A case that cannot be ingested.

    The message is safe to log: it never contains a path, file name, patient name or DICOM tag
    value, only what went wrong (e.g. ``"image unreadable: InvalidDicomError"``).
    """


def _require_pydicom() -> None:
    if not _HAS_PYDICOM:
        raise CaseError("DICOM support needs pydicom (pip install 'omnifm-flare[dicom]')")


def _is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")
