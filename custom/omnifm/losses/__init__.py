"""Losses: spectral-proximal alignment (SPAlign), the local objective and FedProx's proximal term."""

from __future__ import annotations

from .alignment import (
    SpectralProximalAlignmentLoss,
    local_objective,
    spectral_alignment,
    spectral_proximal_alignment,
    token_variance_floor,
)
from .proximal import proximal_term

__all__ = [
    "SpectralProximalAlignmentLoss", "local_objective", "proximal_term", "spectral_alignment",
    "spectral_proximal_alignment", "token_variance_floor",
]
