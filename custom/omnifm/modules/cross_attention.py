"""Embedding-wise cross-attention (ECA) from backbone tokens to spectral prototypes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from omnifm.validation import check_int, check_range

__all__ = ["EmbeddingCrossAttention"]


class EmbeddingCrossAttention(nn.Module):
    """Embedding-wise cross-attention ``Z = Wo(softmax(Q K^T / sqrt(d_h)) V)``.

    With ``Q = r Wq``, ``K = S Wk`` and ``V = S Wv``: the backbone tokens ``r`` are the queries
    and the spectral prototypes ``S`` the keys/values, so each token gathers a mixture of
    prototypes. All projections are bias-free linear maps, exactly as in the paper's formula.
    With ``num_heads > 1`` the inner dimension is ``num_heads * head_dim`` and every head uses
    the scale ``1 / sqrt(head_dim)``.

    Keys flagged ``True`` in ``key_padding_mask`` are ignored. A query row whose keys are all
    masked (or an empty prototype set, ``k == 0``) yields ``Z = 0``, never NaN.

    Args:
        token_dim: width ``d`` of the backbone tokens (also the output width).
        prototype_dim: width ``d_s`` of the prototypes.
        head_dim: per-head width ``d_h``.
        num_heads: number of attention heads.
        dropout: dropout probability on the attention weights, in ``[0, 1)``.

    Shapes:
        - tokens: ``(B, L, token_dim)``
        - prototypes: ``(B, k, prototype_dim)``
        - key_padding_mask: ``(B, k)`` bool, ``True`` = ignore that prototype
        - output ``Z``: ``(B, L, token_dim)``

    Examples::

        >>> eca = EmbeddingCrossAttention(token_dim=64, prototype_dim=32, head_dim=16, num_heads=4)
        >>> eca(torch.randn(2, 10, 64), torch.randn(2, 5, 32)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        token_dim: int,
        prototype_dim: int,
        head_dim: int = 32,
        num_heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        token_dim = check_int("token_dim", token_dim)
        prototype_dim = check_int("prototype_dim", prototype_dim)
        head_dim = check_int("head_dim", head_dim)
        num_heads = check_int("num_heads", num_heads)
        check_range("dropout", dropout, 0, 1, high_open=True, require_real=False)
        inner_dim = num_heads * head_dim
        self.token_dim = token_dim
        self.prototype_dim = prototype_dim
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.scale = 1.0 / math.sqrt(head_dim)
        self.to_q = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(prototype_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(prototype_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, token_dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)

    def _check_inputs(self, tokens: Tensor, prototypes: Tensor, mask: Tensor | None) -> None:
        if tokens.ndim != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(
                f"tokens must have shape (B, L, {self.token_dim}), got shape {tuple(tokens.shape)}"
            )
        if prototypes.ndim != 3 or prototypes.shape[-1] != self.prototype_dim:
            raise ValueError(
                f"prototypes must have shape (B, k, {self.prototype_dim}), "
                f"got shape {tuple(prototypes.shape)}"
            )
        if prototypes.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"tokens and prototypes must share the batch size, got shapes "
                f"{tuple(tokens.shape)} and {tuple(prototypes.shape)}"
            )
        if mask is not None and (mask.dtype != torch.bool or mask.shape != prototypes.shape[:2]):
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape {tuple(prototypes.shape[:2])}, "
                f"got shape {tuple(mask.shape)} and dtype {mask.dtype}"
            )

    def _split_heads(self, x: Tensor) -> Tensor:
        """``(B, n, H * d_h) -> (B, H, n, d_h)``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self, tokens: Tensor, prototypes: Tensor, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        """Attend from ``tokens`` (B, L, d) to ``prototypes`` (B, k, d_s); return Z (B, L, d)."""
        self._check_inputs(tokens, prototypes, key_padding_mask)
        q = self._split_heads(self.to_q(tokens))
        k = self._split_heads(self.to_k(prototypes))
        v = self._split_heads(self.to_v(prototypes))
        scores = torch.einsum("bhld,bhkd->bhlk", q, k) * self.scale
        if key_padding_mask is not None:
            ignore = key_padding_mask[:, None, None, :]
            # finite fill keeps fully-masked rows NaN-free; they are zeroed right after softmax
            scores = scores.masked_fill(ignore, torch.finfo(scores.dtype).min)
        attn = scores.softmax(dim=-1)
        if key_padding_mask is not None:
            attn = attn.masked_fill(ignore, 0.0)
        z = torch.einsum("bhlk,bhkd->bhld", self.attn_drop(attn), v)
        return self.to_out(z.transpose(1, 2).flatten(2))
