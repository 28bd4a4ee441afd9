"""Realistic multi-modality brain-tumour phantom: the simulator's built-in default data.

Anatomy comes from the MNI152 2 mm template that ships with nilearn (grey- and white-matter
probability maps and the brain mask nilearn derives from the T1 template; loaded from package
files, never downloaded) and is prepared once per process (:func:`functools.lru_cache`):

- grey matter (GM) and white matter (WM) are the template's probability maps;
- CSF fills the rest of the intracranial envelope (the brain mask closed, filled and smoothed,
  plus a thin subarachnoid layer), so ventricles, sulci and the cortical surface are real;
- skull and scalp are shells around that envelope, from its signed distance map.

One case (:func:`make_phantom_anatomy`) draws a smooth affine + elastic deformation of that
anatomy, skull/scalp thicknesses, and, in about 85 % of cases, a tumour in white matter with
BraTS labels (1 = necrotic core, 2 = peritumoural oedema, 4 = enhancing rim; nested: oedema
outermost, then the enhancing rim, then the necrotic core) and a mass effect that pushes the
surrounding tissue away. It then samples the deformed anatomy on the output grid: a square
in-plane field of view fitted to the head, and a slab of ``D`` axial slices that contains the
tumour plus a margin at a random offset. Each output voxel averages sub-samples across the slice
thickness, so the result is a stack of partial-volume tissue fractions (:class:`Tissue`).

:func:`render_modality` turns the fractions into an image: T1/T1CE/T2/FLAIR from spin-echo and
inversion-recovery signal equations with per-tissue T1, T2 and proton density (gadolinium
shortens T1 in the enhancing rim for T1CE), CT in Hounsfield units and PET as amino-acid-like
uptake (tumour hot). The acquisition (:class:`Acquisition`, fixed per site by
:func:`site_acquisition`) adds the site's sequence timing, bias field (MR), point-spread
function, noise (Rician for MR, Gaussian for CT, Poisson-like for PET), global intensity scale
and slice thickness.

:func:`write_phantom_site` writes a site as NIfTI or DICOM with ``datalist.json`` and a
manifest (an identical request reuses the files); :func:`make_phantom_federation` writes
``site-1/``, ``site-2/``, ... Everything is deterministic per seed.

Conventions: arrays are ``(H, W, D)`` in RAS order (``H`` left->right, ``W`` posterior->anterior,
``D`` axial slices inferior->superior) with affine ``diag(pixel, pixel, slice_thickness)`` plus a
translation (scanner millimetres, origin near the head centre). MR and PET are positive arbitrary
units (MR background is the Rician noise floor, not zero); CT is in HU with air at about -1000.
DICOM series use the standard axial orientation (``ImageOrientationPatient`` ``1\\0\\0\\0\\1\\0``,
LPS), one file per slice, explicit VR little endian, CT as int16 with ``RescaleIntercept``
-1024, MR/PET as uint16 with ``RescaleSlope`` (1 for MR).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from omnifm.data.dicom_series import decimal_string as _ds
from omnifm.data.dicom_series import write_dicom_series
from omnifm.data.modalities import MODALITIES, modality_kind
from omnifm.validation import check_int, is_int

__all__ = [
    "BRATS_LABELS",
    "DATALIST_NAME",
    "DEFAULT_SHAPE",
    "FORMATS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "MODALITIES",
    "SITE_MODALITIES",
    "TUMOUR_FREE_PROBABILITY",
    "Acquisition",
    "acquisition_spacing",
    "make_phantom_anatomy",
    "make_phantom_case",
    "make_phantom_federation",
    "modality_for_site",
    "PhantomAnatomy",
    "read_phantom_manifest",
    "render_modality",
    "site_acquisition",
    "Tissue",
    "write_phantom_site",
]

GENERATOR_VERSION = 2
MANIFEST_NAME = "phantom_manifest.json"
DATALIST_NAME = "datalist.json"
FORMATS = ("nifti", "dicom")
TUMOUR_FREE_PROBABILITY = 0.15
BRATS_LABELS = (0, 1, 2, 4)
LABEL_NECROTIC, LABEL_OEDEMA, LABEL_ENHANCING = 1, 2, 4
# Site index -> modality (cycled). Ordered so that the first sites image modalities in which the
# tumour is visible but looks different (T1CE rim, CT hypodense oedema, T2 oedema, PET core, FLAIR
# oedema; any 3 first sites are a cross-modality federation with CT) and native T1, where the
# tumour is barely visible, comes last (the benchmark's hard case).
SITE_MODALITIES: tuple[str, ...] = ("t1ce", "ct", "t2", "pet", "flair", "t1")
DEFAULT_SHAPE = (64, 64, 24)

_MIN_IN_PLANE = 8
_SLICE_THICKNESSES = (2.0, 2.5, 3.0, 4.0, 5.0)
_HEAD_EXTENT_MM = (176.0, 214.0)  # left-right and anterior-posterior extent of the template head
_PV_WIDTH_MM = 2.0  # partial-volume ramp width of the skull/scalp shells (template voxel size)
_SUBARACHNOID_MM = 1.5
_TEMPLATE_PAD = 10  # template voxels of padding, room for the skull and scalp shells
_STREAM_CASE, _STREAM_ACQ = 1, 2  # seed-sequence tags of the random streams


class Tissue(IntEnum):
    """Index of each tissue in :attr:`PhantomAnatomy.fractions`."""

    AIR = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    OEDEMA = 6
    ENHANCING = 7
    NECROSIS = 8


INTRACRANIAL = (Tissue.CSF, Tissue.GREY_MATTER, Tissue.WHITE_MATTER, Tissue.OEDEMA, Tissue.ENHANCING, Tissue.NECROSIS)


# --------------------------------------------------------------------------- validation


def _check_modality(modality: object) -> str:
    """Return ``modality`` if it is one of ``MODALITIES``, else raise ``ValueError``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    return str(modality)


