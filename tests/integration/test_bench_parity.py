"""Parity: one tiny configuration through ``nvflare simulator`` and through the in-process benchmark.

Same job config (copied and shrunk like ``test_simulator.py``), same phantom, same seeds: the final
per-site Dice of FLARE's ``GlobalModelEval`` and of the in-process runner must agree. The simulator
runs each task in a fresh worker process (the executor and its ``SiteTrainer`` are rebuilt and the
personal state is reloaded from disk), the benchmark keeps one trainer per site alive, so this also
checks that the core round protocol does not depend on the trainer's lifetime.
"""

from __future__ import annotations

import pytest

from omnifm.bench.flare import final_dice, inprocess_config, prepare_job, round_times, run_simulator
from omnifm.bench.runner import run_one

SITES = ("site-1", "site-2")
TOLERANCE = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["omnifm"])
def test_flare_simulator_and_in_process_runs_give_the_same_dice(tmp_path, algorithm):
    job = prepare_job(tmp_path / "omnifm_seg", algorithm, sites=2, rounds=2, local_epochs=1, cases=6, shape=(32, 32, 8))
    code, log, _ = run_simulator(job, tmp_path / "ws", timeout=900)
    assert code == 0, log[-4000:]
    assert len(round_times(log)) == 2, "ScatterAndGather logged two rounds"
    flare = final_dice(tmp_path / "ws")

    config = inprocess_config(job)
    assert (config.algorithm, config.rounds, config.data.sites, config.data.shape) == (algorithm, 2, 2, (32, 32, 8))
    record = run_one(config, tmp_path / "cache")

    assert sorted(flare) == sorted(record["final"]) == list(SITES)
    for site in SITES:
        for key in record["task"]["metrics"]:  # segmentation: dice, dice_WT, dice_TC, dice_ET
            assert flare[site][key] == pytest.approx(record["final"][site][key], abs=TOLERANCE), (site, key)
    assert any(record["final"][s]["dice"] > 0 for s in SITES), "a model that learned nothing would prove little"
