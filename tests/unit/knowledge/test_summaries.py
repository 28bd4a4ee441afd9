"""Class-conditional bank values: what a site uploads next to its spectral keys."""

from __future__ import annotations

import torch

from omnifm.knowledge.summaries import class_sums, summarize_entries


def test_class_sums_average_features_over_each_class_cells():
    features = torch.zeros(1, 2, 2, 2)
    features[0, :, 0, 0] = torch.tensor([4.0, 8.0])  # the top-left cell
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels[..., :2, :2] = 1  # class 1 covers exactly the top-left cell
    sums, mass = class_sums(features, labels, 3)
    assert mass.tolist() == [[3.0, 1.0, 0.0]]
    assert sums[0, 1].tolist() == [4.0, 8.0] and sums[0, 0].tolist() == [0.0, 0.0]


def test_entries_hold_cluster_class_means_fractions_and_site_fallback():
    tokens = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(3, 1), torch.tensor([[0.0, 1.0]]).repeat(3, 1)])
    sums = torch.zeros(6, 2, 1)
    mass = torch.zeros(6, 2)
    mass[:, 0] = 1.0
    sums[:, 0, 0] = torch.arange(6.0)  # background feature = slice index
    mass[:3, 1] = 1.0
    sums[:3, 1, 0] = 10.0  # class 1 only in the first cluster
    keys, values, counts = summarize_entries(tokens, sums, mass, num_prototypes=2, min_count=3, seed=0)
    assert sorted(counts.tolist()) == [3, 3] and values.shape == (2, 2 * (1 + 1))
    first = int(torch.argmax(keys[:, 0]))
    second = 1 - first
    assert values[first].tolist() == [1.0, 10.0, 0.5, 0.5]  # means (0+1+2)/3 and 10; fractions 3/6, 3/6
    # class 1 is absent from the second cluster: the site-wide class mean (10) with fraction 0
    assert values[second].tolist() == [4.0, 10.0, 1.0, 0.0]


def test_small_clusters_are_never_uploaded():
    tokens = torch.randn(5, 4)
    keys, values, counts = summarize_entries(tokens, torch.zeros(5, 2, 3), torch.ones(5, 2), 4, min_count=8)
    assert keys.shape == (0, 4) and values.shape == (0, 8) and counts.numel() == 0