def _check_shape(shape: object) -> tuple[int, int, int]:
    """Return ``shape`` as three ints (``H, W >= 8``, ``D >= 1``), else raise ``ValueError``."""
    ok = isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) == 3
    ok = ok and all(is_int(s) for s in shape)  # type: ignore[union-attr]
    if not ok or min(shape[:2]) < _MIN_IN_PLANE or shape[2] < 1:  # type: ignore[index]
        bounds = f"H >= {_MIN_IN_PLANE}, W >= {_MIN_IN_PLANE}, D >= 1"
        raise ValueError(f"shape must be three ints ({bounds}), got {shape!r}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value,union-attr]


def _check_format(fmt: object) -> str:
    """Return ``fmt`` if it is one of :data:`FORMATS`, else raise ``ValueError``."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    return str(fmt)


def modality_for_site(site_index: int) -> str:
    """Return the modality imaged by a simulated site.

    Args:
        site_index: Zero-based site index; sites cycle through :data:`SITE_MODALITIES`.

    Returns:
        ``"t1ce"``, ``"ct"``, ``"t2"``, ``"pet"``, ``"flair"``, ``"t1"`` for sites 0..5, then again.

    Raises:
        ValueError: If ``site_index`` is not a non-negative integer.
    """
    return SITE_MODALITIES[check_int("site_index", site_index, 0) % len(SITE_MODALITIES)]


# --------------------------------------------------------------------------- acquisition


@dataclass(frozen=True)
class Acquisition:
    """How one site acquires one modality; fixed per site (see :func:`site_acquisition`).

    Attributes:
        modality: One of ``MODALITIES``.
        slice_thickness: Slice thickness = voxel spacing along ``D``, mm.
        fov_margin: In-plane field of view divided by the head extent (>= 1).
        psf_fwhm: Full width at half maximum of the Gaussian point-spread function, mm
            (in-plane; PET also along ``D``; MR/CT slices get the slice profile instead).
        noise: MR: Rician sigma relative to the white-matter signal. CT: sigma in HU.
            PET: relative sigma at unit uptake (``1 / sqrt(counts per unit uptake)``).
        bias: Standard deviation of the log bias field (MR only, else 0).
        gain: Global intensity scale. MR/PET: units per unit signal. CT: HU calibration slope
            (about 1; water stays near ``offset``).
        offset: CT: HU calibration offset (water, within a few HU); 0 otherwise.
        tr: MR repetition time, ms (0 for CT/PET).
        te: MR echo time, ms (0 for CT/PET).
        ti: FLAIR inversion time, ms (0 otherwise).
        field_seed: Seed of the site's bias-field pattern (fixed in scanner coordinates).
    """

    modality: str
    slice_thickness: float
    fov_margin: float
    psf_fwhm: float
    noise: float
    bias: float
    gain: float
    offset: float
    tr: float
    te: float
    ti: float
    field_seed: int


# Per-kind ranges drawn by site_acquisition: (psf_fwhm mm, noise, log-gain range).
_ACQ_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "mr": {"psf": (2.0, 4.0), "noise": (0.015, 0.05), "gain": (math.log(800.0), math.log(4000.0))},
    "ct": {"psf": (1.5, 3.5), "noise": (3.0, 9.0), "gain": (math.log(0.985), math.log(1.015))},
    "pet": {"psf": (7.0, 10.0), "noise": (0.12, 0.25), "gain": (math.log(1.0), math.log(2.5))},
}
# MR sequence timing ranges (TR, TE) in ms per sequence.
_SEQUENCES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "t1": ((450.0, 650.0), (8.0, 15.0)),
    "t1ce": ((450.0, 650.0), (8.0, 15.0)),
    "t2": ((3000.0, 5000.0), (85.0, 115.0)),
    "flair": ((8000.0, 10000.0), (100.0, 130.0)),
}
_CSF_T1 = 4000.0


def _sequence(modality: str, draws: list[float]) -> tuple[float, float, float]:
    """(TR, TE, TI) of a modality from three uniform draws; zeros for CT and PET."""
    if modality not in _SEQUENCES:
        return 0.0, 0.0, 0.0
    (tr_lo, tr_hi), (te_lo, te_hi) = _SEQUENCES[modality]
    tr, te = tr_lo + draws[0] * (tr_hi - tr_lo), te_lo + draws[1] * (te_hi - te_lo)
    ti = 0.0
    if modality == "flair":  # near the CSF null point of an inversion recovery with this TR
        ti = _CSF_T1 * math.log(2.0 / (1.0 + math.exp(-tr / _CSF_T1))) * (0.95 + 0.12 * draws[2])
    return round(tr, 1), round(te, 2), round(ti, 1)


def site_acquisition(modality: str, seed: int, site_index: int = 0) -> Acquisition:
    """Draw a site's acquisition parameters for one modality.

    Args:
        modality: One of ``MODALITIES``.
        seed: Non-negative seed; with ``site_index`` it fixes the site.
        site_index: Zero-based site index; different sites get different acquisitions.

    Returns:
        The :class:`Acquisition`; the same arguments always give the same result.

    Raises:
        ValueError: If an argument is invalid.
    """
    modality = _check_modality(modality)
    entropy = [_STREAM_ACQ, check_int("seed", seed, 0), check_int("site_index", site_index, 0)]
    rng = np.random.default_rng([*entropy, MODALITIES.index(modality)])
    u = rng.random(8)
    kind = modality_kind(modality)
    ranges = _ACQ_RANGES[kind]
    tr, te, ti = _sequence(modality, [float(x) for x in u[5:8]])
    return Acquisition(
        modality=modality,
        slice_thickness=_SLICE_THICKNESSES[int(u[0] * len(_SLICE_THICKNESSES))],
        fov_margin=round(1.05 + 0.2 * float(u[1]), 3),
        psf_fwhm=round(_lerp(ranges["psf"], u[2]), 3),
        noise=round(_lerp(ranges["noise"], u[3]), 4),
        bias=round(0.05 + 0.2 * float(u[4]), 3) if kind == "mr" else 0.0,
        gain=round(math.exp(_lerp(ranges["gain"], float(rng.random()))), 4),
        offset=round(8.0 * float(rng.random()) - 4.0, 2) if kind == "ct" else 0.0,
        tr=tr,
        te=te,
        ti=ti,
        field_seed=int(rng.integers(2**31)),
    )


def _lerp(bounds: tuple[float, float], t: float) -> float:
    """Linear interpolation between the two bounds (``t`` in ``[0, 1]``)."""
    return float(bounds[0] + t * (bounds[1] - bounds[0]))


def acquisition_spacing(acquisition: Acquisition, shape: Sequence[int]) -> tuple[float, float, float]:
    """Voxel spacing (mm) of a site's images: square in-plane pixels fitted to the head, then D.

    Args:
        acquisition: The site's acquisition.
        shape: Output shape ``(H, W, D)``.

    Returns:
        ``(pixel, pixel, slice_thickness)`` with ``pixel = fov_margin * max(176 / H, 214 / W)``.
    """
    height, width, _ = _check_shape(shape)
    pixel = acquisition.fov_margin * max(_HEAD_EXTENT_MM[0] / height, _HEAD_EXTENT_MM[1] / width)
    return round(pixel, 4), round(pixel, 4), float(acquisition.slice_thickness)


# --------------------------------------------------------------------------- template


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


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True, eq=False)
class PhantomAnatomy:
    """One case's anatomy on the output grid.

    Attributes:
        fractions: ``(len(Tissue), H, W, D)`` float32 partial-volume fractions, summing to 1.
        label: ``(H, W, D)`` uint8 BraTS labels: 0, 1 (necrotic core), 2 (oedema), 4 (enhancing).
        affine: 4x4 voxel-to-RAS (mm) affine; diagonal ``(pixel, pixel, slice_thickness)``.
        tumour_free: ``True`` for the ~15 % of cases drawn without a tumour.
    """

    fractions: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tumour_free: bool

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm, ``(pixel, pixel, slice_thickness)``."""
        return tuple(float(s) for s in np.abs(np.diag(self.affine)[:3]))  # type: ignore[return-value]

    @property
    def brain(self) -> np.ndarray:
        """Intracranial fraction (CSF, GM, WM and tumour) per voxel: the brain mask is ``brain >= 0.5``."""
        return self.fractions[list(INTRACRANIAL)].sum(axis=0)


@dataclass(frozen=True, eq=False)
class _Tumour:
    """A tumour's random parameters (MNI mm)."""

    centre: np.ndarray
    radius: float  # whole-tumour (oedema) radius, mm
    axes: np.ndarray  # rotation (rows: principal axes) scaled by 1 / (radius * aspect)
    core: float  # core radius / whole radius
    necrosis: float  # necrosis radius / core radius
    waves: np.ndarray  # (3, W, 3) wave vectors of the three irregularity fields
    phases: np.ndarray  # (3, W)
    amps: np.ndarray  # (3, W)
    push: float  # mass-effect strength in [0, 1)


@dataclass(frozen=True, eq=False)
class _CaseDraw:
    """All random choices of one case except the rendering (drawn in a fixed order)."""

    rotation: np.ndarray  # 3x3 scanner -> template rotation
    scale: np.ndarray  # (3,) head scale
    shift: np.ndarray  # (3,) scanner position of the head centre, mm
    elastic: np.ndarray  # (3, 5, 5, 4) coarse displacement, mm
    skull: float  # skull thickness, mm
    scalp: float  # scalp thickness, mm
    slab: float  # slab offset in [0, 1)
    tumour: _Tumour | None


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from (x, y, z) Euler angles in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_tumour(rng: np.random.Generator, candidates: np.ndarray) -> _Tumour:
    """Random tumour: centre deep in white matter, size, shape, nesting and mass effect."""
    centre = candidates[rng.integers(len(candidates))] + rng.uniform(-1.0, 1.0, size=3)
    radius = rng.uniform(14.0, 34.0)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    orientation = q * np.sign(np.diag(r))
    aspect = rng.uniform(0.75, 1.25, size=3)
    waves = rng.uniform(-1.6, 1.6, size=(3, 6, 3)) * np.pi
    return _Tumour(
        centre=centre,
        radius=radius,
        axes=orientation.T / (radius * aspect)[:, None],
        core=rng.uniform(0.35, 0.65),
        necrosis=rng.uniform(0.45, 0.8),
        waves=waves,
        phases=rng.uniform(0.0, 2.0 * np.pi, size=(3, 6)),
        amps=rng.normal(size=(3, 6)),
        push=rng.uniform(0.15, 0.45),
    )


def _draw_case(rng: np.random.Generator, candidates: np.ndarray) -> _CaseDraw:
    """Draw a case's geometry; the tumour parameters are drawn even for tumour-free cases."""
    rotation = _rotation(np.clip(rng.normal(0.0, [4.0, 3.0, 5.0]), -10.0, 10.0))
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, size=3)
    shift = np.array([*rng.uniform(-6.0, 6.0, size=2), 0.0])
    elastic = rng.normal(0.0, 1.0, size=(3, 5, 5, 4)) * rng.uniform(1.5, 4.0)
    skull, scalp, slab = rng.uniform(5.0, 8.0), rng.uniform(4.0, 8.0), rng.random()
    tumour_free = rng.random() < TUMOUR_FREE_PROBABILITY
    tumour = _draw_tumour(rng, candidates)
    return _CaseDraw(rotation, scale, shift, elastic, skull, scalp, slab, None if tumour_free else tumour)


