"""Data layer: synthetic multi-modality phantom sites, MONAI volume loading and 2D axial slicing."""

from __future__ import annotations

from omnifm.data.loading import SliceDataset, load_volumes, split_cases, volume_slices
from omnifm.data.phantom import (
    MODALITIES,
    Tissue,
    make_phantom_tissues,
    make_phantom_volume,
    modality_for_site,
    render_modality,
    write_phantom_site,
)

__all__ = [
    "MODALITIES",
    "SliceDataset",
    "Tissue",
    "load_volumes",
    "make_phantom_tissues",
    "make_phantom_volume",
    "modality_for_site",
    "render_modality",
    "split_cases",
    "volume_slices",
    "write_phantom_site",
]
