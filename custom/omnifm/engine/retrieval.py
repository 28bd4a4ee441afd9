"""Client-side retrieval of global spectral prototypes for a batch of spectral tokens."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch

from omnifm.knowledge import KnowledgeBank, count_retrievals


class Retrieved(NamedTuple):
    """``prototypes``: (B, k, d_s) or None; ``ids``: (B, k) bank ids or None."""

    prototypes: torch.Tensor | None
    ids: torch.Tensor | None


class Retriever:
    """Top-k cosine retrieval from a (read-only) copy of the server's bank, counting what it returns.

    Args:
        bank: the bank received this round; None or empty means nothing to retrieve.
        top_k: prototypes per image.
        mode: ``topk`` (cosine top-k) or ``mean`` (the ablation "mean spectral embedding": every
            image gets the bank's mean prototype; nothing is counted, as no bank entry was chosen).
    """

    def __init__(self, bank: KnowledgeBank | None, top_k: int, mode: str = "topk") -> None:
        if mode not in ("topk", "mean"):
            raise ValueError(f"retrieval mode must be 'topk' or 'mean', got {mode!r}")
        self.bank = bank
        self.top_k = top_k
        self.mode = mode
        self.counts: Counter[int] = Counter()

    def __call__(self, spectral_token: torch.Tensor | None) -> Retrieved:
        if spectral_token is None or self.bank is None or len(self.bank) == 0:
            return Retrieved(None, None)
        if self.mode == "mean":
            mean = self.bank.prototypes.mean(dim=0).to(spectral_token)
            return Retrieved(mean.expand(spectral_token.shape[0], 1, -1), None)
        prototypes, ids = self.bank.retrieve(spectral_token.detach(), self.top_k)
        return Retrieved(prototypes, ids)

    def record(self, retrieved: Retrieved) -> None:
        """Count a training batch's retrievals (evaluation batches are not counted)."""
        if retrieved.ids is not None:
            self.counts.update(count_retrievals(retrieved.ids))
