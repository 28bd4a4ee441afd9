"""Server-side rules that need no FL framework."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
import torch

from omnifm.knowledge import KnowledgeBank


def weighted_average(contributions: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of weight dicts (float64 accumulation, float32 result).

    Args:
        contributions: ``(weights, n_samples)`` pairs with identical keys and shapes.

    Raises:
        ValueError: empty input or a non-positive total weight.
    """
    if not contributions:
        raise ValueError("no contributions to average")
    total = float(sum(n for _, n in contributions))
    if total <= 0:
        raise ValueError(f"total sample weight must be > 0, got {total}")
    keys = contributions[0][0].keys()
    return {
        k: (sum(w[k].astype(np.float64) * (n / total) for w, n in contributions)).astype(np.float32) for k in keys
    }


def update_bank(
    bank: KnowledgeBank, prototypes: Iterable[torch.Tensor], retrievals: Iterable[dict[int, int]]
) -> dict[str, int]:
    """One round of the bank rule with every accepted site's uploads; returns the bank's summary."""
    new = [p for p in prototypes if p.numel()]
    merged: Counter[int] = Counter()
    for counts in retrievals:
        merged.update(counts)
    return bank.update(torch.cat(new) if new else None, dict(merged))
