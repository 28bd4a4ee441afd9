"""MOON (omnifm/algorithms/moon.py): the contrastive loss by hand, its pull, a federated run, personal state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnifm.algorithms import STATE, check_run_spec, get_algorithm, initial_global, make_run_spec, server_round
from omnifm.algorithms.moon import PREVIOUS, model_contrastive_loss, representation
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.engine.privacy import refusal
from synthetic_cases import SMALL, volumes as _volumes

SITES = ("site-1", "site-2")


def _spec(algorithm: str = "moon", **spec_args) -> dict:
    return make_run_spec(algorithm, model=SMALL, **spec_args)


def _trainer(spec: dict, site: int = 0) -> SiteTrainer:
    config = TrainConfig(local_epochs=1, batch_size=4, learning_rate=1e-2, seed=site)
    return SiteTrainer(spec, config, _volumes(3, site, 1.0 + site), _volumes(1, 10 + site), device=torch.device("cpu"))


def _margin(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
    return (F.cosine_similarity(z, z_glob, dim=1) - F.cosine_similarity(z, z_prev, dim=1)).mean()


# ---- the loss ------------------------------------------------------------------------------
def test_loss_is_the_formula_on_hand_made_vectors():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z_glob = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # cos: 1/sqrt(2), 1
    z_prev = torch.tensor([[0.0, 3.0], [-1.0, 0.0]])  # cos: 0, -1/sqrt(2)
    tau = 0.5
    by_hand = []
    for s_g, s_p in ((1 / math.sqrt(2), 0.0), (1.0, -1 / math.sqrt(2))):
        e_g, e_p = math.exp(s_g / tau), math.exp(s_p / tau)
        by_hand.append(-math.log(e_g / (e_g + e_p)))
    assert float(model_contrastive_loss(z, z_glob, z_prev, tau)) == pytest.approx(sum(by_hand) / 2, rel=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_loss_is_log_2_when_the_global_and_previous_representations_agree(tau):
    z, other = torch.randn(5, 8), torch.randn(5, 8)
    assert float(model_contrastive_loss(z, other, other.clone(), tau)) == pytest.approx(math.log(2), rel=1e-6)


def test_gradient_pulls_z_toward_the_global_and_away_from_the_previous_representation():
    gen = torch.Generator().manual_seed(3)
    z_glob, z_prev = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    z = torch.randn(6, 16, generator=gen, requires_grad=True)
    model_contrastive_loss(z, z_glob, z_prev, tau=0.5).backward()
    stepped = z.detach() - 0.5 * z.grad
    assert _margin(stepped, z_glob, z_prev) > _margin(z.detach(), z_glob, z_prev) + 1e-3


def test_round_one_choice_z_prev_equal_z_glob_has_no_gradient():
    """Why skipping the term in round 1 is the same update as using the global model as z_prev."""
    z, z_glob = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    model_contrastive_loss(z, z_glob, z_glob, tau=0.5).backward()
    torch.testing.assert_close(z.grad, torch.zeros_like(z), rtol=0, atol=1e-7)


@pytest.mark.parametrize("task, model", [({"kind": "segmentation"}, SMALL),
                                         ({"kind": "classification"}, {"block_inplanes": [4, 8, 8, 16]})])
def test_representation_is_the_spatially_pooled_bottleneck(task, model):
    from omnifm.algorithms import build_model

    net = build_model(make_run_spec("moon", task=task, model=model))
    image = torch.randn(2, 1, 32, 32)
    z = representation(net, image)
    assert z.shape == (2, net.token_dim)
    torch.testing.assert_close(z, net.bottleneck_features(image).mean(dim=(2, 3)))


# ---- a federated run -----------------------------------------------------------------------
def _run(spec: dict, rounds: int = 2) -> list[list[dict[str, np.ndarray]]]:
    """``rounds`` rounds of two sites in process (the FLARE round protocol); the sites' uploads per round."""
    weights, meta = initial_global(spec)
    trainers = [_trainer(spec, i) for i in range(len(SITES))]
    history = []
    for round_num in range(rounds):
        uploads = []
        for trainer, site in zip(trainers, SITES):
            trainer.load_global({k: torch.as_tensor(v) for k, v in weights.items()})
            uploads.append(trainer.train_round(None, round_num, meta[STATE], rounds).to_upload(site))
        history.append([u.weights for u in uploads])
        weights, meta = server_round(spec, weights, meta, uploads)
    return history


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_moon_update_differs_from_fedavg_from_round_two_and_mu_zero_is_fedavg():
    fedavg = _run(_spec("fedavg"))
    moon = _run(_spec(moon_mu=1.0))
    assert _same(moon[0], fedavg[0]), "round 1 has no previous local model: the term is skipped (FedAvg's update)"
    assert not _same(moon[1], fedavg[1]), "round 2 contrasts with the previous local model"
    drift = max(float(np.abs(moon[1][0][k] - fedavg[1][0][k]).max()) for k in moon[1][0])
    assert drift > 1e-6
    assert all(_same(m, f) for m, f in zip(_run(_spec(moon_mu=0.0)), fedavg)), "mu = 0 is FedAvg exactly"


