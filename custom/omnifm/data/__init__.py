"""Data layer: site configuration, MONAI-based DICOM/NIfTI ingestion, the integrity gate, the
built-in multi-modality phantom and 2D axial slicing."""

from __future__ import annotations

from omnifm.data.loading import SliceDataset, load_volumes, split_cases, volume_slices
from omnifm.data.modalities import MODALITIES, modality_kind
from omnifm.data.phantom import make_phantom_case, make_phantom_federation, modality_for_site, write_phantom_site

__all__ = [
    "MODALITIES",
    "SliceDataset",
    "load_volumes",
    "make_phantom_case",
    "make_phantom_federation",
    "modality_for_site",
    "modality_kind",
    "split_cases",
    "volume_slices",
    "write_phantom_site",
]
