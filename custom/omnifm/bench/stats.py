"""Paired statistics for the benchmark: bootstrap CI, Wilcoxon signed-rank, Holm correction.

A comparison is between two methods run on the same seeds (the same phantom draws, splits and
initialisations). Its **unit** is either

- ``seed``: one difference per seed (the site-mean Dice of method A minus that of method B), the
  honest unit when seeds are the independent replications; with 5 seeds a two-sided Wilcoxon
  signed-rank test cannot go below ``p = 2 / 2**5 = 0.0625``, or
- ``cell``: one difference per (seed, site), more pairs but not independent within a seed (the
  sites of a run share the federation); reported next to the seed unit, never instead of it.

Examples::

    >>> r = paired_summary([0.1, 0.2, 0.15, 0.12, 0.18], n_boot=2000, seed=0)
    >>> round(r["mean"], 3), r["n"], round(r["p_wilcoxon"], 4)
    (0.15, 5, 0.0625)
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import wilcoxon

UNITS = ("seed", "cell")


def bootstrap_ci(values: Sequence[float], n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaN, NaN for fewer than 2 values)."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (exact for small n).

    Zero differences are dropped (``zero_method="wilcox"``); all zero (or fewer than one
    non-zero difference) gives ``p = 1``; no data gives NaN.
    """
    data = np.asarray([d for d in differences if not math.isnan(d)], dtype=float)
    if data.size == 0:
        return math.nan
    if np.count_nonzero(data) == 0:
        return 1.0
    return float(wilcoxon(data, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_summary(differences: Sequence[float], n_boot: int = 10000, seed: int = 0) -> dict[str, float]:
    """``{"n", "mean", "ci_low", "ci_high", "p_wilcoxon"}`` of paired differences (NaNs dropped)."""
    data = [float(d) for d in differences if not math.isnan(float(d))]
    low, high = bootstrap_ci(data, n_boot=n_boot, seed=seed)
    return {
        "n": len(data),
        "mean": float(np.mean(data)) if data else math.nan,
        "ci_low": low,
        "ci_high": high,
        "p_wilcoxon": wilcoxon_p(data),
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order; NaNs stay NaN and do not count).

    The ``i``-th smallest of ``m`` p-values is multiplied by ``m - i`` (``i`` from 0), a running
    maximum keeps the order, and values are capped at 1.
    """
    valid = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (len(valid) - rank) * p))
        adjusted[i] = round(running, 12)
    return adjusted
