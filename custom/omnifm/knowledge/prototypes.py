"""Client-side summaries uploaded to the knowledge bank (OmniFM, sec. 3.3).

A client never uploads one embedding per image: :func:`summarize_tokens` clusters its spectral
tokens with a deterministic k-means and keeps only centroids backed by at least ``min_count``
tokens; :func:`count_retrievals` turns the ids it retrieved into ``{id: count}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from omnifm.validation import check_int


def _check_summarize_args(
    tokens: Any, num_prototypes: Any, min_count: Any, iterations: Any, seed: Any
) -> tuple[int, int, int, int]:
    """Return ``(num_prototypes, min_count, iterations, seed)`` as Python ints."""
    if not isinstance(tokens, Tensor) or not tokens.is_floating_point() or tokens.ndim != 2:
        got = getattr(tokens, "shape", type(tokens))
        raise ValueError(f"tokens must be a floating (N, d) Tensor, got {got}")
    if not bool(torch.isfinite(tokens).all()):
        raise ValueError("tokens must be finite (no NaN/Inf values)")
    return (
        check_int("num_prototypes", num_prototypes),
        check_int("min_count", min_count, 2),
        check_int("iterations", iterations),
        check_int("seed", seed, None),
    )


def _kmeans_pp_init(points: Tensor, clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding; returns ``(C, d)`` centres with ``C <= clusters``.

    Stops early when every remaining point coincides with a chosen centre.
    """
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)
    while len(centres) < clusters and float(closest.sum()) > 0:
        pick = int(torch.multinomial(closest, 1, generator=generator))
        centres.append(points[pick])
        closest = torch.minimum(closest, ((points - points[pick]) ** 2).sum(dim=1))
    return torch.stack(centres)


def _assign(points: Tensor, centres: Tensor) -> Tensor:
    """``(N,)`` index of the nearest centre (ties: lowest centre index)."""
    return torch.cdist(points, centres).argmin(dim=1)


def _cluster_means(points: Tensor, labels: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Member means and counts per cluster; empty clusters keep their previous centre."""
    counts = torch.bincount(labels, minlength=centres.shape[0])
    sums = torch.zeros_like(centres).index_add_(0, labels, points)
    means = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), centres)
    return means, counts


def summarize_tokens(
    tokens: Tensor,
    num_prototypes: int,
    min_count: int = 4,
    iterations: int = 10,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Summarise a client's spectral tokens into prototype centroids with member counts.

    Runs Lloyd's k-means (in float64, k-means++ seeding from a ``torch.Generator`` seeded by
    ``seed``; the global RNG is untouched) with ``min(num_prototypes, N // min_count)``
    clusters, then drops clusters with fewer than ``min_count`` members. Every returned centroid
    is exactly the mean of its ``counts`` member tokens under the final assignment, so no
    prototype is a single image's embedding. Centroids are not re-normalised.

    Args:
        tokens: ``(N, d)`` finite floating tensor of spectral tokens (detached internally).
        num_prototypes: Maximum number of prototypes ``P`` (>= 1).
        min_count: Minimum members per kept cluster (>= 2).
        iterations: Maximum Lloyd iterations (>= 1); stops early once assignments are stable.
        seed: Seed of the private generator; equal inputs and seed give equal outputs.

    Returns:
        ``(P, d)`` centroids (tokens' dtype/device) and ``(P,)`` int64 member counts, with
        ``P <= num_prototypes``; ``(0, d)`` and ``(0,)`` if ``N < min_count``.

    Examples::

        >>> tokens = torch.cat([torch.zeros(5, 2), torch.ones(5, 2)])
        >>> centroids, counts = summarize_tokens(tokens, num_prototypes=2, min_count=3)
        >>> sorted(counts.tolist()), sorted(centroids.sum(dim=1).tolist())
        ([5, 5], [0.0, 2.0])
    """
    means, counts, _ = cluster_tokens(tokens, num_prototypes, min_count, iterations, seed)
    return means, counts


def cluster_tokens(
    tokens: Tensor, num_prototypes: int, min_count: int = 4, iterations: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`summarize_tokens` plus each token's cluster: ``(centroids, counts, assignment)``.

    ``assignment`` is ``(N,)`` int64: the index of the token's kept centroid, or -1 when its
    cluster had fewer than ``min_count`` members and was dropped.
    """
    num_prototypes, min_count, iterations, seed = _check_summarize_args(
        tokens, num_prototypes, min_count, iterations, seed
    )
    clusters = min(num_prototypes, tokens.shape[0] // min_count)
    if clusters == 0:
        empty_counts = torch.zeros(0, dtype=torch.int64, device=tokens.device)
        unassigned = torch.full((tokens.shape[0],), -1, dtype=torch.int64)
        return tokens.new_zeros((0, tokens.shape[1])), empty_counts, unassigned
    points = tokens.detach().to(device="cpu", dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    centres = _kmeans_pp_init(points, clusters, generator)
    labels = _assign(points, centres)
    for _ in range(iterations):
        centres, _ = _cluster_means(points, labels, centres)
        new_labels = _assign(points, centres)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    means, counts = _cluster_means(points, labels, centres)
    keep = counts >= min_count
    renumber = torch.full((keep.numel(),), -1, dtype=torch.int64)
    renumber[keep] = torch.arange(int(keep.sum()))
    return (
        means[keep].to(device=tokens.device, dtype=tokens.dtype), counts[keep].to(tokens.device), renumber[labels]
    )


def count_retrievals(ids: Tensor) -> dict[int, int]:
    """Count how often each prototype id was retrieved.

    Args:
        ids: ``(B, k)`` integer tensor of retrieved ids (any shape is flattened).

    Returns:
        ``{id: count}`` with plain Python ints, keys ascending; ``{}`` for an empty tensor.

    Examples::

        >>> count_retrievals(torch.tensor([[3, 1], [3, 0]]))
        {0: 1, 1: 1, 3: 2}
    """
    integer = isinstance(ids, Tensor) and not (ids.is_floating_point() or ids.is_complex())
    if not integer or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer Tensor, got {getattr(ids, 'dtype', type(ids))}")
    values, counts = torch.unique(ids.detach().reshape(-1).cpu(), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))
