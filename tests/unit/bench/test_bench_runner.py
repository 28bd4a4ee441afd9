"""The in-process runner: the round protocol, byte accounting, determinism, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from omnifm.algorithms import get_algorithm, initial_global
from omnifm.bench.cli import main
from omnifm.bench.presets import BANK_ARGS, SPEC_ARGS
from omnifm.bench.runner import RunConfig, round_diagnostics, run_one
from omnifm.bench.settings import DataConfig

DATA = DataConfig(sites=2, cases=3, shape=(16, 16, 8), min_cases=2)
TRAIN = {"local_epochs": 1, "batch_size": 8, "learning_rate": 3e-3}
TINY_DATA = ["--data-arg", "sites=2", "cases=4", "shape=[16, 16, 8]", "min_cases=2"]


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


def test_the_test_split_is_evaluated_once_after_the_last_round(cache, monkeypatch):
    import omnifm.bench.runner as runner

    calls = []
    real = runner._evaluate_test
    monkeypatch.setattr(runner, "_evaluate_test", lambda *a: calls.append(1) or real(*a))
    record = run_one(_config("fedper", rounds=2), cache)
    assert len(calls) == 2, "once per site, not per round"
    assert set(record["test"]) == {"site-1", "site-2"} and all(0 <= m["dice"] <= 1 for m in record["test"].values())
    assert all(v["test_cases"] == 1 and v["val_cases"] == 1 for v in record["sites"].values())
    assert len(record["diagnostics"]) == 2 and set(record["diagnostics"][0]["sites"]) == {"site-1", "site-2"}
    central = run_one(_config("central", rounds=1), cache)
    assert set(central["test"]) == {"site-1", "site-2"}


def test_round_diagnostics_merge_site_and_server_and_tolerate_missing_keys():
    import torch

    sites = {"site-1": {"token_cos_within": 0.4, "note": "text"}, "site-2": {}}
    server = {"bank": {"size": 12, "inserted": torch.tensor(3), "merged": 2, "pruned": 1},
              "sites": {"site-1": {"token_cos_across": 0.1}}}
    out = round_diagnostics(3, sites, server)
    assert out == {"round": 3, "bank": {"size": 12.0, "inserted": 3.0, "merged": 2.0, "pruned": 1.0},
                   "sites": {"site-1": {"token_cos_within": 0.4, "token_cos_across": 0.1}, "site-2": {}}}
    assert round_diagnostics(0, {"site-1": None}, None) == {"round": 0, "bank": {}, "sites": {"site-1": {}}}


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
    args = ["--preset", "quick", "--algorithms", "fedavg", "--rounds", "1", "--out", str(out), "--cache", str(tmp_path / "c"),
            *TINY_DATA]
    assert main(args) == 0
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["command"].startswith("omnifm-bench --preset quick") and "commit" in run["git"]
    assert run["machine"]["torch_threads"] == 1
    assert (out / "results.csv").is_file() and (out / "summary.md").is_file() and (out / "dice_cross-modality.png").is_file()
    text = capsys.readouterr().out
    assert "round 1/1" in text and "== run 1/1 done" in text
    assert main(args) == 0 and "1 already done" in capsys.readouterr().out


def test_cli_defaults_to_a_fresh_folder_outside_benchmarks_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--preset", "quick", "--algorithms", "local", "--rounds", "1", "--cache", str(tmp_path / "c"), *TINY_DATA]
    assert main(args) == 0
    folders = list((tmp_path / "omnifm-bench-results").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("quick-") and (folders[0] / "summary.md").is_file()
    assert not (tmp_path / "benchmarks").exists()
    from omnifm.bench.cli import DEFAULT_CACHE, _run_parser

    assert str(DEFAULT_CACHE) in " ".join(_run_parser().format_help().split()), "--help shows where the phantom cache is"


CLS_DATA = DataConfig(sites=2, cases=4, shape=(32, 32, 8), min_cases=2)


def test_a_classification_run_is_scored_by_its_task(cache):
    from omnifm.bench.presets import CLS_SPEC_ARGS

    spec = {**CLS_SPEC_ARGS, "task": {"name": "classification", "class_skew": 0.0}}
    config = RunConfig("omnifm", "cross-modality", 0, 2, CLS_DATA, {**TRAIN, "batch_size": 32}, spec, BANK_ARGS)
    assert "classification" in config.run_id, "the task is part of the run id: it never overwrites a segmentation run"
    record = run_one(config, cache)
    assert record["task"]["name"] == "classification" and record["task"]["headline"] == "accuracy"
    assert {"accuracy", "macro_f1", "auc"} <= set(record["task"]["metrics"])
    for m in record["final"].values():
        assert 0.0 <= m["accuracy"] <= 1.0 and "accuracy_local" in m and "dice" not in m
    assert all(set(record["task"]["metrics"]) == set(m) for m in record["test"].values())
    assert any("placebo_accuracy_delta" in d for d in record["diagnostics"][-1]["sites"].values())


def test_only_the_sampled_sites_train_and_upload(cache, monkeypatch):
    from omnifm.algorithms.participation import participants
    from omnifm.engine import SiteTrainer

    trained, real = [], SiteTrainer.train_round
    monkeypatch.setattr(SiteTrainer, "train_round", lambda self, *a, **k: trained.append(self.site) or real(self, *a, **k))
    data = DataConfig(sites=3, cases=3, shape=(16, 16, 8), min_cases=2)
    config = RunConfig("fedper", "cross-modality", 0, 3, data, TRAIN, SPEC_ARGS, BANK_ARGS, participation=0.34)
    record = run_one(config, cache)
    sites = ["site-1", "site-2", "site-3"]
    expected = [participants(sites, 0.34, r, 0) for r in range(3)]
    assert trained == [s for chosen in expected for s in chosen] and all(len(c) == 1 for c in expected)
    for rnd, chosen in zip(record["rounds"], expected):
        for site, m in rnd["sites"].items():
            assert m["trained"] == (site in chosen)
            if site not in chosen:
                assert m["bytes_up"] == 0 and m["n_samples"] == 0 and math.isnan(m["dice_local"])
            assert 0.0 <= m["dice"] <= 1.0 or math.isnan(m["dice"]), "every site is evaluated every round"
        assert set(record["diagnostics"][rnd["round"]]["sites"]) == set(chosen)
    assert "participation=0.34" in config.run_id and config.to_dict()["participation"] == 0.34
    assert "participation" not in _config("fedper").to_dict(), "full participation keeps older configs' shape"


def test_participation_is_checked():
    with pytest.raises(ValueError, match="participation"):
        RunConfig("fedavg", "cross-modality", 0, 1, DATA, participation=0.0)
    with pytest.raises(ValueError, match="not a federation"):
        RunConfig("central", "cross-modality", 0, 1, DATA, participation=0.5)
