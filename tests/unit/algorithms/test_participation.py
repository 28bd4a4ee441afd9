from __future__ import annotations

import pytest

from omnifm.algorithms.participation import participants

SITES = [f"site-{i}" for i in range(1, 11)]


@pytest.mark.parametrize("fraction, count", [(0.2, 2), (0.5, 5), (1.0, 10), (0.01, 1)])
def test_a_round_trains_the_configured_share_of_sites(fraction, count):
    picked = participants(SITES, fraction, 0)
    assert len(picked) == count and set(picked) <= set(SITES) and picked == sorted(picked)


def test_the_draw_is_seeded_by_federation_seed_and_round_and_varies_over_rounds():
    assert participants(SITES, 0.5, 3, seed=1) == participants(list(reversed(SITES)), 0.5, 3, seed=1)
    draws = {tuple(participants(SITES, 0.5, r, seed=1)) for r in range(10)}
    assert len(draws) > 5
    counts = {s: sum(s in participants(SITES, 0.2, r) for r in range(200)) for s in SITES}
    assert min(counts.values()) > 20  # every site takes part (expected 40 of 200 rounds)


@pytest.mark.parametrize("args, message", [((SITES, 0.0, 0), "fraction"), ((SITES, 1.5, 0), "fraction"),
                                           (([], 0.5, 0), "empty"), ((SITES, 0.5, -1), "round_num")])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        participants(*args)
