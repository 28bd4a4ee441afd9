"""Synthetic multi-modality brain-tumour phantom, written to disk as NIfTI.

A phantom case is built in two steps that consume one random generator in order:

1. :func:`make_phantom_tissues` draws the anatomy as an integer tissue map
   (:class:`Tissue`): a jittered head ellipsoid with scalp and skull shells, a CSF rim,
   grey and white matter as smoothly deformed nested ellipsoids, two ventricles and, in
   about 85 % of cases, an irregular tumour with a necrotic core and an active rim.
2. :func:`render_modality` turns the tissue map into an image with the contrast of one
   modality (:data:`MODALITIES`) plus that modality's acquisition style: bias field, blur
   and Gaussian or Rician-like noise.

:func:`make_phantom_volume` runs both steps, so
``make_phantom_tissues(np.random.default_rng(s), shape)`` reproduces the tissue map behind
``make_phantom_volume(m, np.random.default_rng(s), shape)``. Coordinates are normalised to
``[-1, 1]`` on every axis, so the phantom fills any volume shape and knows nothing of the
voxel spacing. Voxels outside the head are exactly zero, like the background-masked exports
of public datasets, so ``NormalizeIntensityd(nonzero=True)`` normalises over the head.

:func:`write_phantom_site` writes a whole simulated site to disk and returns a MONAI
datalist; real data and phantom data then take the same loading path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np

from omnifm.validation import check_int, is_int, is_real

__all__ = [
    "MODALITIES",
    "TUMOUR_FREE_PROBABILITY",
    "Tissue",
    "make_phantom_tissues",
    "make_phantom_volume",
    "modality_for_site",
    "render_modality",
    "write_phantom_site",
]

MODALITIES: tuple[str, ...] = ("t1", "t2", "ct", "flair", "pet", "t1ce")
TUMOUR_FREE_PROBABILITY = 0.15
MANIFEST_NAME = "phantom_manifest.json"
_MANIFEST_VERSION = 1
_MIN_SIDE = 8

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


class Tissue(IntEnum):
    """Integer codes of the phantom tissue map."""

    BACKGROUND = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    TUMOUR_CORE = 6
    TUMOUR_RIM = 7


TUMOUR_TISSUES = (Tissue.TUMOUR_CORE, Tissue.TUMOUR_RIM)

# Shell radii, as fractions of the (deformed) head ellipsoid.
_SKULL_OUTER = 0.93
_BRAIN_OUTER = 0.84
_GM_OUTER = 0.79
_WM_OUTER = 0.58


@dataclass(frozen=True)
class _Style:
    """Acquisition style of one modality.

    Attributes:
        gain: Range of the random global intensity scale.
        offset: Added after scaling (CT: HU shifted so that air is about zero).
        noise: ``"rician"``, ``"gaussian"`` or ``"poisson"`` (signal-dependent Gaussian).
        noise_sigma: Noise standard deviation, in units of the contrast table.
        bias: Amplitude of the multiplicative log bias field (0 disables it).
        blur: Gaussian blur sigma in voxels, applied before the noise.
        post_blur: Gaussian blur sigma in voxels, applied after the noise (PET recon).
    """

    gain: tuple[float, float]
    offset: float
    noise: str
    noise_sigma: float
    bias: float
    blur: float
    post_blur: float = 0.0


# Mean tissue intensities per modality, indexed by Tissue code (background first).
# MR and PET are in relative units; CT is in Hounsfield units.
_CONTRAST: dict[str, tuple[float, ...]] = {
    #        bg    scalp  skull  csf    gm     wm     core   rim
    "t1": (0.0, 0.90, 0.10, 0.20, 0.55, 0.80, 0.30, 0.38),
    "t2": (0.0, 0.50, 0.05, 1.00, 0.60, 0.45, 0.92, 0.82),
    "ct": (0.0, 20.0, 1200.0, 5.0, 38.0, 28.0, 45.0, 50.0),
    "flair": (0.0, 0.45, 0.05, 0.08, 0.60, 0.50, 0.90, 0.95),
    "pet": (0.0, 0.25, 0.10, 0.10, 1.00, 0.45, 2.20, 3.00),
    "t1ce": (0.0, 0.90, 0.10, 0.20, 0.55, 0.80, 0.25, 1.30),
}

_MR = _Style(gain=(600.0, 1400.0), offset=0.0, noise="rician", noise_sigma=0.03, bias=0.15, blur=0.6)
_STYLES: dict[str, _Style] = {
    "t1": _MR,
    "t2": _MR,
    "flair": _MR,
    "t1ce": _MR,
    "ct": _Style(gain=(1.0, 1.0), offset=1024.0, noise="gaussian", noise_sigma=6.0, bias=0.0, blur=0.5),
    "pet": _Style(
        gain=(3.0, 6.0), offset=0.0, noise="poisson", noise_sigma=0.08, bias=0.0, blur=1.2, post_blur=1.0
    ),
}


# --------------------------------------------------------------------------- validation


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    ok = isinstance(shape, Sequence) and len(shape) == 3
    if not ok or any(not is_int(s) or s < _MIN_SIDE for s in shape):
        raise ValueError(f"shape must be three integers >= {_MIN_SIDE}, got {shape!r}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    ok = isinstance(spacing, Sequence) and len(spacing) == 3
    if not ok or any(not is_real(s) or not 0 < s < np.inf for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def modality_for_site(site_index: int) -> str:
    """Return the modality imaged by a simulated site.

    Args:
        site_index: Zero-based site index; sites cycle through :data:`MODALITIES`.

    Returns:
        The modality name, e.g. ``"t1"`` for site 0, ``"t2"`` for 1, ``"ct"`` for 2.

    Raises:
        ValueError: If ``site_index`` is not a non-negative integer.
    """
    return MODALITIES[check_int("site_index", site_index, 0) % len(MODALITIES)]


# --------------------------------------------------------------------------- geometry


def _grid(shape: tuple[int, int, int]) -> Coords:
    """Open grid of normalised coordinates in ``[-1, 1]`` per axis (broadcastable)."""
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    return (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])


def _smooth_field(rng: np.random.Generator, coords: Coords, max_freq: float, waves: int = 5) -> np.ndarray:
    """Random smooth field in ``[-1, 1]``: a sum of ``waves`` random plane sinusoids.

    ``coords`` is an open grid (each array varies along its own axis only) and ``max_freq``
    the largest number of half-periods per unit of those coordinates. Each plane wave is
    separable, ``exp(i k.p) = exp(i kx x) exp(i ky y) exp(i kz z)``, so the sum is a cheap
    rank-``waves`` outer product instead of ``waves`` full-volume sines.
    """
    freqs = rng.uniform(-max_freq, max_freq, size=(waves, 3)) * np.pi
    phases = rng.uniform(0.0, 2.0 * np.pi, size=waves)
    amps = rng.normal(size=waves)
    ex, ey, ez = (np.exp(1j * np.outer(freqs[:, a], np.ravel(c))) for a, c in enumerate(coords))
    plane = (amps * np.exp(1j * phases))[:, None, None] * ex[:, :, None] * ey[:, None, :]
    field = (plane.reshape(waves, -1).T @ ez).imag.reshape(ex.shape[1], ey.shape[1], ez.shape[1])
    return field / np.abs(amps).sum()


def _radial(coords: Coords, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Ellipsoidal radius: 1 on the surface of the ellipsoid (centre, radii)."""
    return np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre, radii)))


