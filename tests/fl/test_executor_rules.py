"""Executor rules that need no running FLARE engine."""

from __future__ import annotations

import pytest

from omnifm.algorithms import ALGORITHMS, make_run_spec
from omnifm.fl.executor import _check_federated


def test_central_is_refused_with_a_pointer_to_the_benchmark():
    with pytest.raises(ValueError, match=r"'central' is not a federated algorithm .*omnifm-bench"):
        _check_federated(make_run_spec("central"))


@pytest.mark.parametrize("algorithm", sorted(a for a in ALGORITHMS if a != "central"))
def test_every_other_algorithm_runs_through_flare(algorithm):
    _check_federated(make_run_spec(algorithm))