def _to_template(draw: _CaseDraw, world: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Map scanner points ``(3, N)`` to template points (inverse of the case's head pose)."""
    matrix = draw.rotation / draw.scale[None, :]
    return matrix @ (world - draw.shift[:, None]) + centre[:, None]


def _to_world_z(draw: _CaseDraw, template_point: np.ndarray, centre: np.ndarray) -> float:
    """Scanner ``z`` of a template point (the head pose without the elastic part)."""
    world = draw.scale * (draw.rotation.T @ (template_point - centre)) + draw.shift
    return float(world[2])


def _slab_start(draw: _CaseDraw, template: _Template, length: float) -> float:
    """Scanner ``z`` of the slab's lower edge: around the tumour plus margin, inside the head.

    With a tumour, the slab contains the tumour's reach (1.25 radii plus 5 mm) at a random
    offset when it is long enough, else it is roughly centred on the tumour. Without one, it
    lies anywhere between the skull base and the vertex.
    """
    low, high = (_to_world_z(draw, np.array([*template.centre[:2], z]), template.centre) for z in template.z_range)
    high += 4.0
    if high - low <= length:
        return (low + high - length) / 2
    if draw.tumour is None:
        return low + draw.slab * (high - length - low)
    z_t = _to_world_z(draw, draw.tumour.centre, template.centre)
    reach = draw.tumour.radius * 1.25 * float(draw.scale.max()) + 5.0
    spare = length - 2.0 * reach
    if spare >= 0:
        start = z_t - reach - draw.slab * spare
    else:
        start = z_t - length / 2 + (draw.slab - 0.5) * 0.5 * length
    return float(np.clip(start, low, high - length))


def _output_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float], z0: float) -> np.ndarray:
    """Voxel-to-scanner affine: in-plane centred on the scanner axis, slab starting at ``z0``."""
    affine = np.diag([*spacing, 1.0])
    affine[:2, 3] = [-(n - 1) / 2 * s for n, s in zip(shape[:2], spacing[:2])]
    affine[2, 3] = z0 + spacing[2] / 2
    return affine


