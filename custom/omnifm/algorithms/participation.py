"""Client participation: which sites a round trains (paper Table 1: 20 %, 50 %, 100 % of sites).

One seeded rule serves the FLARE controller (:class:`omnifm.fl.sampling.SampledScatterAndGather`)
and the in-process benchmark, so both pick the same sites for the same round: round ``r`` of a
federation with seed ``s`` trains ``max(1, round(fraction * n))`` sites drawn without replacement
from the sorted site names by a generator seeded with ``(s, r)``. ``round`` is Python's (half to
even): 50 % of 5 sites is 2 sites, 50 % of 3 sites is 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omnifm.validation import check_int, check_range


def participants(sites: Sequence[str], fraction: float, round_num: int, seed: int = 0) -> list[str]:
    """The sites that train in round ``round_num`` (sorted); all of them when ``fraction`` is 1.

    Examples::

        >>> participants(["site-1", "site-2", "site-3"], 1.0, 0)
        ['site-1', 'site-2', 'site-3']
        >>> len(participants([f"site-{i}" for i in range(10)], 0.2, 3))
        2
        >>> participants(["a", "b", "c", "d"], 0.5, 1, seed=0) == participants(["d", "c", "b", "a"], 0.5, 1, seed=0)
        True
    """
    check_range("fraction", fraction, 0, 1, low_open=True)
    check_int("round_num", round_num, 0)
    ordered = sorted(set(sites))
    if not ordered:
        raise ValueError("sites must not be empty")
    count = max(1, round(fraction * len(ordered)))
    if count >= len(ordered):
        return ordered
    rng = np.random.default_rng([check_int("seed", seed, 0), int(round_num)])
    return sorted(ordered[i] for i in rng.choice(len(ordered), size=count, replace=False))
