"""Phantom conventions shared by its modules: site modalities, default shape, BraTS label values,
output formats, random-stream tags, and the checks of the public functions' arguments."""

from __future__ import annotations

from collections.abc import Sequence

from omnifm.data.modalities import MODALITIES
from omnifm.validation import check_int, is_int

FORMATS = ("nifti", "dicom")
BRATS_LABELS = (0, 1, 2, 4)
LABEL_NECROTIC, LABEL_OEDEMA, LABEL_ENHANCING = 1, 2, 4
# Site index -> modality (cycled). Ordered so that the first sites image modalities in which the
# tumour is visible but looks different (T1CE rim, CT hypodense oedema, T2 oedema, PET core, FLAIR
# oedema; any 3 first sites are a cross-modality federation with CT) and native T1, where the
# tumour is barely visible, comes last (the benchmark's hard case). SPECT is not in the cycle: adding
# it would change which modality existing sites (and the benchmarks built on them) image; a SPECT
# site names it explicitly (``modalities=[..., "spect"]``, ``--modalities ... spect``).
SITE_MODALITIES: tuple[str, ...] = ("t1ce", "ct", "t2", "pet", "flair", "t1")
DEFAULT_SHAPE = (64, 64, 24)

_MIN_IN_PLANE = 8
_STREAM_CASE, _STREAM_ACQ = 1, 2  # seed-sequence tags of the random streams


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
