"""Tests for client-side prototype summaries (omnifm.knowledge.prototypes)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from omnifm.knowledge import KnowledgeBank, count_retrievals, summarize_tokens

DIM = 6


def _blobs(
    sizes: list[int], spread: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Well-separated Gaussian blobs centred at 10 * e_i; returns tokens and per-blob points."""
    gen = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.eye(DIM)
    groups = [centres[i] + spread * torch.randn(n, DIM, generator=gen) for i, n in enumerate(sizes)]
    order = torch.randperm(sum(sizes), generator=gen)
    return torch.cat(groups)[order], groups


def _match(centroids: torch.Tensor, counts: torch.Tensor, groups: list[torch.Tensor]) -> None:
    """Every returned centroid is exactly (up to float error) the mean of one whole blob."""
    assert centroids.shape[0] == len(groups) == counts.shape[0]
    for group in groups:
        row = int(torch.cdist(group.mean(0, keepdim=True), centroids).argmin())
        assert int(counts[row]) == group.shape[0]
        assert torch.allclose(centroids[row], group.mean(0), atol=1e-5)


def test_two_separated_clusters_are_recovered():
    tokens, groups = _blobs([30, 20])
    centroids, counts = summarize_tokens(tokens, num_prototypes=2)
    assert centroids.shape == (2, DIM) and centroids.dtype == torch.float32
    assert counts.dtype == torch.int64
    assert sorted(counts.tolist()) == [20, 30]
    _match(centroids, counts, groups)
    for i in range(2):  # close to the true means
        assert torch.cdist(10.0 * torch.eye(DIM)[i : i + 1], centroids).min() < 0.05


def test_min_count_drops_small_clusters():
    tokens, groups = _blobs([12, 10, 3])
    centroids, counts = summarize_tokens(tokens, num_prototypes=3, min_count=4)
    assert sorted(counts.tolist()) == [10, 12]
    _match(centroids, counts, groups[:2])


@pytest.mark.parametrize(
    ("n", "num_prototypes", "min_count"), [(7, 5, 2), (20, 8, 4), (33, 16, 3), (64, 64, 5), (9, 2, 9)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_no_centroid_comes_from_fewer_than_min_count_tokens(n, num_prototypes, min_count, seed):
    tokens = torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed + 10 * n))
    centroids, counts = summarize_tokens(tokens, num_prototypes, min_count=min_count, seed=seed)
    assert centroids.shape[0] == counts.shape[0] <= num_prototypes
    assert bool((counts >= min_count).all()) and int(counts.sum()) <= n
    for centroid in centroids:  # never an individual token
        assert torch.cdist(centroid[None], tokens).min() > 1e-4


def test_determinism_per_seed_and_global_rng_untouched():
    tokens = torch.randn(50, DIM)
    rng_state = torch.get_rng_state()
    first = summarize_tokens(tokens, 5, seed=3)
    second = summarize_tokens(tokens, 5, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    outputs = {tuple(summarize_tokens(tokens, 5, seed=s)[1].tolist()) for s in range(6)}
    assert len(outputs) > 1  # the seed matters


def test_fewer_tokens_than_min_count_gives_empty_tensors():
    centroids, counts = summarize_tokens(torch.randn(3, DIM, dtype=torch.float64), 4, min_count=4)
    assert centroids.shape == (0, DIM) and centroids.dtype == torch.float64
    assert counts.shape == (0,) and counts.dtype == torch.int64
    assert summarize_tokens(torch.empty(0, DIM), 2)[0].shape == (0, DIM)


def test_exactly_min_count_tokens_give_their_mean():
    tokens = torch.randn(4, DIM)
    centroids, counts = summarize_tokens(tokens, 3, min_count=4)
    assert counts.tolist() == [4]
    assert torch.allclose(centroids[0], tokens.mean(0), atol=1e-6)


def test_identical_tokens_collapse_to_one_prototype():
    tokens = torch.ones(10, DIM)
    centroids, counts = summarize_tokens(tokens, 3, min_count=2)
    assert counts.tolist() == [10] and torch.equal(centroids, torch.ones(1, DIM))


def test_tokens_requiring_grad_give_detached_outputs():
    tokens = torch.randn(12, DIM, requires_grad=True)
    centroids, _ = summarize_tokens(tokens, 2, min_count=2)
    assert not centroids.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tokens": torch.randn(DIM)}, "tokens"),
        ({"tokens": torch.ones(5, DIM, dtype=torch.int64)}, "tokens"),
        ({"tokens": torch.full((5, DIM), math.nan)}, "finite"),
        ({"num_prototypes": 0}, "num_prototypes"),
        ({"num_prototypes": 2.0}, "num_prototypes"),
        ({"min_count": 1}, "min_count"),
        ({"min_count": 0}, "min_count"),
        ({"iterations": 0}, "iterations"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_summarize_tokens_rejects_bad_arguments(kwargs, match):
    args = {"tokens": torch.randn(10, DIM), "num_prototypes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        summarize_tokens(**args)


def test_count_retrievals_matches_counter():
    ids = torch.randint(0, 7, (9, 3))
    counts = count_retrievals(ids)
    assert counts == dict(Counter(ids.reshape(-1).tolist()))
    assert list(counts) == sorted(counts)
    assert all(type(k) is int and type(v) is int for k, v in counts.items())
    assert count_retrievals(torch.empty(4, 0, dtype=torch.int64)) == {}


@pytest.mark.parametrize("ids", [torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), [[0, 1]]])
def test_count_retrievals_rejects_non_integer_ids(ids):
    with pytest.raises(ValueError, match="ids"):
        count_retrievals(ids)


def test_client_server_round_trip():
    """Clients summarise and retrieve; the server folds both into the bank."""
    bank = KnowledgeBank(DIM, rho=1.0, delta=0.2, prune_window=1, max_size=8)
    tokens, _ = _blobs([16, 16, 16])
    tokens = torch.nn.functional.normalize(tokens, dim=1)
    centroids, _ = summarize_tokens(tokens, 3)
    bank.update(centroids, None)
    _, ids = bank.retrieve(tokens[:20], k=1)
    summary = bank.update(None, count_retrievals(ids))
    assert summary["version"] == 2 and summary["size"] == len(bank) <= 3
    assert bool((torch.linalg.vector_norm(bank.prototypes, dim=1) <= 1.0).all())
