"""Server-side rules that need no FL framework."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

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


def update_bank(bank: KnowledgeBank, uploads: Iterable[Any]) -> dict[str, int]:
    """One round of the bank rule with every accepted site's uploads (in the given order); the bank's summary.

    Each upload contributes its prototypes (keys), their values and member counts, owned by its site,
    and its retrieval counts (see :meth:`KnowledgeBank.update`).
    """
    keys, values, owners, masses = [], [], [], []
    merged: Counter[int] = Counter()
    for upload in uploads:
        merged.update(upload.retrievals)
        count = upload.prototypes.shape[0] if upload.prototypes.numel() else 0
        if not count:
            continue
        keys.append(upload.prototypes)
        values.append(upload.values if upload.values is not None else torch.zeros(count, 0))
        owners += [upload.site] * count
        masses.append(torch.ones(count) if upload.counts is None else torch.as_tensor(upload.counts).double())
    if not keys:
        return bank.update(None, dict(merged))
    return bank.update(torch.cat(keys), dict(merged), torch.cat(values), owners, torch.cat(masses).double())


def token_cos_across(uploads: Iterable[Any]) -> dict[str, float]:
    """Per site: mean cosine between its token centroid and the other sites' (from the uploaded keys).

    A site's centroid is the member-count-weighted mean of its uploaded keys. 1.0 = every site's
    tokens point the same way (the spectral token does not tell sites apart).
    """
    centroids = {}
    for upload in uploads:
        if upload.prototypes.numel():
            weights = torch.ones(upload.prototypes.shape[0]) if upload.counts is None else torch.as_tensor(upload.counts)
            mean = (upload.prototypes.double() * weights.double().unsqueeze(1)).sum(0) / weights.double().sum()
            centroids[upload.site] = torch.nn.functional.normalize(mean, dim=0)
    out = {}
    for site, centre in centroids.items():
        others = [float(centre @ other) for name, other in centroids.items() if name != site]
        if others:
            out[site] = sum(others) / len(others)
    return out
