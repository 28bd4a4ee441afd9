"""The imaging-modality vocabulary shared by site configs, ingestion, normalisation and the phantom.

``spect`` comes last on purpose: the phantom seeds each site's acquisition with the modality's
index in :data:`MODALITIES`, so appending keeps every earlier modality's output unchanged.
"""

from __future__ import annotations

MR_SEQUENCES = ("t1", "t1ce", "t2", "flair")
MODALITIES = (*MR_SEQUENCES, "ct", "pet", "spect")


def modality_kind(modality: str) -> str:
    """``"mr"``, ``"ct"``, ``"pet"`` or ``"spect"``: what decides the intensity normalisation.

    Raises:
        ValueError: an unknown modality, listing the known ones.
    """
    if modality in MR_SEQUENCES:
        return "mr"
    if modality in ("ct", "pet", "spect"):
        return modality
    raise ValueError(f"unknown modality {modality!r}; known modalities: {list(MODALITIES)}")
