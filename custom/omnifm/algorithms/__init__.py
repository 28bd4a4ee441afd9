"""Per-algorithm client rules, server-side aggregation rules, the run spec and the round protocol."""

from omnifm.algorithms.aggregation import update_bank, weighted_average
from omnifm.algorithms.registry import ALGORITHMS, Algorithm, get_algorithm
from omnifm.algorithms.server import BANK, DIAGNOSTICS, STATE, Upload, initial_global, server_round, to_plain
from omnifm.algorithms.spec import build_model, check_run_spec, make_run_spec, shared_state

__all__ = [
    "ALGORITHMS", "Algorithm", "BANK", "DIAGNOSTICS", "STATE", "Upload", "build_model", "check_run_spec", "get_algorithm",
    "initial_global", "make_run_spec", "server_round", "shared_state", "to_plain", "update_bank", "weighted_average",
]
