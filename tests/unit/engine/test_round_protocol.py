"""The round protocol gives the same result whether sites are kept alive (benchmark) or rebuilt (FLARE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import BANK, STATE, initial_global, make_run_spec, server_round
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.knowledge import KnowledgeBank

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}
SITES = ("site-1", "site-2")


def _volumes(n: int, seed: int, contrast: float) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        label = np.zeros((1, 32, 32, 4), np.uint8)
        label[0, 10:20, 12:22, 1:3] = 1
        image = rng.normal(0, 0.3, (1, 32, 32, 4)).astype(np.float32) + contrast * label
        cases.append({"image": image, "label": label})
    return cases


def _trainer(spec: dict, site: int) -> SiteTrainer:
    config = TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2, seed=site)
    return SiteTrainer(spec, config, _volumes(3, site, 1.0 + site), _volumes(1, 10 + site, 1.0 + site),
                       device=torch.device("cpu"))


def _run(spec: dict, rebuild: bool, folder, rounds: int = 2):
    """``rounds`` rounds of the protocol; with ``rebuild`` every site is re-created from its personal file."""
    weights, meta = initial_global(spec)
    alive = {s: _trainer(spec, i) for i, s in enumerate(SITES)}
    for round_num in range(rounds):
        uploads = []
        for i, site in enumerate(SITES):
            trainer = alive[site]
            if rebuild:
                trainer = alive[site] = _trainer(spec, i)
                trainer.load_personal(folder / f"{site}.pt")
            trainer.load_global({k: torch.as_tensor(v) for k, v in weights.items()})
            bank = KnowledgeBank.from_plain(meta[BANK]) if meta[BANK] else None
            uploads.append(trainer.train_round(bank, round_num, meta[STATE]).to_upload(site))
            trainer.save_personal(folder / f"{site}.pt", round_num)
        weights, meta = server_round(spec, weights, meta, uploads[::-1])  # arrival order must not matter
    return weights, meta, {s: t.personal_state() for s, t in alive.items()}


@pytest.mark.parametrize("algorithm", ["omnifm", "fedavg", "ditto", "fedbn", "feddg", "scaffold", "local"])
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


def test_a_round_changes_the_model_and_the_rounds_differ(tmp_path):
    """Guard against a trivially passing determinism test: training must move the weights."""
    spec = make_run_spec("fedavg", model=SMALL)
    start, _ = initial_global(spec)
    one, _, _ = _run(spec, False, tmp_path, rounds=1)
    assert any(not np.array_equal(start[k], one[k]) for k in start)
