"""One phantom case's anatomy: head pose, elastic deformation, skull/scalp, tumour placement and the
slab of axial slices, sampled on the output grid as partial-volume tissue fractions
(:func:`make_phantom_anatomy`, :class:`PhantomAnatomy`, :class:`Tissue`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage as ndi

from omnifm.data.phantom.acquisition import Acquisition, acquisition_spacing, site_acquisition
from omnifm.data.phantom.conventions import DEFAULT_SHAPE, _check_shape
from omnifm.data.phantom.template import _template, _Template
from omnifm.data.phantom.tumour import _draw_tumour, _labels, _mass_effect, _Tumour, _tumour_levels

TUMOUR_FREE_PROBABILITY = 0.15
_PV_WIDTH_MM = 2.0  # partial-volume ramp width of the skull/scalp shells (template voxel size)
_SUBARACHNOID_MM = 1.5


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
