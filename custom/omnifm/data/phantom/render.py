"""Image formation per modality: MR spin-echo / inversion-recovery signal with bias field and
Rician noise, CT in Hounsfield units with Gaussian noise, PET uptake with Poisson-like noise, SPECT
perfusion with Poisson counting noise and an attenuation-correction residual, each through the
site's point-spread function (:func:`render_modality`, :func:`make_phantom_case`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from omnifm.data.modalities import modality_kind
from omnifm.data.phantom.acquisition import _CSF_T1, _HEAD_EXTENT_MM, Acquisition, site_acquisition
from omnifm.data.phantom.anatomy import PhantomAnatomy, Tissue, make_phantom_anatomy
from omnifm.data.phantom.conventions import DEFAULT_SHAPE, _check_modality
from omnifm.data.phantom.tumour import _wave_field
from omnifm.validation import check_int

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
# Tc-99m HMPAO/ECD perfusion SPECT: tracer uptake proportional to regional cerebral blood flow,
# relative to grey matter (range per tissue, drawn per case). White matter ~1/3-1/2 of grey, CSF ~0,
# some extracerebral (scalp, muscle) uptake, little in bone. Tumour (a choice, as in many
# glioblastoma perfusion studies): a hypo-perfused necrotic core, a rim whose perfusion varies
# from case to case between moderately hypo- and clearly hyper-perfused relative to grey matter
# (always above white matter), and oedema hypo-perfused relative to white matter.
_SPECT_UPTAKE = np.array(
    [(0, 0), (0.2, 0.35), (0.05, 0.1), (0.0, 0.05), (1, 1), (0.33, 0.5), (0.22, 0.32), (0.6, 1.6), (0.05, 0.2)]
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


def _uptake(anatomy: PhantomAnatomy, table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tracer uptake map: per-case tissue uptake drawn from ``table``'s ranges, 5 % fine texture."""
    uptake = rng.uniform(table[:, 0], table[:, 1])
    return np.tensordot(uptake, anatomy.fractions, axes=1) * (1.0 + 0.05 * _texture(rng, anatomy.label.shape))


def _render_pet(anatomy: PhantomAnatomy, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """PET: uptake, Poisson-like noise, heavy 3D PSF, then the site's scale (non-negative)."""
    image = _uptake(anatomy, _PET_UPTAKE, rng)
    counts = 1.0 / acquisition.noise**2
    image = image + rng.normal(size=image.shape) * np.sqrt(np.maximum(image, 0.0) / counts)
    image = _psf(np.maximum(image, 0.0), acquisition.psf_fwhm, anatomy.spacing, along_d=True)
    return image * acquisition.gain * rng.uniform(0.92, 1.08)


def _attenuation_residual(acquisition: Acquisition, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The site's attenuation-correction residual: a smooth radial in-plane gain.

    ``1 - bias * (1 - rho**2)`` with ``rho`` the in-plane distance from the scanner axis in units of
    the template head's half extents (an ellipse, as Chang's method assumes), clipped at 1: the
    head centre gets ``1 - bias``, the rim and beyond 1.
    """
    axes = [np.arange(n, dtype=float) * affine[i, i] + affine[i, 3] for i, n in enumerate(shape[:2])]
    half = [extent / 2.0 for extent in _HEAD_EXTENT_MM]
    rho2 = np.minimum((axes[0][:, None] / half[0]) ** 2 + (axes[1][None, :] / half[1]) ** 2, 1.0)
    return (1.0 - acquisition.bias * (1.0 - rho2))[:, :, None]


def _psf_voxels(fwhm: float, spacing: tuple[float, float, float]) -> float:
    """How many voxels of white noise the 3D PSF averages: ``1 / sum(kernel**2)``."""
    voxels = 1.0
    for step in spacing:
        sigma = fwhm / 2.3548 / step
        radius = int(4.0 * sigma + 0.5)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        voxels /= float((ndi.gaussian_filter1d(impulse, sigma, mode="constant") ** 2).sum())
    return voxels


def _render_spect(anatomy: PhantomAnatomy, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Perfusion SPECT: uptake, Poisson counts, very heavy 3D PSF, AC residual, the site's scale.

    Counts are drawn from a Poisson distribution, then blurred by the system FWHM of 12-18 mm,
    in-plane and along ``D`` (collimator-detector response and reconstruction filter; the noise
    comes out correlated on that scale, as in a reconstructed SPECT). The expected counts per voxel
    at grey-matter uptake are ``1 / (noise**2 * N)`` with ``N`` the voxels the PSF averages, so
    ``noise`` is the relative noise of the final image whatever the voxel size (a fraction of a
    count per voxel, a few tens per resolution element: several times PET's noise). No bias field.
    """
    image = _uptake(anatomy, _SPECT_UPTAKE, rng)
    counts = 1.0 / (acquisition.noise**2 * _psf_voxels(acquisition.psf_fwhm, anatomy.spacing))
    image = rng.poisson(np.maximum(image, 0.0) * counts) / counts
    image = _psf(image, acquisition.psf_fwhm, anatomy.spacing, along_d=True)
    image *= _attenuation_residual(acquisition, anatomy.affine, image.shape)
    return image * acquisition.gain * rng.uniform(0.92, 1.08)


_RENDERERS = {"mr": _render_mr, "ct": _render_ct, "pet": _render_pet, "spect": _render_spect}


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
        ``float32`` ``(H, W, D)`` image: MR, PET and SPECT in positive arbitrary units, CT in HU
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
