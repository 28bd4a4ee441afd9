"""The in-process runner: the round protocol, byte accounting, determinism, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from omnifm.algorithms import get_algorithm, initial_global
from omnifm.bench.cli import main
from omnifm.bench.presets import BANK_ARGS, SPEC_ARGS
from omnifm.bench.runner import RunConfig, run_one
from omnifm.bench.settings import DataConfig

DATA = DataConfig(sites=2, cases=3, shape=(16, 16, 8), min_cases=2)
TRAIN = {"local_epochs": 1, "batch_size": 8, "learning_rate": 3e-3}


def _config(algorithm: str, rounds: int = 2, **spec) -> RunConfig:
    return RunConfig(algorithm, "cross-modality", 0, rounds, DATA, TRAIN, {**SPEC_ARGS, **spec}, BANK_ARGS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_runner_cache")


@pytest.mark.parametrize("algorithm", ["fedavg", "omnifm", "local", "central"])
def test_a_run_records_every_round_and_site(cache, algorithm):
    record = run_one(_config(algorithm), cache)
    assert [r["round"] for r in record["rounds"]] == [0, 1]
    assert set(record["final"]) == {"site-1", "site-2"}
    for m in record["final"].values():
        assert all(0.0 <= m[k] <= 1.0 or math.isnan(m[k]) for k in ("dice", "dice_WT", "dice_TC", "dice_ET"))
        assert m["train_s"] > 0 and m["step_ms"] > 0
    json.dumps(record)  # the record is JSON-able as it is


def test_fedavg_bytes_are_the_fp32_model_both_ways(cache):
    record = run_one(_config("fedavg", rounds=1), cache)
    weights, _ = initial_global(record["spec"])
    model_bytes = 4 * sum(v.size for v in weights.values())
    for m in record["final"].values():
        assert m["bytes_up"] == model_bytes and m["bytes_down"] == model_bytes


def test_local_exchanges_nothing_and_omnifm_sends_less_than_its_model_plus_bank(cache):
    local = run_one(_config("local", rounds=1), cache)
    assert all(m["bytes_up"] == 0 and m["bytes_down"] == 0 for m in local["final"].values())
    omni = run_one(_config("omnifm"), cache)
    weights, _ = initial_global(omni["spec"])
    shared = 4 * sum(v.size for v in weights.values())
    last = omni["rounds"][-1]["sites"]["site-1"]
    assert shared < last["bytes_up"] < shared + 4 * 64 * 40, "shared weights + a few prototypes and counts"
    assert last["bytes_down"] > shared, "round 1 also carries the bank"
    assert "retrieval_ms" in last and last["retrieval_ms"] > 0
    assert get_algorithm("omnifm").personal, "omnifm keeps a personal head, so it sends less than the full model"


def test_runs_are_deterministic(cache):
    a, b = run_one(_config("omnifm"), cache), run_one(_config("omnifm"), cache)
    dice = lambda r: [m["dice"] for rnd in r["rounds"] for m in rnd["sites"].values()]  # noqa: E731
    np.testing.assert_array_equal(dice(a), dice(b))


def test_cli_runs_a_grid_and_writes_results(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["--preset", "quick", "--algorithms", "fedavg", "--rounds", "1", "--out", str(out), "--cache", str(tmp_path / "c")]
    assert main(args) == 0
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["command"].startswith("omnifm-bench --preset quick") and "commit" in run["git"]
    assert run["machine"]["torch_threads"] == 1
    assert (out / "results.csv").is_file() and (out / "summary.md").is_file() and (out / "dice_cross-modality.png").is_file()
    text = capsys.readouterr().out
    assert "round 1/1" in text and "== run 1/1 done" in text
    assert main(args) == 0 and "1 already done" in capsys.readouterr().out
