"""The imaging-modality vocabulary shared by site configs, ingestion, normalisation and the phantom."""

from __future__ import annotations

MR_SEQUENCES = ("t1", "t1ce", "t2", "flair")
MODALITIES = (*MR_SEQUENCES, "ct", "pet")


def modality_kind(modality: str) -> str:
    """``"mr"``, ``"ct"`` or ``"pet"``: what decides the intensity normalisation.

    Raises:
        ValueError: an unknown modality, listing the known ones.
    """
    if modality in MR_SEQUENCES:
        return "mr"
    if modality in ("ct", "pet"):
        return modality
    raise ValueError(f"unknown modality {modality!r}; known modalities: {list(MODALITIES)}")
