"""The server core with 64 sites' uploads (benchmarks/load.py's generator): the bank stays within its
cap and a long run's memory does not grow with the rounds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

LOAD = Path(__file__).resolve().parents[3] / "benchmarks" / "load.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("omnifm_bench_load", LOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sixty_four_sites_keep_the_bank_within_its_cap():
    load = _load_module()
    row = load.run(64, 2)
    assert row["bank_cap"] and max(row["bank_size"]) <= row["bank_cap"]
    assert row["bank_size"][-1] > 16, "64 distinct sites must fill more than a few entries"


@pytest.mark.slow
def test_memory_is_flat_across_rounds():
    load = _load_module()
    row = load.run(4, 20)
    settled = row["rss_mb"][4]  # allocator and caches settle in the first rounds
    assert row["rss_mb"][-1] - settled < 20, row["rss_mb"]


@pytest.mark.slow
def test_the_federation_trains_in_process_and_the_server_cost_is_recorded(tmp_path):
    """benchmarks/load.py --train-sites: the benchmark's runner trains every site; each round's server cost is kept."""
    load = _load_module()
    row = load.train(3, 2, cases=4, shape=[32, 32, 8], cache=tmp_path)
    assert row["sites"] == 3 and len(row["round_s"]) == len(row["aggregate_s"]) == len(row["bank_size"]) == 2
    assert all(0 < a < r for a, r in zip(row["aggregate_s"], row["round_s"])), row
    assert row["bank_size"][-1] > 0, "omnifm's sites uploaded prototypes"
