"""Data layer: site configuration, MONAI-based DICOM/NIfTI ingestion, the integrity gate, the
built-in multi-modality phantom and 2D axial slicing.

The names below are imported on first use (PEP 562), so ``import omnifm.data.modalities`` or a
command's ``--help`` does not pay for torch, MONAI and SciPy.
"""

from __future__ import annotations

from omnifm.lazy import lazy_attributes

_LAZY = {
    "SliceDataset": "omnifm.data.loading",
    "load_volumes": "omnifm.data.loading",
    "split_cases": "omnifm.data.loading",
    "volume_slices": "omnifm.data.loading",
    "MODALITIES": "omnifm.data.modalities",
    "modality_kind": "omnifm.data.modalities",
    "make_phantom_case": "omnifm.data.phantom",
    "make_phantom_federation": "omnifm.data.phantom",
    "modality_for_site": "omnifm.data.phantom",
    "write_phantom_site": "omnifm.data.phantom",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
