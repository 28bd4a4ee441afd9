from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.knowledge import KnowledgeBank
from synthetic_cases import SMALL, volumes as _volumes


def _trainer(algorithm: str = "omnifm", **cfg) -> SiteTrainer:
    spec = make_run_spec(algorithm, model=SMALL, num_prototypes=2)
    config = TrainConfig(**{"local_epochs": 1, "batch_size": 4, "min_prototype_count": 2, **cfg})
    return SiteTrainer(spec, config, _volumes(4, 0), _volumes(2, 1), device=torch.device("cpu"))


def test_round_returns_only_shared_weights_and_aggregates():
    trainer = _trainer()
    result = trainer.train_round(KnowledgeBank(dim=32))
    assert set(result.weights) == set(trainer.shared_names)
    assert "prompt.suffix" not in result.weights
    assert result.n_samples == len(trainer.loader.dataset) == 10  # 8 tumour slices + round(0.3 * 8 empty)
    assert result.prototypes.shape[1] == 32 and 1 <= result.prototypes.shape[0] <= 2
    assert result.prototype_counts.min() >= 2, "a prototype is never one image's embedding"
    assert all(np.isfinite(v) for v in result.metrics.values())


def test_retrievals_are_counted_against_bank_ids():
    trainer = _trainer()
    bank = KnowledgeBank(dim=32)
    ids = bank.insert(torch.nn.functional.normalize(torch.randn(3, 32), dim=1)).tolist()
    result = trainer.train_round(bank)
    assert set(result.retrieval_counts) <= set(ids)
    assert sum(result.retrieval_counts.values()) == result.n_samples * 2  # top_k = 2 per slice


def test_global_update_never_overwrites_personal_parameters():
    trainer = _trainer()
    personal_before = trainer.personal_state()
    trainer.load_global({k: torch.full_like(v, 0.5) for k, v in trainer.shared_state().items()})
    for name, value in trainer.personal_state().items():
        torch.testing.assert_close(value, personal_before[name])
    assert all(torch.all(v == 0.5) for v in trainer.shared_state().values())


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda w: w.pop(next(iter(w))), "missing"),
        (lambda w: w.update({"prompt.suffix": torch.zeros(4, 32)}), "unexpected"),
        (lambda w: w.update({k: torch.zeros(1) for k in list(w)[:1]}), "has shape"),
    ],
)
def test_mismatched_global_weights_are_refused(mutate, match):
    trainer = _trainer()
    weights = trainer.shared_state()
    mutate(weights)
    with pytest.raises(ValueError, match=match):
        trainer.load_global(weights)


def test_personal_state_survives_a_restart(tmp_path):
    first = _trainer()
    first.train_round(None)
    first.save_personal(tmp_path / "p.pt", round_num=4)
    second = _trainer()
    assert second.load_personal(tmp_path / "p.pt") == 4
    for name, value in second.personal_state().items():
        torch.testing.assert_close(value, first.personal_state()[name])
    assert _trainer().load_personal(tmp_path / "absent.pt") is None


def test_personal_state_of_another_model_is_refused(tmp_path):
    _trainer().save_personal(tmp_path / "p.pt", 0)
    other = SiteTrainer(
        make_run_spec("omnifm", model={"channels": [8, 16, 64], "strides": [2, 2]}),
        TrainConfig(local_epochs=1), _volumes(2, 0), _volumes(1, 1),
    )
    with pytest.raises(ValueError, match="does not match this job's model"):
        other.load_personal(tmp_path / "p.pt")


def test_fedavg_shares_everything_and_uploads_no_prototypes():
    trainer = _trainer("fedavg")
    result = trainer.train_round(None)
    assert set(result.weights) == {n for n, _ in trainer.model.named_parameters()}
    assert result.prototypes.numel() == 0 and result.retrieval_counts == {}


def test_training_reduces_the_loss_and_is_deterministic():
    a, b = _trainer(local_epochs=3), _trainer(local_epochs=3)
    first = a.train_round(None).metrics["loss"]
    b.train_round(None)
    torch.testing.assert_close(a.shared_state(), b.shared_state())
    assert a.train_round(None).metrics["loss"] < first


@pytest.mark.parametrize(
    "kwargs, match",
    [({"local_epochs": 0}, "local_epochs"), ({"batch_size": 0}, "batch_size"), ({"learning_rate": 0.0}, "learning_rate")],
)
def test_bad_train_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.gpu
def test_a_round_runs_on_cuda():
    spec = make_run_spec("omnifm", model=SMALL, num_prototypes=2)
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2),
                          _volumes(4, 0), _volumes(2, 1))
    assert trainer.device.type == "cuda"
    result = trainer.train_round(KnowledgeBank(dim=32))
    assert all(v.device.type == "cpu" for v in result.weights.values()), "results leave the GPU"
    assert np.isfinite(trainer.evaluate(None)["dice"]) or trainer.evaluate(None)["cases"] == 0


def _drift(algorithm: str, **spec_args) -> float:
    spec = make_run_spec(algorithm, model=SMALL, **spec_args)
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=3, batch_size=4, learning_rate=1e-2),
                          _volumes(4, 0), _volumes(2, 1), device=torch.device("cpu"))
    start = trainer.shared_state()
    trainer.train_round(None)
    return sum(float((v - start[k]).square().sum()) for k, v in trainer.shared_state().items())


def test_fedprox_stays_closer_to_the_global_weights_than_fedavg():
    assert _drift("fedprox", prox_mu=10.0) < 0.5 * _drift("fedavg")
    assert _drift("fedprox", prox_mu=0.0) == pytest.approx(_drift("fedavg"), rel=1e-5), "mu = 0 is FedAvg"


def test_fedper_keeps_the_decoder_on_the_site_without_spectral_modules():
    trainer = _trainer("fedper")
    assert trainer.model.spectral_encoder is None and trainer.model.prompt is None
    personal = {k for k in trainer.personal_state() if not k.startswith("optim/")}
    assert personal == trainer.model.personal_parameter_names() and personal
    result = trainer.train_round(None)
    assert personal.isdisjoint(result.weights) and result.prototypes.numel() == 0
