"""The anatomy template: nilearn's packaged MNI152 2 mm grey/white-matter maps and brain mask,
padded, with the signed distance to the intracranial envelope; prepared once per process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

_TEMPLATE_PAD = 10  # template voxels of padding, room for the skull and scalp shells


@dataclass(frozen=True, eq=False)
class _Template:
    """Prepared MNI152 anatomy (padded 2 mm grid, MNI millimetres).

    Attributes:
        channels: ``(3, X, Y, Z)`` float32: GM and WM probability and the signed distance (mm,
            negative inside) to the surface of the intracranial envelope.
        origin: MNI coordinate of padded voxel ``(0, 0, 0)``.
        voxel: Voxel size, mm.
        centre: MNI point placed at the scanner origin (head centre in-plane).
        z_range: MNI ``z`` of the lowest allowed slab edge and of the top of the head.
        candidates: ``(N, 3)`` MNI points deep in white matter where a tumour may be centred.
    """

    channels: np.ndarray
    origin: np.ndarray
    voxel: float
    centre: np.ndarray
    z_range: tuple[float, float]
    candidates: np.ndarray


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(GM, WM, brain mask, affine) of nilearn's packaged MNI152 2 mm templates."""
    from nilearn import datasets  # lazy: importing nilearn takes about a second

    images = [
        datasets.load_mni152_gm_template(resolution=2),
        datasets.load_mni152_wm_template(resolution=2),
        datasets.load_mni152_brain_mask(resolution=2),  # the T1 template thresholded at 0.2
    ]
    if any(img.shape != images[0].shape or not np.allclose(img.affine, images[0].affine) for img in images):
        raise RuntimeError("nilearn's MNI152 templates do not share one grid")
    gm, wm, mask = (np.asarray(img.get_fdata(), dtype=np.float32) for img in images)
    return np.clip(gm, 0, 1), np.clip(wm, 0, 1), mask > 0, np.asarray(images[0].affine)


def _envelope_distance(mask: np.ndarray, voxel: float) -> np.ndarray:
    """Signed distance (mm, negative inside) to the intracranial envelope of a brain mask."""
    ball = ndi.generate_binary_structure(3, 1)
    closed = ndi.binary_closing(mask, structure=ndi.iterate_structure(ball, 3))
    filled = ndi.binary_fill_holes(closed)
    envelope = ndi.gaussian_filter(filled.astype(np.float32), 1.5) > 0.5
    outside = ndi.distance_transform_edt(~envelope)
    inside = ndi.distance_transform_edt(envelope)
    return ((outside - inside) * voxel).astype(np.float32)


@lru_cache(maxsize=1)
def _template() -> _Template:
    """Load and prepare the MNI152 anatomy once per process."""
    gm, wm, mask, affine = _load_mni152()
    pad = _TEMPLATE_PAD
    gm, wm, mask = (np.pad(a, pad) for a in (gm, wm, mask))
    voxel = float(affine[0, 0])
    origin = affine[:3, 3] - pad * voxel
    dist = _envelope_distance(mask, voxel)
    inside = np.argwhere(dist < 0) * voxel + origin
    centre = np.array([*(inside[:, :2].min(0) + inside[:, :2].max(0)) / 2, 10.0])
    z_range = (-40.0, float(inside[:, 2].max()) + 14.0)
    deep = (wm >= 0.5) & (gm + wm >= 0.85) & (dist <= -14.0)
    points = np.argwhere(deep) * voxel + origin
    points = points[(points[:, 2] >= -8.0) & (points[:, 2] <= 60.0) & (points[:, 1] >= -85.0)]
    channels = np.stack([gm, wm, dist]).astype(np.float32)
    channels.setflags(write=False)
    return _Template(channels, origin, voxel, centre, z_range, points)
