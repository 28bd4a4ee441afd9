"""Spectral-proximal alignment (SPAlign) loss and the OmniFM local objective (OmniFM, Sec. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omnifm.validation import check_range

__all__ = [
    "spectral_alignment", "spectral_proximal_alignment", "token_variance_floor", "SpectralProximalAlignmentLoss",
    "local_objective",
]

VARIANCE_FLOOR = 0.5


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


def token_variance_floor(tokens: Tensor, floor: float = VARIANCE_FLOOR) -> Tensor:
    """Hinge on the batch spread of the tokens: ``mean_j relu(floor / sqrt(d) - std_j(s)) * sqrt(d) / floor``.

    Unit tokens spread evenly over the sphere have ``std_j = 1 / sqrt(d)`` in every dimension; the
    hinge is 0 once every dimension spreads at least ``floor`` times that, and 1 when all tokens
    are equal. It is what removes SPAlign's trivial minimum (every token equal to one prototype):
    the measured collapse of the earlier tokenizer within one round (VICReg's variance term,
    Bardes et al. 2022, applied to unit tokens).

    Args:
        tokens: ``(B, d)``; with ``B < 2`` the spread is undefined and the term is 0.
        floor: fraction of the even spread to keep, in ``(0, 1]``.

    Examples::

        >>> float(token_variance_floor(torch.ones(4, 16) / 4.0))
        1.0
    """
    if tokens.shape[0] < 2:
        return tokens.sum() * 0.0
    target = floor / tokens.shape[1] ** 0.5
    return torch.relu(target - tokens.std(dim=0)).mean() / target


def spectral_alignment(spectral_token: Tensor, prototypes: Tensor | None, floor: float = VARIANCE_FLOOR) -> Tensor:
    """The alignment term the site trains with: SPAlign towards the retrieved keys + :func:`token_variance_floor`.

    Args:
        spectral_token: ``(B, d)`` local tokens.
        prototypes: ``(B, k, d)`` retrieved keys (detached), or None (round 0: the variance floor only).
        floor: see :func:`token_variance_floor`.
    """
    spread = token_variance_floor(spectral_token, floor)
    if prototypes is None or prototypes.shape[1] == 0:
        return spread
    return spectral_proximal_alignment(spectral_token, prototypes.detach()) + spread


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
