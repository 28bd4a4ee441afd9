"""The round protocol gives the same result whether sites are kept alive (benchmark) or rebuilt (FLARE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import BANK, STATE, initial_global, make_run_spec, server_round
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.knowledge import KnowledgeBank
from synthetic_cases import SMALL, volumes as _volumes

SITES = ("site-1", "site-2")


def _trainer(spec: dict, site: int, dp: dict | None = None) -> SiteTrainer:
    config = TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2, seed=site, dp=dp)
    return SiteTrainer(spec, config, _volumes(3, site, 1.0 + site), _volumes(1, 10 + site, 1.0 + site),
                       device=torch.device("cpu"))


def _run(spec: dict, rebuild: bool, folder, rounds: int = 2, dp: dict | None = None):
    """``rounds`` rounds of the protocol; with ``rebuild`` every site is re-created from its personal file."""
    weights, meta = initial_global(spec)
    alive = {s: _trainer(spec, i, dp) for i, s in enumerate(SITES)}
    for round_num in range(rounds):
        uploads = []
        for i, site in enumerate(SITES):
            trainer = alive[site]
            if rebuild:
                trainer = alive[site] = _trainer(spec, i, dp)
                trainer.load_personal(folder / f"{site}.pt")
            trainer.load_global({k: torch.as_tensor(v) for k, v in weights.items()})
            bank = KnowledgeBank.from_plain(meta[BANK]) if meta[BANK] else None
            uploads.append(trainer.train_round(bank, round_num, meta[STATE], rounds).to_upload(site))
            trainer.save_personal(folder / f"{site}.pt", round_num)
        weights, meta = server_round(spec, weights, meta, uploads[::-1])  # arrival order must not matter
    return weights, meta, {s: t.personal_state() for s, t in alive.items()}


@pytest.mark.parametrize(
    "algorithm",
    ["omnifm", "fedavg", "ditto", "fedbn", "feddg", "scaffold", "local", "fedrep", "feddyn", "fedper-fusion", "moon"],
)
def test_kept_alive_equals_rebuilt_with_personal_state(algorithm, tmp_path):
    spec = make_run_spec(algorithm, model=SMALL, num_prototypes=2)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    w_alive, meta_alive, personal_alive = _run(spec, False, tmp_path / "a")
    w_rebuilt, meta_rebuilt, personal_rebuilt = _run(spec, True, tmp_path / "b")
    assert w_alive.keys() == w_rebuilt.keys()
    for name in w_alive:
        np.testing.assert_array_equal(w_alive[name], w_rebuilt[name], err_msg=name)
    assert meta_alive == meta_rebuilt
    for site in SITES:
        torch.testing.assert_close(personal_alive[site], personal_rebuilt[site], rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ["omnifm", "fedper"])
def test_kept_alive_equals_rebuilt_under_dp(algorithm, tmp_path):
    """DP-SGD's accountant (steps, sigma) and secret noise seed are personal state: a rebuilt site continues them."""
    spec = make_run_spec(algorithm, model=SMALL, num_prototypes=2)
    dp = {"target_epsilon": 8.0, "delta": 0.1, "cases_per_step": 2, "slices_per_case": 2, "noise_seed": 3}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    w_alive, meta_alive, personal_alive = _run(spec, False, tmp_path / "a", dp=dp)
    w_rebuilt, meta_rebuilt, personal_rebuilt = _run(spec, True, tmp_path / "b", dp=dp)
    for name in w_alive:
        np.testing.assert_array_equal(w_alive[name], w_rebuilt[name], err_msg=name)
    assert meta_alive == meta_rebuilt
    for site in SITES:
        torch.testing.assert_close(personal_alive[site], personal_rebuilt[site], rtol=0, atol=0)
        assert int(personal_rebuilt[site]["dp/steps"]) > 0


def test_a_round_changes_the_model_and_the_rounds_differ(tmp_path):
    """Guard against a trivially passing determinism test: training must move the weights."""
    spec = make_run_spec("fedavg", model=SMALL)
    start, _ = initial_global(spec)
    one, _, _ = _run(spec, False, tmp_path, rounds=1)
    assert any(not np.array_equal(start[k], one[k]) for k in start)


def test_optimizer_state_survives_a_rebuilt_trainer(tmp_path):
    """The Adam moments are personal state: a rebuilt trainer continues them instead of starting afresh."""
    spec = make_run_spec("fedavg", model=SMALL)
    trainer = _trainer(spec, 0)
    trainer.train_round(None, 0, None, 4)
    trainer.save_personal(tmp_path / "p.pt", 0)
    moments = {k: v for k, v in trainer.personal_state().items() if k.startswith("optim/main/")}
    assert any(k.endswith("/exp_avg") and v.abs().sum() > 0 for k, v in moments.items()), "Adam moments were not kept"
    assert all(float(v) == trainer.loader.__len__() for k, v in moments.items() if k.endswith("/step"))
    rebuilt = _trainer(spec, 0)
    rebuilt.load_personal(tmp_path / "p.pt")
    for key, value in moments.items():
        torch.testing.assert_close(rebuilt.personal_state()[key], value, rtol=0, atol=0)
    # without the reload the next round differs: the state is what makes kept-alive == rebuilt hold
    fresh = _trainer(spec, 0)
    fresh._set_personal({k: v for k, v in trainer.personal_state().items() if not k.startswith("optim/")})
    weights = {k: torch.as_tensor(v) for k, v in trainer.shared_state().items()}
    results = []
    for t in (rebuilt, fresh):
        t.load_global(weights)
        results.append(t.train_round(None, 1, None, 4).weights)
    assert any(not torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_cosine_schedule_decays_over_the_job_and_is_reported():
    config = TrainConfig(learning_rate=0.01, min_lr_fraction=0.1)
    lrs = [config.round_lr(r, 5) for r in range(5)]
    assert lrs[0] == pytest.approx(0.01) and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0.001
    assert TrainConfig(learning_rate=0.01, lr_schedule="constant").round_lr(3, 5) == 0.01
    assert config.round_lr(3, None) == 0.01, "an unknown horizon means a constant learning rate"
    spec = make_run_spec("fedavg", model=SMALL)
    assert _trainer(spec, 0).train_round(None, 2, None, 4).metrics["lr"] == pytest.approx(TrainConfig(learning_rate=1e-3).round_lr(2, 4))
