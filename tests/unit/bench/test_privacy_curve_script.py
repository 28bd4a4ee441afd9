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
    cost = module.step_cost("fedavg", tmp_path, steps=2, setting="cross-modality")
    assert cost["plain_ms"] > 0 and cost["dp_ms"] > 0 and cost["ratio"] > 1.0, cost