def _deformed(rng: np.random.Generator, coords: Coords, radius: np.ndarray, amp: float, freq: float) -> np.ndarray:
    """Divide an ellipsoidal radius by ``1 + amp * field``: a smoothly deformed surface."""
    return radius / (1.0 + amp * _smooth_field(rng, coords, freq))


def _head(rng: np.random.Generator, coords: Coords) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the head: returns (deformed head radius, centre, radii)."""
    centre = rng.uniform(-0.06, 0.06, size=3)
    radii = np.array([0.72, 0.86, 0.84]) * rng.uniform(0.9, 1.06, size=3)
    radius = _deformed(rng, coords, _radial(coords, centre, radii), amp=0.03, freq=1.0)
    return radius, centre, radii


def _paint_brain(rng: np.random.Generator, coords: Coords, tissues: np.ndarray, head: tuple) -> None:
    """Paint scalp, skull, CSF rim, grey/white matter and the ventricles in place."""
    radius, centre, radii = head
    tissues[radius < 1.0] = Tissue.SCALP
    tissues[radius < _SKULL_OUTER] = Tissue.SKULL
    tissues[radius < _BRAIN_OUTER] = Tissue.CSF
    cortex = _deformed(rng, coords, radius, amp=0.04, freq=3.0)
    tissues[(cortex < _GM_OUTER) & (radius < _BRAIN_OUTER)] = Tissue.GREY_MATTER
    tissues[_deformed(rng, coords, radius, amp=0.15, freq=3.0) < _WM_OUTER] = Tissue.WHITE_MATTER
    for side in (-1.0, 1.0):
        v_centre = centre + radii * np.array([side * 0.13, 0.0, 0.05]) + rng.normal(0.0, 0.01, size=3)
        v_radii = radii * np.array([0.08, 0.28, 0.16]) * rng.uniform(0.8, 1.2, size=3)
        tissues[_deformed(rng, coords, _radial(coords, v_centre, v_radii), 0.1, 1.0) < 1.0] = Tissue.CSF


def _paint_tumour(rng: np.random.Generator, coords: Coords, tissues: np.ndarray, head: tuple) -> None:
    """Paint an irregular tumour (necrotic core, active rim) inside the brain, in place."""
    radius, centre, radii = head
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5)
    t_centre = centre + offset * radii
    t_radii = rng.uniform(0.12, 0.30) * rng.uniform(0.8, 1.25, size=3)
    local = tuple((c - m) / r for c, m, r in zip(coords, t_centre, t_radii))
    shape_noise = 1.0 + 0.35 * _smooth_field(rng, local, max_freq=1.2)  # type: ignore[arg-type]
    t_radius = np.sqrt(sum(c**2 for c in local)) / shape_noise
    brain = radius < _BRAIN_OUTER
    core_fraction = rng.uniform(0.3, 0.65)
    tissues[(t_radius < 1.0) & brain] = Tissue.TUMOUR_RIM
    tissues[(t_radius < core_fraction) & brain] = Tissue.TUMOUR_CORE


def make_phantom_tissues(rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 24)) -> np.ndarray:
    """Draw the anatomy of one phantom case as a tissue map.

    Args:
        rng: Random generator; the result is a deterministic function of its state.
        shape: Volume shape ``(H, W, D)``; ``D`` is the axial (superior) axis.

    Returns:
        ``uint8`` array of :class:`Tissue` codes with the given shape. The tumour (core and
        rim) is absent with probability :data:`TUMOUR_FREE_PROBABILITY`.

    Raises:
        ValueError: If ``rng`` is not a ``numpy.random.Generator`` or ``shape`` is invalid.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    coords = _grid(_check_shape(shape))
    tissues = np.zeros(shape, dtype=np.uint8)
    head = _head(rng, coords)
    _paint_brain(rng, coords, tissues, head)
    if rng.random() >= TUMOUR_FREE_PROBABILITY:
        _paint_tumour(rng, coords, tissues, head)
    return tissues


