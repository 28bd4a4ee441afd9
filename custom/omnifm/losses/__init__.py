"""OmniFM losses: spectral-proximal alignment (SPAlign) and the local objective."""

from __future__ import annotations

from .alignment import SpectralProximalAlignmentLoss, local_objective, spectral_proximal_alignment

__all__ = ["SpectralProximalAlignmentLoss", "local_objective", "spectral_proximal_alignment"]