def test_the_term_is_evaluated_from_round_two_with_the_round_s_global_model(caplog):
    trainer = _trainer(_spec(moon_mu=5.0))
    assert trainer.rule.start_round(trainer.model, {}, 1, 1).batch_term is None, "no previous model yet"
    trainer.train_round(None, 0)
    trained = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.load_global({n: v + 0.1 for n, v in trained.items()})
    hooks = trainer.rule.start_round(trainer.model, {}, 1, 1)
    image = next(iter(trainer.loader))["image"]
    term, l_con = hooks.batch_term(image).detach(), trainer.rule.contrastive_term(trainer.model, image).detach()
    assert float(term) == pytest.approx(5.0 * float(l_con), rel=1e-6)
    frozen = dict(trainer.rule.global_model.named_parameters())
    assert all(torch.equal(frozen[n], trained[n] + 0.1) for n in trained), "z_glob comes from the received model"
    previous = dict(trainer.rule.previous.named_parameters())
    assert all(torch.equal(previous[n], trained[n]) for n in trained), "z_prev comes from last round's local model"
    assert not any(p.requires_grad for p in trainer.rule.previous.parameters())


# ---- personal state ------------------------------------------------------------------------
def test_the_previous_model_survives_a_rebuilt_trainer(tmp_path):
    spec = _spec()
    trainer = _trainer(spec)
    assert float(trainer.personal_state()["moon/has_previous"]) == 0.0
    trainer.train_round(None, 0)
    trainer.save_personal(tmp_path / "p.pt", 0)
    rebuilt = _trainer(spec)
    rebuilt.load_personal(tmp_path / "p.pt")
    saved, restored = trainer.personal_state(), rebuilt.personal_state()
    moon_keys = [k for k in saved if k.startswith("moon/")]
    assert "moon/has_previous" in moon_keys and any(k.startswith(f"moon/{PREVIOUS}") for k in moon_keys)
    for key in moon_keys:
        torch.testing.assert_close(restored[key], saved[key], rtol=0, atol=0)
    assert rebuilt.rule.has_previous
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(saved[f"moon/{PREVIOUS}{name}"], p.detach(), rtol=0, atol=0)
    weights = {k: v + 0.01 for k, v in trainer.shared_state().items()}
    trainer.load_global(weights), rebuilt.load_global(weights)
    alive, again = trainer.train_round(None, 1).weights, rebuilt.train_round(None, 1).weights
    assert all(torch.equal(alive[k], again[k]) for k in alive), "a rebuilt site's round 2 equals the kept-alive one"
    with pytest.raises(ValueError, match="moon state has no entries"):
        rebuilt.rule.load_state({"nope": torch.zeros(1)})


# ---- spec and refusals ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"moon_mu": -1.0}, r"moon_mu must be >= 0.0, got -1.0"),
        ({"moon_mu": float("nan")}, r"moon_mu must be >= 0.0, got nan"),
        ({"moon_mu": "1"}, r"moon_mu must be >= 0.0, got '1'"),
        ({"moon_tau": 0.0}, r"moon_tau must be > 0.0, got 0.0"),
        ({"moon_tau": -0.5}, r"moon_tau must be > 0.0, got -0.5"),
        ({"moon_tau": True}, r"moon_tau must be > 0.0, got True"),
    ],
)
def test_bad_moon_settings_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_run_spec("moon", model=SMALL, **kwargs)
    with pytest.raises(ValueError, match=match):  # a spec received over the wire
        check_run_spec({**_spec(), **kwargs})


def test_spec_defaults_are_the_paper_s():
    spec = _spec()
    assert (spec["moon_mu"], spec["moon_tau"]) == (1.0, 0.5)
    assert check_run_spec(dict(spec)) == spec


def test_dp_refuses_moon_and_he_may_run_it():
    algo = get_algorithm("moon")
    assert "model-contrastive term" in refusal(algo, _trainer(_spec()).model)
    assert algo.rule == "moon" and not algo.personal and not algo.proximal, "FedAvg's sharing, no FedProx hooks"
    from omnifm.algorithms.rule import server_rule

    assert server_rule(algo) is None, "the server is FedAvg (a weighted mean: HE can aggregate it)"