# --------------------------------------------------------------------------- rendering


def _gaussian_blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in voxels, edge padding); identity for sigma <= 0."""
    if sigma <= 0:
        return volume
    radius = max(1, int(3.0 * sigma + 0.5))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in range(volume.ndim):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(volume.ndim)]
        padded = np.pad(volume, pad, mode="edge")
        out = np.zeros_like(volume)
        index = [slice(None)] * volume.ndim
        for i, weight in enumerate(kernel):
            index[axis] = slice(i, i + volume.shape[axis])
            out += weight * padded[tuple(index)]
        volume = out
    return volume


def _add_noise(rng: np.random.Generator, signal: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    """Add acquisition noise of the given kind (``sigma`` in signal units)."""
    if kind == "rician":
        real = signal + rng.normal(0.0, sigma, size=signal.shape)
        return np.hypot(real, rng.normal(0.0, sigma, size=signal.shape))
    if kind == "poisson":
        return signal + rng.normal(size=signal.shape) * sigma * np.sqrt(np.maximum(signal, 0.0))
    return signal + rng.normal(0.0, sigma, size=signal.shape)


def render_modality(tissues: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Render a tissue map with the contrast and acquisition style of one modality.

    Args:
        tissues: Tissue map from :func:`make_phantom_tissues`.
        modality: One of :data:`MODALITIES`.
        rng: Random generator for the tissue jitter, texture, bias field and noise.

    Returns:
        ``float32`` image with the shape of ``tissues``; exactly zero outside the head and
        non-negative inside.

    Raises:
        ValueError: If ``modality`` is unknown or ``tissues`` is not a 3D tissue map.
    """
    _check_modality(modality)
    if tissues.ndim != 3 or tissues.max(initial=0) >= len(Tissue):
        raise ValueError(f"tissues must be a 3D map of Tissue codes, got shape {tissues.shape}")
    style = _STYLES[modality]
    coords = _grid(tissues.shape)
    table = np.asarray(_CONTRAST[modality]) * rng.uniform(0.95, 1.05, size=len(Tissue))
    signal = table[tissues] * (1.0 + 0.03 * _smooth_field(rng, coords, max_freq=6.0, waves=8))
    if style.bias > 0:
        signal = signal * np.exp(style.bias * _smooth_field(rng, coords, max_freq=0.7))
    signal = _gaussian_blur(signal, style.blur)
    image = _add_noise(rng, signal, style.noise, style.noise_sigma)
    image = _gaussian_blur(image, style.post_blur)
    image = np.maximum(image * rng.uniform(*style.gain) + style.offset, 0.0)
    image[tissues == Tissue.BACKGROUND] = 0.0
    return image.astype(np.float32)


