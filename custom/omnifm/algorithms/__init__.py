"""Per-algorithm client rules, server-side aggregation rules and the federation's run spec."""

from omnifm.algorithms.aggregation import update_bank, weighted_average
from omnifm.algorithms.registry import ALGORITHMS, Algorithm, get_algorithm
from omnifm.algorithms.spec import build_model, check_run_spec, make_run_spec

__all__ = [
    "ALGORITHMS", "Algorithm", "build_model", "check_run_spec", "get_algorithm", "make_run_spec",
    "update_bank", "weighted_average",
]
