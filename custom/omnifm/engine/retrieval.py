"""Client-side retrieval of global spectral knowledge (keys, and the entries' values) for a batch of tokens."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch
import torch.nn.functional as F

from omnifm.knowledge import KnowledgeBank, count_retrievals

RETRIEVAL_MODES = ("topk", "mean", "random")


class Retrieved(NamedTuple):
    """``prototypes``: (B, k, d_s) or None; ``ids``: (B, k) bank ids or None; ``values``: (B, k, V) or None."""

    prototypes: torch.Tensor | None
    ids: torch.Tensor | None
    values: torch.Tensor | None = None


def placebo(retrieved: Retrieved, value_width: int, generator: torch.Generator) -> Retrieved:
    """The same retrieval with its content replaced by noise: the placebo the diagnostics compare against.

    Keys become random unit vectors; in every value, each ``value_width``-long class block gets a
    random direction with the block's own norm (the class fractions, i.e. which classes an entry
    has, are kept), so only what the entries *say* is destroyed, not how many there are.

    Args:
        retrieved: a real retrieval.
        value_width: the model's token width ``d`` (values are ``C`` blocks of ``d``, then ``C`` fractions).
        generator: the noise source (seed it for reproducible diagnostics).
    """
    if retrieved.prototypes is None:
        return retrieved
    keys = F.normalize(torch.randn(retrieved.prototypes.shape, generator=generator), dim=-1)
    values = retrieved.values
    if values is not None and value_width:
        classes = values.shape[-1] // (value_width + 1)
        blocks = values[..., : classes * value_width].unflatten(-1, (classes, value_width))
        noise = F.normalize(torch.randn(blocks.shape, generator=generator), dim=-1) * blocks.norm(dim=-1, keepdim=True)
        values = torch.cat([noise.flatten(-2), values[..., classes * value_width :]], dim=-1)
    return Retrieved(keys.to(retrieved.prototypes), retrieved.ids, values)


class Retriever:
    """Top-k cosine retrieval from a (read-only) copy of the server's bank, counting what it returns.

    Args:
        bank: the bank received this round; None or empty means nothing to retrieve.
        top_k: entries per image.
        mode: ``topk`` (cosine top-k), ``mean`` (the ablation "mean spectral embedding": every
            image gets the bank's mean key and mean value; nothing is counted, as no entry was
            chosen) or ``random`` (the placebo control: top-k, then :func:`placebo`).
        value_width: the model's token width (needed by ``random`` to scramble values).
        seed: seed of the ``random`` mode's noise.
    """

    def __init__(
        self, bank: KnowledgeBank | None, top_k: int, mode: str = "topk", value_width: int = 0, seed: int = 0
    ) -> None:
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval mode must be one of {RETRIEVAL_MODES}, got {mode!r}")
        self.bank = bank
        self.top_k = top_k
        self.mode = mode
        self.value_width = value_width
        self.generator = torch.Generator().manual_seed(int(seed))
        self.counts: Counter[int] = Counter()
        self.retrieved_ids: list[torch.Tensor] = []

    def __call__(self, spectral_token: torch.Tensor | None) -> Retrieved:
        if spectral_token is None or self.bank is None or len(self.bank) == 0:
            return Retrieved(None, None)
        has_values = self.bank.value_dim > 0
        if self.mode == "mean":
            batch = spectral_token.shape[0]
            mean = self.bank.prototypes.mean(dim=0).to(spectral_token)
            value = self.bank.values.mean(dim=0).to(spectral_token) if has_values else None
            return Retrieved(mean.expand(batch, 1, -1), None, None if value is None else value.expand(batch, 1, -1))
        prototypes, ids = self.bank.retrieve(spectral_token.detach(), self.top_k)
        values = self.bank.values_for(ids).to(spectral_token) if has_values else None
        retrieved = Retrieved(prototypes, ids, values)
        return placebo(retrieved, self.value_width, self.generator) if self.mode == "random" else retrieved

    def record(self, retrieved: Retrieved) -> None:
        """Count a training batch's retrievals (evaluation batches are not counted)."""
        if retrieved.ids is not None:
            self.counts.update(count_retrievals(retrieved.ids))
            self.retrieved_ids.append(retrieved.ids.detach().cpu())
