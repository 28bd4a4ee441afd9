"""Spectral-proximal alignment (SPAlign) loss and the OmniFM local objective (OmniFM, Sec. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omnifm.validation import check_range

__all__ = ["spectral_proximal_alignment", "SpectralProximalAlignmentLoss", "local_objective"]


def _check_shapes(s: Tensor, protos: Tensor, mask: Tensor | None) -> None:
    if s.ndim != 2 or protos.ndim != 3 or (protos.shape[0], protos.shape[2]) != tuple(s.shape):
        raise ValueError(
            "spectral_token must have shape (B, d) and prototypes (B, k, d), got shapes "
            f"{tuple(s.shape)} and {tuple(protos.shape)}"
        )
    if mask is not None and (mask.dtype != torch.bool or mask.shape != protos.shape[:2]):
        raise ValueError(
            f"key_padding_mask must be a bool tensor of shape {tuple(protos.shape[:2])}, "
            f"got shape {tuple(mask.shape)} and dtype {mask.dtype}"
        )


def spectral_proximal_alignment(
    spectral_token: Tensor, prototypes: Tensor, key_padding_mask: Tensor | None = None
) -> Tensor:
    """``L_align = mean_b || s_b - mean_k(S_g[b]) ||_2^2``.

    Gradients flow into both arguments; detach ``prototypes`` if the global prototypes must
    stay fixed.

    Args:
        spectral_token: local spectral tokens ``s``, shape ``(B, d)``.
        prototypes: global prototypes ``S_g``, shape ``(B, k, d)``.
        key_padding_mask: optional bool ``(B, k)``, ``True`` = ignore that prototype. The mean is
            taken over unmasked prototypes only; rows without any valid prototype contribute 0
            (the batch mean still divides by ``B``).

    Returns:
        Scalar tensor. If ``k == 0`` a zero that stays connected to the graph.

    Examples::

        >>> s = torch.tensor([[1.0, 0.0]])
        >>> spectral_proximal_alignment(s, torch.tensor([[[0.0, 0.0], [0.0, 2.0]]]))
        tensor(2.)
    """
    _check_shapes(spectral_token, prototypes, key_padding_mask)
    if prototypes.shape[1] == 0:
        return spectral_token.sum() * 0.0 + prototypes.sum() * 0.0
    valid = torch.ones_like(prototypes[..., 0], dtype=torch.bool)
    if key_padding_mask is not None:
        valid = ~key_padding_mask
    weights = valid.to(prototypes.dtype).unsqueeze(-1)  # (B, k, 1)
    count = weights.sum(dim=1)  # (B, 1)
    centre = (prototypes * weights).sum(dim=1) / count.clamp_min(1.0)
    per_row = (spectral_token - centre).pow(2).sum(dim=-1) * (count.squeeze(-1) > 0)
    return per_row.mean()


class SpectralProximalAlignmentLoss(nn.Module):
    """Weighted SPAlign term ``lambda * L_align`` (see :func:`spectral_proximal_alignment`).

    Args:
        weight: ``lambda >= 0``.

    Examples::

        >>> loss_fn = SpectralProximalAlignmentLoss(weight=0.5)
        >>> loss_fn(torch.randn(4, 8), torch.randn(4, 3, 8)).shape
        torch.Size([])
    """

    def __init__(self, weight: float = 0.1) -> None:
        super().__init__()
        check_range("weight", weight, 0, require_real=False)  # also rejects NaN
        self.weight = float(weight)

    def forward(
        self, spectral_token: Tensor, prototypes: Tensor, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """``spectral_token`` (B, d), ``prototypes`` (B, k, d), mask (B, k) -> scalar."""
        align = spectral_proximal_alignment(spectral_token, prototypes, key_padding_mask)
        return self.weight * align


def local_objective(task_loss: Tensor, align_loss: Tensor, lam: float) -> Tensor:
    """Local client objective ``L = L_task + lam * L_align``.

    Args:
        task_loss: scalar task loss.
        align_loss: scalar (unweighted) alignment loss.
        lam: ``lambda >= 0``.

    Examples::

        >>> local_objective(torch.tensor(1.0), torch.tensor(2.0), lam=0.5)
        tensor(2.)
    """
    check_range("lam", lam, 0, require_real=False)  # also rejects NaN
    return task_loss + lam * align_loss
