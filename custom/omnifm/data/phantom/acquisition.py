"""Acquisition physics of a simulated site: sequence timing, point-spread function, noise, bias
(MR bias field, SPECT attenuation-correction residual), intensity scale and slice thickness
(:class:`Acquisition`, fixed per site by :func:`site_acquisition`), and the voxel spacing it
gives (:func:`acquisition_spacing`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omnifm.data.modalities import MODALITIES, modality_kind
from omnifm.data.phantom.conventions import _STREAM_ACQ, _check_modality, _check_shape
from omnifm.validation import check_int

_SLICE_THICKNESSES = (2.0, 2.5, 3.0, 4.0, 5.0)
_HEAD_EXTENT_MM = (176.0, 214.0)  # left-right and anterior-posterior extent of the template head


@dataclass(frozen=True)
class Acquisition:
    """How one site acquires one modality; fixed per site (see :func:`site_acquisition`).

    Attributes:
        modality: One of ``MODALITIES``.
        slice_thickness: Slice thickness = voxel spacing along ``D``, mm.
        fov_margin: In-plane field of view divided by the head extent (>= 1).
        psf_fwhm: Full width at half maximum of the Gaussian point-spread function, mm
            (in-plane; PET and SPECT also along ``D``; MR/CT slices get the slice profile instead).
        noise: MR: Rician sigma relative to the white-matter signal. CT: sigma in HU.
            PET: relative sigma at unit uptake (``1 / sqrt(counts per unit uptake)``) before the
            point-spread function. SPECT: relative sigma of the final (blurred) image at unit
            uptake; the counts per voxel follow from it and the PSF.
        bias: MR: standard deviation of the log bias field. SPECT: signed amplitude of the
            attenuation-correction residual (the head centre comes out ``1 - bias`` times as
            bright as the same uptake at its rim; > 0: under-corrected). 0 for CT and PET.
        gain: Global intensity scale. MR/PET/SPECT: units per unit signal. CT: HU calibration slope
            (about 1; water stays near ``offset``).
        offset: CT: HU calibration offset (water, within a few HU); 0 otherwise.
        tr: MR repetition time, ms (0 for CT/PET/SPECT).
        te: MR echo time, ms (0 for CT/PET/SPECT).
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
    # Tc-99m HMPAO/ECD perfusion SPECT: collimator-detector response plus reconstruction filter give
    # a system FWHM of 12-18 mm (PET: 7-10 mm); a brain study collects far fewer counts than PET, so
    # the reconstructed image keeps 8-15 % relative noise (PET here: ~3 %) despite the heavier blur;
    # the calibration (counts per unit activity) differs between camera systems.
    "spect": {"psf": (12.0, 18.0), "noise": (0.08, 0.15), "gain": (math.log(0.5), math.log(3.0))},
}
# SPECT attenuation-correction residual (Acquisition.bias): a uniform-attenuation (Chang) correction
# with a site's own attenuation coefficient and outline leaves the centre of the head up to ~10 %
# too bright (over-corrected, < 0) or ~20 % too dark (under-corrected, > 0) relative to its rim.
_SPECT_AC_RESIDUAL = (-0.1, 0.2)
# MR sequence timing ranges (TR, TE) in ms per sequence.
_SEQUENCES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "t1": ((450.0, 650.0), (8.0, 15.0)),
    "t1ce": ((450.0, 650.0), (8.0, 15.0)),
    "t2": ((3000.0, 5000.0), (85.0, 115.0)),
    "flair": ((8000.0, 10000.0), (100.0, 130.0)),
}
_CSF_T1 = 4000.0


def _sequence(modality: str, draws: list[float]) -> tuple[float, float, float]:
    """(TR, TE, TI) of a modality from three uniform draws; zeros for CT, PET and SPECT."""
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
        bias=_bias(kind, float(u[4])),
        gain=round(math.exp(_lerp(ranges["gain"], float(rng.random()))), 4),
        offset=round(8.0 * float(rng.random()) - 4.0, 2) if kind == "ct" else 0.0,
        tr=tr,
        te=te,
        ti=ti,
        field_seed=int(rng.integers(2**31)),
    )


def _bias(kind: str, draw: float) -> float:
    """``Acquisition.bias`` from one uniform draw: MR bias-field strength, SPECT AC residual, else 0."""
    if kind == "mr":
        return round(0.05 + 0.2 * draw, 3)
    return round(_lerp(_SPECT_AC_RESIDUAL, draw), 3) if kind == "spect" else 0.0


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
