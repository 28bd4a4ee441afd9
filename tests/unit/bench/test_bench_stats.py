"""Paired statistics: bootstrap CI, Wilcoxon signed-rank, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omnifm.bench.stats import bootstrap_ci, holm, paired_summary, wilcoxon_p


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.1, 0.05, 8), rng.normal(0.1, 0.05, 200)
    for data in (small, large):
        low, high = bootstrap_ci(data, n_boot=4000)
        assert low < data.mean() < high
    assert np.diff(bootstrap_ci(large, n_boot=4000)) < np.diff(bootstrap_ci(small, n_boot=4000))
    assert all(math.isnan(v) for v in bootstrap_ci([0.3]))


def test_wilcoxon_floor_with_five_seeds_and_cells():
    assert wilcoxon_p([0.1, 0.2, 0.15, 0.12, 0.18]) == pytest.approx(0.0625), "5 seeds cannot go below 2/32"
    cells = np.linspace(0.05, 0.3, 25)
    assert wilcoxon_p(cells) < 1e-4
    assert wilcoxon_p([0.0, 0.0]) == 1.0 and math.isnan(wilcoxon_p([]))
    assert wilcoxon_p([0.1, -0.1, 0.2, -0.2, 0.05, -0.05]) == pytest.approx(1.0)


def test_paired_summary_fields():
    out = paired_summary([0.1, float("nan"), 0.3], n_boot=1000)
    assert out["n"] == 2 and out["mean"] == pytest.approx(0.2)
    assert out["ci_low"] <= 0.2 <= out["ci_high"]


@pytest.mark.parametrize(
    "pvalues, expected",
    [([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]), ([0.5, 0.01], [0.5, 0.02]), ([0.9, 0.8], [1.0, 1.0]),
     ([float("nan"), 0.02], [float("nan"), 0.02]), ([0.4, 0.3, 0.2], [0.6, 0.6, 0.6])],
)
def test_holm(pvalues, expected):
    np.testing.assert_allclose(holm(pvalues), expected)
