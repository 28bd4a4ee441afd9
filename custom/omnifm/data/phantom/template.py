"""The anatomy template: nilearn's packaged MNI152 2 mm grey/white-matter maps and brain mask,
padded, with the signed distance to the intracranial envelope; prepared once per process.

Preparing it takes about 5 s of CPU (nilearn resamples its templates, SciPy computes the distance
transform), and every process that draws a phantom needs it: each FLARE simulator worker, each
benchmark run, each test process. The prepared arrays are therefore kept in a file,
``<cache dir>/mni152_template-<key>.npz``, read back in milliseconds and bit-identical to a fresh
preparation. The cache dir is ``$OMNIFM_CACHE_DIR`` if set (empty: no file cache), else
``$XDG_CACHE_HOME/omnifm`` or ``~/.cache/omnifm``; the key covers :data:`TEMPLATE_VERSION`, the
padding and the nilearn, SciPy and NumPy versions. An unreadable, foreign or unwritable cache is
ignored (the template is prepared in memory). Only nilearn's public MNI templates are stored there,
never site data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

LOG = logging.getLogger(__name__)
_TEMPLATE_PAD = 10  # template voxels of padding, room for the skull and scalp shells
TEMPLATE_VERSION = 1  # bump when the preparation below changes (the file cache's key)
_FIELDS = ("channels", "origin", "voxel", "centre", "z_range", "candidates")


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


def cache_dir() -> Path | None:
    """Where prepared templates are kept (module docstring); None: no file cache."""
    configured = os.environ.get("OMNIFM_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omnifm"


def _cache_file(folder: Path) -> Path:
    import nilearn
    import scipy

    key = f"{TEMPLATE_VERSION}|{_TEMPLATE_PAD}|{nilearn.__version__}|{scipy.__version__}|{np.__version__}"
    return folder / f"mni152_template-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _read_cached(path: Path) -> _Template | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {name: np.array(data[name]) for name in _FIELDS}
    except Exception as err:  # noqa: BLE001 - any unreadable or foreign file: prepare afresh
        if path.exists():
            LOG.warning("ignoring the unreadable template cache %s (%s); preparing the template afresh", path, err)
        return None
    fields["channels"].setflags(write=False)
    return _Template(fields["channels"], fields["origin"], float(fields["voxel"]), fields["centre"],
                     (float(fields["z_range"][0]), float(fields["z_range"][1])), fields["candidates"])


def _write_cached(path: Path, template: _Template) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **{name: np.asarray(getattr(template, name)) for name in _FIELDS})
        os.replace(tmp, path)
    except OSError as err:
        LOG.info("not caching the MNI template in %s (%s)", path.parent, err)
        if "tmp" in locals():
            Path(tmp).unlink(missing_ok=True)


@lru_cache(maxsize=1)
def _template() -> _Template:
    """The MNI152 anatomy: once per process, from the file cache when it holds it (module docstring)."""
    folder = cache_dir()
    path = _cache_file(folder) if folder is not None else None
    template = _read_cached(path) if path is not None else None
    if template is None:
        template = _prepare_template()
        if path is not None:
            _write_cached(path, template)
    return template


def _prepare_template() -> _Template:
    """Load and prepare the MNI152 anatomy."""
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
