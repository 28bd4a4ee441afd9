"""FedDyn (omnifm/algorithms/feddyn.py): the site's dynamic regulariser and g_i, the server's h, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import BANK, STATE, Upload, make_run_spec, server_round
from omnifm.algorithms.feddyn import H_KEY, FedDynServer, dynamic_regularizer
from omnifm.engine import SiteTrainer, TrainConfig
from synthetic_cases import SMALL, volumes as _volumes


def _trainer(alpha: float = 0.01, lr: float = 1e-3, epochs: int = 1) -> SiteTrainer:
    spec = make_run_spec("feddyn", model=SMALL, feddyn_alpha=alpha)
    config = TrainConfig(local_epochs=epochs, batch_size=4, learning_rate=lr)
    return SiteTrainer(spec, config, _volumes(3, 0), _volumes(1, 1), device=torch.device("cpu"))


def test_regularizer_gradient_is_minus_g_plus_alpha_times_the_drift():
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    g, anchor = torch.tensor([0.3, 0.0, -1.0]), torch.tensor([0.0, 1.0, 0.5])
    term = dynamic_regularizer([("w", theta), ("other", torch.nn.Parameter(torch.ones(1)))], {"w": g}, {"w": anchor}, 0.5)
    # -(0.3 - 0 - 0.5) + 0.25 * (1 + 9 + 0) = 0.2 + 2.5
    assert float(term.detach()) == pytest.approx(2.7)
    term.backward()
    torch.testing.assert_close(theta.grad, -g + 0.5 * (theta.detach() - anchor))


def _ups(values: dict[str, list[list[float]]], counts=(1, 7)) -> list[Upload]:
    """Two sites' uploads for weights "a" (2,) and "b" (1, 1); counts differ to show the means are unweighted."""
    return [Upload({"a": np.array(values["a"][i], np.float32), "b": np.array([[values["b"][i][0]]], np.float32)},
                   counts[i], site=f"site-{i + 1}") for i in range(2)]


def test_server_update_against_the_formula_by_hand():
    """h <- h - alpha * (1/m) sum_i (theta_i - theta_t); theta_{t+1} = mean_i theta_i - h / alpha (m = 2, unweighted)."""
    spec = {"feddyn_alpha": 0.5}
    glob = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([[2.0]], np.float32)}
    ups = _ups({"a": [[2.0, 1.0], [4.0, -1.0]], "b": [[0.0], [1.0]]})
    state = {H_KEY: [0.2, 0.0, -0.5], "other": [1]}  # flat over sorted names: a[0], a[1], b[0, 0]
    # mean a = [3, 0], mean b = 0.5; mean - theta_t = [2, 0, -1.5]
    # h = [0.2, 0, -0.5] - 0.5 * [2, 0, -1.5] = [-0.8, 0, 0.25]
    new_state = FedDynServer().next_state(spec, glob, state, ups)
    np.testing.assert_allclose(new_state[H_KEY], [-0.8, 0.0, 0.25])
    assert new_state["other"] == [1] and state[H_KEY] == [0.2, 0.0, -0.5], "other state kept, input not mutated"
    # theta = [3, 0, 0.5] - [-0.8, 0, 0.25] / 0.5 = [4.6, 0, 0]
    weights = FedDynServer().average(spec, glob, ups, state)
    np.testing.assert_allclose(weights["a"], [4.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(weights["b"], [[0.0]], atol=1e-6)
    assert weights["a"].dtype == np.float32 and weights["b"].shape == (1, 1) and list(weights) == ["a", "b"]


def test_server_round_runs_the_rule_over_rounds_and_starts_from_h_zero():
    spec = make_run_spec("feddyn", model=SMALL, feddyn_alpha=0.1)
    glob = {"w": np.array([1.0], np.float32)}
    meta = {BANK: None, STATE: {}}
    ups = [Upload({"w": np.array([2.0], np.float32)}, 3, site="b"), Upload({"w": np.array([4.0], np.float32)}, 1, site="a")]
    weights, meta = server_round(spec, glob, meta, ups)
    # round 0: h = 0 - 0.1 * (3 - 1) = -0.2; theta = 3 + 0.2 / 0.1 = 5 (the paper's first step doubles the mean move)
    assert meta[STATE][H_KEY] == pytest.approx([-0.2])
    np.testing.assert_allclose(weights["w"], [5.0], rtol=1e-6)
    ups = [Upload({"w": np.array([5.0], np.float32)}, 1, site="a"), Upload({"w": np.array([6.0], np.float32)}, 1, site="b")]
    weights, meta = server_round(spec, weights, meta, ups)
    # round 1: h = -0.2 - 0.1 * (5.5 - 5) = -0.25; theta = 5.5 + 2.5 = 8
    assert meta[STATE][H_KEY] == pytest.approx([-0.25])
    np.testing.assert_allclose(weights["w"], [8.0], rtol=1e-6)


def test_server_refuses_an_h_of_another_model():
    ups = _ups({"a": [[2.0, 1.0], [4.0, -1.0]], "b": [[0.0], [1.0]]})
    glob = {"a": np.zeros(2, np.float32), "b": np.zeros((1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"feddyn_h has 2 values but the global model has 3 shared values"):
        FedDynServer().next_state({"feddyn_alpha": 0.1}, glob, {H_KEY: [0.0, 0.0]}, ups)


def test_site_g_is_minus_alpha_times_the_summed_drift_and_is_personal_state():
    """g_i <- g_i - alpha (theta_i - theta_t), from 0; kept under feddyn/, never uploaded."""
    alpha = 0.3
    trainer = _trainer(alpha)
    g0 = {k: v for k, v in trainer.personal_state().items() if k.startswith("feddyn/")}
    assert set(g0) == {f"feddyn/{n}" for n in trainer.shared_names} and all(not v.any() for v in g0.values())
    expected = {n: torch.zeros_like(v) for n, v in trainer.shared_state().items()}
    for round_num in range(2):
        start = trainer.shared_state()
        result = trainer.train_round(None, round_num)
        assert set(result.weights) == set(trainer.shared_names), "only the shared weights are uploaded"
        for name, end in result.weights.items():
            expected[name] -= alpha * (end - start[name])
        trainer.load_global({k: v * 0.5 for k, v in result.weights.items()})  # a different theta_t next round
    personal = trainer.personal_state()
    for name, g in expected.items():
        torch.testing.assert_close(personal[f"feddyn/{name}"], g, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in expected.values())


def test_g_is_restored_by_a_rebuilt_trainer(tmp_path):
    trainer = _trainer(0.3)
    trainer.train_round(None, 0)
    trainer.save_personal(tmp_path / "p.pt", 0)
    rebuilt = _trainer(0.3)
    rebuilt.load_personal(tmp_path / "p.pt")
    for key, value in trainer.personal_state().items():
        if key.startswith("feddyn/"):
            torch.testing.assert_close(rebuilt.personal_state()[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="feddyn state has no entries"):
        rebuilt.rule.load_state({"nope": torch.zeros(1)})


def test_a_large_alpha_keeps_the_site_near_the_received_model():
    def drift(alpha: float) -> float:
        trainer = _trainer(alpha, lr=1e-2, epochs=2)
        start = trainer.shared_state()
        end = trainer.train_round(None, 0).weights
        return sum(float((end[k] - v).square().sum()) for k, v in start.items())

    assert drift(100.0) < 0.2 * drift(1e-4)