def make_phantom_volume(
    modality: str, rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 24)
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom case: a brain with (usually) a tumour, imaged in one modality.

    Args:
        modality: One of :data:`MODALITIES`.
        rng: Random generator; the result is a deterministic function of its state.
        shape: Volume shape ``(H, W, D)``; ``D`` is the axial axis.

    Returns:
        ``(image, label)``: ``float32`` image and ``uint8`` binary label (1 = tumour, core
        and rim), both of the given shape. About 15 % of cases have an all-zero label.

    Raises:
        ValueError: If ``modality``, ``rng`` or ``shape`` is invalid.
    """
    _check_modality(modality)
    tissues = make_phantom_tissues(rng, shape)
    image = render_modality(tissues, modality, rng)
    label = np.isin(tissues, TUMOUR_TISSUES).astype(np.uint8)
    return image, label


# --------------------------------------------------------------------------- writing


def _case_paths(out_dir: Path, index: int) -> dict[str, str]:
    return {
        "image": str(out_dir / f"case_{index:03d}_image.nii.gz"),
        "label": str(out_dir / f"case_{index:03d}_label.nii.gz"),
    }


def _save_nifti(array: np.ndarray, spacing: tuple[float, float, float], path: str) -> None:
    """Save an array as NIfTI with a diagonal (RAS, mm) affine, atomically (temp file + rename)."""
    affine = np.diag([*spacing, 1.0])
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    tmp = f"{path[: -len('.nii.gz')]}.{os.getpid()}.tmp.nii.gz"
    nib.save(img, tmp)
    os.replace(tmp, path)


def _case_rng(modality: str, seed: int, index: int) -> np.random.Generator:
    """Independent generator per (modality, seed, case): cases do not depend on num_cases."""
    return np.random.default_rng([seed, MODALITIES.index(modality), index])


def _manifest_matches(path: Path, manifest: dict, datalist: list[dict[str, str]]) -> bool:
    if not path.is_file():
        return False
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    files = [p for case in datalist for p in case.values()]
    return existing == manifest and all(os.path.isfile(p) for p in files)


def write_phantom_site(
    out_dir: str | Path,
    modality: str,
    num_cases: int,
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 24),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
) -> list[dict[str, str]]:
    """Write a simulated site's phantom cases as NIfTI and return its datalist.

    Writes ``case_000_image.nii.gz``/``case_000_label.nii.gz``, ... and a small manifest
    (``phantom_manifest.json``). If a matching manifest and all files already exist, nothing
    is regenerated. Case ``i`` depends only on ``(modality, seed, i)``.

    Args:
        out_dir: Directory to write into (created if missing).
        modality: One of :data:`MODALITIES`.
        num_cases: Number of cases, >= 1.
        seed: Non-negative random seed.
        shape: Volume shape ``(H, W, D)``.
        spacing: Voxel spacing in mm; the affine is ``diag(spacing)`` (RAS).

    Returns:
        ``[{"image": path, "label": path}, ...]`` with absolute paths, one entry per case.

    Raises:
        ValueError: If any argument is invalid.
    """
    manifest = {
        "version": _MANIFEST_VERSION,
        "modality": _check_modality(modality),
        "num_cases": check_int("num_cases", num_cases),
        "seed": check_int("seed", seed, 0),
        "shape": list(_check_shape(shape)),
        "spacing": list(_check_spacing(spacing)),
    }
    out = Path(out_dir).resolve()
    datalist = [_case_paths(out, i) for i in range(manifest["num_cases"])]
    manifest_path = out / MANIFEST_NAME
    if _manifest_matches(manifest_path, manifest, datalist):
        return datalist
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    for i, case in enumerate(datalist):
        image, label = make_phantom_volume(modality, _case_rng(modality, manifest["seed"], i), manifest["shape"])
        _save_nifti(image, manifest["spacing"], case["image"])
        _save_nifti(label, manifest["spacing"], case["label"])
    tmp_manifest = manifest_path.with_suffix(f".{os.getpid()}.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, manifest_path)
    return datalist
