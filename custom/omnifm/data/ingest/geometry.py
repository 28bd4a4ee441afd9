"""Geometry checks of a case: a finite, invertible affine (for a NIfTI, the one its header declares),
an image and label on one grid, and a target spacing that does not blow the case up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from monai.utils import convert_to_numpy

from omnifm.data.ingest.common import CaseError

_GEOMETRY_TOL_MM = 1e-2  # allowed affine difference between an image and its label
_MIN_SINGULAR = 1e-6  # smallest singular value (mm) of an affine's 3x3 part; below: singular
_MAX_RESAMPLED_SIDE, _MAX_RESAMPLED_VOXELS = 4096, 2**29  # a resampled case beyond these is implausible


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


def _check_geometry(image: MetaTensor, label: MetaTensor) -> None:
    if tuple(label.shape) != tuple(image.shape):
        raise CaseError(f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}")
    difference = float(np.abs(convert_to_numpy(label.affine) - convert_to_numpy(image.affine)).max())
    if not difference <= _GEOMETRY_TOL_MM:  # written so that NaN fails
        raise CaseError("label position or orientation does not match the image")


def _check_resampled_size(image: MetaTensor, spacing: tuple[float, float, float]) -> None:
    """Refuse a target spacing that would blow the case up to an implausible grid (before allocating it)."""
    native = np.linalg.norm(convert_to_numpy(image.affine, dtype=np.float64)[:3, :3], axis=0)
    shape = np.ceil(np.asarray(image.shape[1:], dtype=np.float64) * native / np.asarray(spacing)).astype(np.int64)
    if shape.max() > _MAX_RESAMPLED_SIDE or float(np.prod(shape, dtype=np.float64)) > _MAX_RESAMPLED_VOXELS:
        raise CaseError(
            f'resampling to "spacing" {list(spacing)} mm would make a {tuple(shape.tolist())} volume '
            f"(native spacing {tuple(np.round(native, 3).tolist())} mm): choose a coarser spacing"
        )