def _slice_points(affine: np.ndarray, shape: tuple[int, int, int], offset: float) -> np.ndarray:
    """Scanner points ``(3, H * W * D)`` of the voxel centres moved ``offset`` slices along D."""
    voxels = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")).reshape(3, -1)
    voxels[2] += offset
    return affine[:3, :3] @ voxels + affine[:3, 3:]


def _elastic(draw: _CaseDraw, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth displacement ``(3, H * W * D)`` in mm, upsampled from the coarse control grid."""
    coarse = draw.elastic
    factors = [n / c for n, c in zip(shape, coarse.shape[1:])]
    fields = [ndi.zoom(component, factors, order=3, mode="nearest", grid_mode=True) for component in coarse]
    return np.stack(fields).reshape(3, -1)


def _wave_field(points: np.ndarray, waves: np.ndarray, phases: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Smooth random field in ``[-1, 1]`` at ``(3, N)`` points: a sum of plane sinusoids."""
    return amps @ np.sin(waves @ points + phases[:, None]) / np.abs(amps).sum()


def _tumour_levels(tumour: _Tumour, points: np.ndarray) -> np.ndarray:
    """Nested tumour level per ``(3, N)`` template point: 0 none, 1 oedema, 2 enhancing, 3 necrosis.

    Radii are irregular (smooth random fields); the whole tumour always contains the core plus a
    margin of a quarter of the core radius, and the enhancing rim is at least that thick too.
    """
    local = tumour.axes @ (points - tumour.centre[:, None])
    radius = np.linalg.norm(local, axis=0)
    levels = np.zeros(radius.shape, dtype=np.int8)
    near = radius < 1.6
    u, r = local[:, near], radius[near]
    field = [_wave_field(u, tumour.waves[n], tumour.phases[n], tumour.amps[n]) for n in range(3)]
    core = r / (tumour.core * (1.0 + 0.25 * field[1]))
    whole = (r < 1.0 + 0.3 * field[0]) | (core < 1.25)
    necrosis = (r / (tumour.core * tumour.necrosis * (1.0 + 0.25 * field[2])) < 1.0) & (core < 0.75)
    levels[near] = np.where(necrosis, 3, np.where(core < 1.0, 2, np.where(whole, 1, 0)))
    return levels


def _mass_effect(tumour: _Tumour, points: np.ndarray) -> np.ndarray:
    """Where the tissue shown at each point comes from: pulled towards the tumour centre."""
    offset = points - tumour.centre[:, None]
    distance = np.linalg.norm(offset, axis=0)
    factor = 1.0 - tumour.push * np.exp(-((distance / tumour.radius) ** 2))
    return tumour.centre[:, None] + offset * factor


def _sample_template(template: _Template, points: np.ndarray) -> np.ndarray:
    """Trilinear GM, WM and signed distance ``(3, N)`` at ``(3, N)`` template points."""
    coords = (points - template.origin[:, None]) / template.voxel
    return np.stack([ndi.map_coordinates(c, coords, order=1, mode="nearest") for c in template.channels])


def _ramp(distance: np.ndarray, edge: float) -> np.ndarray:
    """Fraction of a voxel on the inner side of the surface ``distance == edge``."""
    return np.clip(0.5 - (distance - edge) / _PV_WIDTH_MM, 0.0, 1.0)


def _fractions(samples: np.ndarray, levels: np.ndarray, draw: _CaseDraw) -> np.ndarray:
    """Tissue fractions ``(len(Tissue), N)`` of sub-samples, with the tumour replacing tissue."""
    gm, wm, dist = samples
    inside = _ramp(dist, _SUBARACHNOID_MM)
    skull_out = _ramp(dist, _SUBARACHNOID_MM + draw.skull)
    scalp_out = _ramp(dist, _SUBARACHNOID_MM + draw.skull + draw.scalp)
    keep = np.minimum(1.0, inside / np.maximum(gm + wm, 1e-6))
    gm, wm = gm * keep, wm * keep
    out = np.zeros((len(Tissue), dist.size), dtype=np.float64)
    out[Tissue.AIR], out[Tissue.SCALP], out[Tissue.SKULL] = 1.0 - scalp_out, scalp_out - skull_out, skull_out - inside
    out[Tissue.CSF], out[Tissue.GREY_MATTER], out[Tissue.WHITE_MATTER] = inside - gm - wm, gm, wm
    oedema, core = levels == 1, levels >= 2
    out[Tissue.OEDEMA] = np.where(oedema, gm + wm, 0.0)
    out[Tissue.ENHANCING] = np.where(levels == 2, inside, 0.0)
    out[Tissue.NECROSIS] = np.where(levels == 3, inside, 0.0)
    out[[Tissue.GREY_MATTER, Tissue.WHITE_MATTER]] *= ~(oedema | core)
    out[Tissue.CSF] *= ~core
    return out


def _restrict_levels(levels: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Keep the tumour inside the brain: core only well inside, oedema only in parenchyma."""
    gm, wm, dist = samples
    inside = _ramp(dist, _SUBARACHNOID_MM) >= 0.9
    parenchyma = gm + wm >= 0.5
    levels = np.where(inside, levels, 0)
    return np.where((levels == 1) & ~parenchyma, 0, levels).astype(np.int8)


def _labels(levels: np.ndarray) -> np.ndarray:
    """BraTS labels from sub-sample levels ``(sub, H, W, D)`` by majority, preserving nesting."""
    whole, core, necrosis = ((levels >= n).mean(axis=0) >= 0.5 for n in (1, 2, 3))
    label = np.zeros(levels.shape[1:], dtype=np.uint8)
    label[whole] = LABEL_OEDEMA
    label[core] = LABEL_ENHANCING
    label[necrosis] = LABEL_NECROTIC
    return label


def _sample_anatomy(draw: _CaseDraw, template: _Template, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions ``(len(Tissue), N)`` and tumour levels ``(N,)`` at ``(3, N)`` template points."""
    levels = np.zeros(points.shape[1], dtype=np.int8)
    if draw.tumour is not None:
        levels = _tumour_levels(draw.tumour, points)
        points = _mass_effect(draw.tumour, points)
    samples = _sample_template(template, points)
    levels = _restrict_levels(levels, samples)
    return _fractions(samples, levels, draw), levels


def make_phantom_anatomy(
    rng: np.random.Generator, shape: Sequence[int] = DEFAULT_SHAPE, acquisition: Acquisition | None = None
) -> PhantomAnatomy:
    """Draw one case's anatomy and sample it on the output grid of an acquisition.

    Args:
        rng: Random generator; the result is a deterministic function of its state. The draws
            do not depend on ``shape`` or ``acquisition`` (same patient, different sampling).
        shape: Output shape ``(H, W, D)``: ``H`` left->right, ``W`` posterior->anterior, ``D``
            axial slices inferior->superior (RAS).
        acquisition: Geometry source (slice thickness, field of view); default
            ``site_acquisition("t1", 0)``.

    Returns:
        The :class:`PhantomAnatomy`.

    Raises:
        ValueError: If ``rng`` is not a ``numpy.random.Generator`` or ``shape`` is invalid.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    shape = _check_shape(shape)
    acquisition = acquisition or site_acquisition("t1", 0)
    template = _template()
    draw = _draw_case(rng, template.candidates)
    spacing = acquisition_spacing(acquisition, shape)
    affine = _output_affine(shape, spacing, _slab_start(draw, template, shape[2] * spacing[2]))
    sub = max(1, math.ceil(spacing[2] / template.voxel - 0.25))  # samples across the slice profile
    elastic = _elastic(draw, shape)
    fractions, levels = np.zeros((len(Tissue), math.prod(shape))), []
    for offset in (np.arange(sub) + 0.5) / sub - 0.5:
        points = _to_template(draw, _slice_points(affine, shape, offset), template.centre) + elastic
        part, part_levels = _sample_anatomy(draw, template, points)
        fractions += part / sub
        levels.append(part_levels.reshape(shape))
    fractions = fractions.reshape(len(Tissue), *shape)
    label = _labels(np.stack(levels))
    return PhantomAnatomy(fractions.astype(np.float32), label, affine, draw.tumour is None)


# --------------------------------------------------------------------------- rendering

# MR tissue properties (T1 ms, T2 ms, proton density), roughly 1.5 T, indexed by Tissue.
_MR_TISSUE = np.array(
    [
        (1000.0, 1.0, 0.0),  # air
        (350.0, 70.0, 0.90),  # scalp (fat, skin)
        (800.0, 5.0, 0.10),  # skull (cortical bone)
        (_CSF_T1, 2000.0, 1.00),  # csf
        (1300.0, 100.0, 0.82),  # grey matter
        (800.0, 80.0, 0.70),  # white matter
        (1500.0, 200.0, 0.84),  # oedema (more free water)
        (1400.0, 130.0, 0.85),  # enhancing tumour
        (2500.0, 400.0, 0.92),  # necrosis (fluid)
    ]
)
# CT attenuation (HU range per tissue, drawn per case).
_CT_HU = np.array(
    [(-1000, -1000), (-30, 0), (750, 1000), (3, 8), (36, 42), (26, 31), (15, 22), (38, 46), (12, 20)], dtype=float
)
# Amino-acid-like PET uptake relative to grey matter (range per tissue, drawn per case).
_PET_UPTAKE = np.array(
    [(0, 0), (0.4, 0.5), (0.12, 0.18), (0.18, 0.25), (1, 1), (0.6, 0.7), (0.75, 0.9), (2.0, 3.5), (0.3, 0.4)]
)
_GD_RELAXATION = (1.5, 3.0)  # extra longitudinal relaxation rate of the enhancing rim in T1CE, 1/s


def _mr_signal(tissue: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """Spin-echo (or FLAIR inversion-recovery) signal per tissue row ``(T1, T2, PD)``."""
    t1, t2, pd = tissue.T
    decay = np.exp(-acquisition.te / t2)
    if acquisition.modality == "flair":
        recovery = np.abs(1.0 - 2.0 * np.exp(-acquisition.ti / t1) + np.exp(-acquisition.tr / t1))
    else:
        recovery = 1.0 - np.exp(-acquisition.tr / t1)
    return pd * recovery * decay


def _texture(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Fine smooth random texture with unit standard deviation."""
    field = ndi.gaussian_filter(rng.normal(size=shape), 1.0, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _psf(image: np.ndarray, fwhm: float, spacing: tuple[float, float, float], along_d: bool) -> np.ndarray:
    """Gaussian point-spread function (FWHM in mm), in-plane and optionally along D."""
    sigma = [fwhm / 2.3548 / s for s in spacing]
    sigma[2] = sigma[2] if along_d else 0.0
    return ndi.gaussian_filter(image, sigma, mode="nearest")


def _bias_field(acquisition: Acquisition, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The site's smooth multiplicative bias field, fixed in scanner coordinates."""
    rng = np.random.default_rng(acquisition.field_seed)
    waves = rng.normal(size=(4, 3)) * (2.0 * np.pi / 400.0)
    phases, amps = rng.uniform(0.0, 2.0 * np.pi, size=4), rng.normal(size=4)
    voxels = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ voxels + affine[:3, 3:]
    field = _wave_field(world, waves, phases, amps).reshape(shape)
    return np.exp(acquisition.bias * 2.0 * field)


def _render_mr(anatomy: PhantomAnatomy, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """MR: signal equation, texture, bias field, PSF, then Rician noise on the magnitude."""
    tissue = _MR_TISSUE * rng.uniform([0.96, 0.96, 0.97], [1.04, 1.04, 1.03], size=_MR_TISSUE.shape)
    if acquisition.modality == "t1ce":
        tissue[Tissue.ENHANCING, 0] = 1.0 / (1.0 / tissue[Tissue.ENHANCING, 0] + rng.uniform(*_GD_RELAXATION) / 1e3)
    signal = _mr_signal(tissue, acquisition)
    image = np.tensordot(signal, anatomy.fractions, axes=1) * (1.0 + 0.03 * _texture(rng, anatomy.label.shape))
    image *= _bias_field(acquisition, anatomy.affine, image.shape) * acquisition.gain * rng.uniform(0.92, 1.08)
    image = _psf(image, acquisition.psf_fwhm, anatomy.spacing, along_d=False)
    sigma = acquisition.noise * acquisition.gain * signal[Tissue.WHITE_MATTER]
    return np.hypot(image + rng.normal(0.0, sigma, image.shape), rng.normal(0.0, sigma, image.shape))


def _render_ct(anatomy: PhantomAnatomy, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """CT: Hounsfield units, texture, PSF, Gaussian noise and the site's HU calibration."""
    hu = rng.uniform(_CT_HU[:, 0], _CT_HU[:, 1])
    image = np.tensordot(hu, anatomy.fractions, axes=1)
    image += 1.5 * _texture(rng, image.shape) * (1.0 - anatomy.fractions[Tissue.AIR])
    image = _psf(image, acquisition.psf_fwhm, anatomy.spacing, along_d=False)
    image += rng.normal(0.0, acquisition.noise, image.shape)
    return np.clip(image * acquisition.gain + acquisition.offset, -1024.0, 3071.0)


def _render_pet(anatomy: PhantomAnatomy, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """PET: uptake, Poisson-like noise, heavy 3D PSF, then the site's scale (non-negative)."""
    uptake = rng.uniform(_PET_UPTAKE[:, 0], _PET_UPTAKE[:, 1])
    image = np.tensordot(uptake, anatomy.fractions, axes=1) * (1.0 + 0.05 * _texture(rng, anatomy.label.shape))
    counts = 1.0 / acquisition.noise**2
    image = image + rng.normal(size=image.shape) * np.sqrt(np.maximum(image, 0.0) / counts)
    image = _psf(np.maximum(image, 0.0), acquisition.psf_fwhm, anatomy.spacing, along_d=True)
    return image * acquisition.gain * rng.uniform(0.92, 1.08)


_RENDERERS = {"mr": _render_mr, "ct": _render_ct, "pet": _render_pet}


def render_modality(
    anatomy: PhantomAnatomy, modality: str, acquisition: Acquisition | None, rng: np.random.Generator
) -> np.ndarray:
    """Render an anatomy as one modality through a site's acquisition.

    Args:
        anatomy: From :func:`make_phantom_anatomy`.
        modality: One of ``MODALITIES``.
        acquisition: The site's acquisition for this modality; ``None`` for
            ``site_acquisition(modality, 0)``.
        rng: Random generator for the per-case tissue jitter, texture and noise.

    Returns:
        ``float32`` ``(H, W, D)`` image: MR and PET in positive arbitrary units, CT in HU
        (air about -1000, clipped to ``[-1024, 3071]``).

    Raises:
        ValueError: If ``modality`` is unknown or does not match ``acquisition.modality``.
    """
    modality = _check_modality(modality)
    acquisition = acquisition or site_acquisition(modality, 0)
    if acquisition.modality != modality:
        raise ValueError(f"acquisition.modality must be {modality!r}, got {acquisition.modality!r}")
    image = _RENDERERS[modality_kind(modality)](anatomy, acquisition, rng)
    return image.astype(np.float32)


def make_phantom_case(
    modality: str,
    seed: int | np.random.Generator,
    shape: Sequence[int] = DEFAULT_SHAPE,
    acquisition: Acquisition | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Draw one phantom case imaged in one modality.

    ``make_phantom_case(m, s, shape, acq)`` equals :func:`make_phantom_anatomy` followed by
    :func:`render_modality` on one generator ``np.random.default_rng(s)``, so
    ``make_phantom_anatomy(np.random.default_rng(s), shape, acq)`` reproduces its anatomy.

    Args:
        modality: One of ``MODALITIES``.
        seed: Non-negative int seed, or a generator (consumed).
        shape: Output shape ``(H, W, D)`` (RAS; ``D`` axial).
        acquisition: The site's acquisition; ``None`` for ``site_acquisition(modality, 0)``.

    Returns:
        ``(image, label, spacing)``: float32 image, uint8 BraTS label map (values in
        ``{0, 1, 2, 4}``), both ``(H, W, D)``, and the voxel spacing in mm.

    Raises:
        ValueError: If an argument is invalid.
    """
    modality = _check_modality(modality)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(check_int("seed", seed, 0))
    acquisition = acquisition or site_acquisition(modality, 0)
    anatomy = make_phantom_anatomy(rng, shape, acquisition)
    return render_modality(anatomy, modality, acquisition, rng), anatomy.label, anatomy.spacing


# --------------------------------------------------------------------------- files


def _case_rng(seed: int, site_index: int, index: int) -> np.random.Generator:
    """Independent generator per case: a case depends on (seed, site, index) only."""
    return np.random.default_rng([_STREAM_CASE, seed, site_index, index])


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
    return {"mr": "MR", "ct": "CT", "pet": "PT"}[modality_kind(modality)]


def _rescale(image: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Stored little-endian pixels (CT int16, intercept -1024; MR/PET uint16), slope and intercept."""
    if modality == "ct":
        return np.round(image + 1024.0).clip(0, 32767).astype("<i2"), 1.0, -1024.0
    top = float(image.max())
    slope = float(_ds(top / 65000.0)) if modality == "pet" or top > 65000.0 else 1.0
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
    """Modality-specific attributes: MR sequence timing, CT tube voltage, PET units."""
    if dicom_modality == "CT":
        return {"KVP": "120", "RescaleType": "HU"}
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


def _relative_paths(index: int, fmt: str) -> dict[str, str]:
    """Datalist entry of case ``index`` with paths relative to the site folder."""
    case_id = f"case_{index:03d}"
    image = f"images/{case_id}.nii.gz" if fmt == "nifti" else f"images/{case_id}"
    return {"id": case_id, "image": image, "label": f"labels/{case_id}.nii.gz"}


def _absolute(out: Path, entry: dict[str, str], modality: str) -> dict[str, str]:
    """A relative datalist entry with absolute paths under ``out`` and the modality."""
    paths = {key: str(out / entry[key]) for key in ("image", "label")}
    return {"id": entry["id"], **paths, "modality": modality}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def read_phantom_manifest(site_dir: str | Path) -> dict[str, Any] | None:
    """Return a site folder's phantom manifest, or ``None`` if it is missing or unreadable.

    The manifest holds ``generator``, ``version``, ``request`` (the arguments of
    :func:`write_phantom_site`), ``acquisition``, ``spacing``, ``seconds`` and per-case
    ``cases`` entries (``id``, ``tumour_free``, ``label_voxels``).
    """
    try:
        manifest = json.loads((Path(site_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_current(out: Path, request: dict[str, Any], entries: list[dict[str, str]]) -> bool:
    """Whether ``out`` holds a complete phantom for exactly this request and generator version."""
    manifest = read_phantom_manifest(out)
    if manifest is None or manifest.get("version") != GENERATOR_VERSION or manifest.get("request") != request:
        return False
    paths = [out / DATALIST_NAME] + [out / e[key] for e in entries for key in ("image", "label")]
    return all(p.exists() for p in paths)


_STALE = re.compile(r"case_\d+(\.nii\.gz)?|\.case_\d+\..*tmp.*")  # cases and left-over temporary files


def _remove_stale(out: Path, entries: list[dict[str, str]]) -> None:
    """Remove phantom case files (and temporary files) that the new datalist does not list."""
    keep = {out / e[key] for e in entries for key in ("image", "label")}
    for folder in (out / "images", out / "labels"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _STALE.fullmatch(path.name) and path not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _write_case(out: Path, entry: dict[str, str], request: dict[str, Any], acq: Acquisition) -> dict[str, Any]:
    """Generate and write one case; returns its manifest record."""
    index = int(entry["id"].split("_")[1])
    rng = _case_rng(request["seed"], request["site_index"], index)
    anatomy = make_phantom_anatomy(rng, request["shape"], acq)
    image = render_modality(anatomy, request["modality"], acq, rng)
    if request["format"] == "nifti":
        _save_nifti(image, anatomy.affine, out / entry["image"])
    else:
        fingerprint = json.dumps(request, sort_keys=True)
        info = _SeriesInfo(request["modality"], acq, request["site_index"] + 1, index, fingerprint)
        _write_dicom_series(out / entry["image"], image, anatomy.affine, info)
    _save_nifti(anatomy.label, anatomy.affine, out / entry["label"])
    counts = {str(v): int((anatomy.label == v).sum()) for v in BRATS_LABELS[1:]}
    return {"id": entry["id"], "tumour_free": anatomy.tumour_free, "label_voxels": counts}


def write_phantom_site(
    out_dir: str | Path,
    modality: str,
    num_cases: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    site_index: int = 0,
    fmt: str = "nifti",
) -> list[dict[str, str]]:
    """Write one simulated site's phantom cases and return its datalist.

    Layout: ``images/case_000.nii.gz`` (NIfTI) or ``images/case_000/`` (DICOM series, one file
    per axial slice), ``labels/case_000.nii.gz`` (always NIfTI, same geometry),
    ``datalist.json`` (``{"cases": [...]}``, paths relative to ``out_dir``) and
    ``phantom_manifest.json``. If the manifest matches this request and generator version and
    all files exist, nothing is written. Case ``i`` depends only on ``(seed, site_index, i)``;
    the acquisition on ``(seed, site_index, modality)``.

    Args:
        out_dir: Site folder (created if missing).
        modality: One of ``MODALITIES``.
        num_cases: Number of cases, >= 1.
        seed: Non-negative seed.
        shape: Output shape ``(H, W, D)``.
        site_index: Zero-based site index (acquisition, anatomy and DICOM patient names).
        fmt: ``"nifti"`` or ``"dicom"``.

    Returns:
        ``[{"id", "image", "label", "modality"}, ...]`` with absolute paths, one per case.

    Raises:
        ValueError: If an argument is invalid.
    """
    request = {
        "modality": _check_modality(modality),
        "num_cases": check_int("num_cases", num_cases),
        "seed": check_int("seed", seed, 0),
        "shape": list(_check_shape(shape)),
        "site_index": check_int("site_index", site_index, 0),
        "format": _check_format(fmt),
    }
    out = Path(out_dir).resolve()
    entries = [_relative_paths(i, request["format"]) for i in range(request["num_cases"])]
    result = [_absolute(out, e, request["modality"]) for e in entries]
    if _is_current(out, request, entries):
        return result
    _generate_site(out, request, entries)
    return result


def _generate_site(out: Path, request: dict[str, Any], entries: list[dict[str, str]]) -> None:
    """Write every case, the datalist and, last, the manifest."""
    start = time.perf_counter()
    for folder in (out, out / "images", out / "labels"):
        folder.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    _remove_stale(out, entries)
    acq = site_acquisition(request["modality"], request["seed"], request["site_index"])
    cases = [_write_case(out, e, request, acq) for e in entries]
    _write_json(out / DATALIST_NAME, {"cases": [{**e, "modality": request["modality"]} for e in entries]})
    manifest = {
        "generator": "omnifm.data.phantom",
        "version": GENERATOR_VERSION,
        "request": request,
        "acquisition": asdict(acq),
        "spacing": list(acquisition_spacing(acq, request["shape"])),
        "seconds": round(time.perf_counter() - start, 3),
        "cases": cases,
    }
    _write_json(out / MANIFEST_NAME, manifest)


def make_phantom_federation(
    out_dir: str | Path,
    sites: int,
    cases: int,
    seed: int,
    modalities: Sequence[str] | None = None,
    fmt: str = "nifti",
    shape: Sequence[int] = DEFAULT_SHAPE,
    on_site: Callable[[str, list[dict[str, str]], float], None] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Write a phantom federation: folders ``site-1``, ``site-2``, ... under ``out_dir``.

    Args:
        out_dir: Root folder (created if missing).
        sites: Number of sites, >= 1.
        cases: Cases per site, >= 1.
        seed: Non-negative seed shared by all sites (each site also uses its index).
        modalities: Modality per site, cycled if shorter than ``sites``; ``None`` for
            :func:`modality_for_site`.
        fmt: ``"nifti"`` or ``"dicom"``.
        shape: Output shape ``(H, W, D)``.
        on_site: Called after each site as ``on_site(name, entries, seconds)``.

    Returns:
        ``{"site-1": entries, ...}`` as returned by :func:`write_phantom_site`.

    Raises:
        ValueError: If an argument is invalid (checked before anything is written).
    """
    sites = check_int("sites", sites)
    if modalities is not None:
        if isinstance(modalities, str) or len(modalities) == 0:
            raise ValueError(f"modalities must be a non-empty list of modality names, got {modalities!r}")
        for modality in modalities:
            _check_modality(modality)
    check_int("cases", cases)
    check_int("seed", seed, 0)
    _check_format(fmt)
    _check_shape(shape)
    result = {}
    for index in range(sites):
        name = f"site-{index + 1}"
        modality = modalities[index % len(modalities)] if modalities else modality_for_site(index)
        start = time.perf_counter()
        result[name] = write_phantom_site(Path(out_dir) / name, modality, cases, seed, shape, index, fmt)
        if on_site is not None:
            on_site(name, result[name], time.perf_counter() - start)
    return result
