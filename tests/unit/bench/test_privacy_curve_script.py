"""benchmarks/privacy_curve.py still runs against the engine's API (it once called a removed SiteTrainer method)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "privacy_curve.py"


@pytest.mark.slow
def test_the_dp_step_cost_runs_and_dp_costs_more_than_a_plain_step(tmp_path):
    spec = importlib.util.spec_from_file_location("omnifm_privacy_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # medians of 6 interleaved steps: with 2 one hiccup of a shared machine flipped the comparison (DP is ~2x)
    cost = module.step_cost("fedavg", tmp_path, steps=6, setting="cross-modality")
    assert cost["plain_ms"] > 0 and cost["dp_ms"] > 0 and cost["ratio"] > 1.0, cost


def _load():
    spec = importlib.util.spec_from_file_location("omnifm_privacy_curve_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_ranking_runs_the_full_presets_federation_and_training():
    """``--data ranking`` is the benchmark's ranking setting (the full preset's data and training), --lr on top."""
    from omnifm.bench.presets import get_preset

    module, full = _load(), get_preset("full")
    module._select_data("ranking", 0.1)
    config = module.run_config("omnifm", 8.0, 0, full.rounds, "cross-modality")
    assert config.data == full.data and config.data.sites == 5
    assert {**config.train, "learning_rate": None, "dp": None} == {**full.train, "learning_rate": None, "dp": None}
    assert config.train["learning_rate"] == 0.1 and config.train["dp"]["target_epsilon"] == 8.0
    module._select_data("dp-small", None)
    small = module.run_config("omnifm", float("inf"), 0, 5, "cross-modality")
    assert small.data.sites == 3 and small.train["learning_rate"] == 1e-2 and small.train["dp"] is None
