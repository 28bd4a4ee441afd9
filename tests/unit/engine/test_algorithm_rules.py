"""Site side of each algorithm rule: what is personal, what is uploaded, what a round changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import ALGORITHMS, get_algorithm, initial_global, make_run_spec
from omnifm.algorithms.server import AMPLITUDES, CONTROL_PREFIX
from omnifm.engine import Retriever, SiteTrainer, TrainConfig, train_central
from omnifm.algorithms.scaffold import ControlVariates
from omnifm.knowledge import KnowledgeBank
from synthetic_cases import SMALL, volumes as _volumes

FEDERATED = sorted(name for name, algo in ALGORITHMS.items() if algo.federated)


def _trainer(algorithm: str, epochs: int = 1, lr: float = 1e-3, **spec_args) -> SiteTrainer:
    spec = make_run_spec(algorithm, model=SMALL, num_prototypes=2, **spec_args)
    config = TrainConfig(local_epochs=epochs, batch_size=4, min_prototype_count=2, learning_rate=lr)
    return SiteTrainer(spec, config, _volumes(4, 0), _volumes(2, 1), device=torch.device("cpu"))


def _global_like(trainer: SiteTrainer, value: float) -> dict[str, torch.Tensor]:
    weights, _ = initial_global(trainer.spec)
    return {k: torch.full(v.shape, value) for k, v in weights.items()}


@pytest.mark.parametrize("algorithm", FEDERATED)
def test_a_global_update_never_overwrites_personal_state(algorithm):
    trainer = _trainer(algorithm)
    trainer.train_round(None, 0)  # make personal state non-trivial (Ditto model, SCAFFOLD control, BN stats)
    before = trainer.personal_state()
    trainer.load_global(_global_like(trainer, 0.5))
    torch.testing.assert_close(trainer.personal_state(), before, rtol=0, atol=0)
    assert all(torch.all(v == 0.5) for v in trainer.shared_state().values())


@pytest.mark.parametrize("algorithm", FEDERATED)
def test_uploads_hold_no_personal_parameter(algorithm):
    trainer = _trainer(algorithm)
    result = trainer.train_round(None, 0)
    personal = get_algorithm(algorithm).personal_parameter_names(trainer.model)
    assert personal.isdisjoint(result.weights)
    model_names = {k for k in result.weights if not k.startswith(CONTROL_PREFIX)}
    assert model_names == set(trainer.shared_names)


def test_local_shares_nothing_and_keeps_everything():
    trainer = _trainer("local")
    assert trainer.shared_names == []
    before = trainer.personal_state()
    trainer.load_global({})
    result = trainer.train_round(None, 0)
    assert result.weights == {} and result.n_samples > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.personal_state().items()), "local training happened"


def test_fedbn_network_has_affine_batch_norm_kept_on_the_site():
    trainer = _trainer("fedbn")
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.affine for m in norms)
    personal = set(trainer.personal_state())
    assert {n for n, _ in trainer.model.named_parameters() if ".adn.N." in n} <= personal
    assert any(k.startswith("buffer/") and k.endswith("running_mean") for k in personal), "running stats stay local"
    assert not any(".adn.N." in n for n in trainer.shared_names)
    fedavg_personal = _trainer("fedavg").personal_state()
    assert all(k.startswith("optim/") for k in fedavg_personal), "fedavg's instance norm has no affine parameters"


def test_ditto_personal_model_is_pulled_to_the_received_global_model():
    """lambda large: v stays near w_global; lambda 0: v trains freely. The global model is trained as FedAvg."""
    def drift(lam: float) -> float:
        trainer = _trainer("ditto", epochs=3, lr=1e-2, ditto_lambda=lam)
        start = trainer.shared_state()
        trainer.train_round(None, 0)
        personal = dict(trainer.personal_model.named_parameters())
        return sum(float((personal[k].detach() - v).square().sum()) for k, v in start.items())

    assert drift(100.0) < 0.2 * drift(0.0)


def test_ditto_evaluates_and_keeps_its_personal_model():
    trainer = _trainer("ditto")
    trainer.train_round(None, 0)
    personal = {k for k in trainer.personal_state() if not k.startswith("optim/")}
    assert personal == {f"ditto/{k}" for k in trainer.personal_model.state_dict()}
    assert any(k.startswith("optim/ditto/") for k in trainer.personal_state()), "the personal model's Adam state is kept"
    with torch.no_grad():
        for p in trainer.personal_model.parameters():
            p.zero_()  # a zero network predicts background everywhere
    assert trainer.evaluate(None)["dice"] == pytest.approx(0.0, abs=1e-6)


def test_feddg_uploads_group_means_and_augments_once_a_bank_exists():
    trainer = _trainer("feddg")
    result = trainer.train_round(None, 0)
    amps = result.extras[AMPLITUDES]
    b = int(0.1 * 32)
    assert amps.shape == (2, 1, 2 * b + 1, 2 * b + 1)  # 10 slices, num_prototypes 2, min count 2
    assert trainer.rule.augmenter(trainer, 1, {}) is None, "no augmentation without a bank"
    augment = trainer.rule.augmenter(trainer, 1, {AMPLITUDES: (amps * 3).tolist()})
    image = trainer.dataset[0]["image"][None].repeat(8, 1, 1, 1)
    assert not torch.allclose(augment(image), image)


def test_scaffold_control_variates_by_hand():
    """grad += c - c_i after backward; c_i+ = mean raw gradient; delta = c_i+ - c_i."""
    model = torch.nn.Linear(1, 1, bias=False)
    cv = ControlVariates({"weight": torch.Size([1, 1])})
    cv.server["weight"].fill_(1.0)
    cv.client["weight"].fill_(0.25)
    cv.start_round()
    for grad in (2.0, 4.0):
        model.weight.grad = torch.full((1, 1), grad)
        cv.correct(model)
        assert model.weight.grad.item() == grad + 0.75
    delta = cv.finish_round()
    assert cv.client["weight"].item() == 3.0 and delta["weight"].item() == 2.75


def test_scaffold_uploads_control_deltas_and_restores_its_control():
    trainer = _trainer("scaffold")
    trainer.load_global(_global_like(trainer, 0.0))
    result = trainer.train_round(None, 0)
    deltas = {k: v for k, v in result.weights.items() if k.startswith(CONTROL_PREFIX)}
    assert len(deltas) == len(trainer.shared_names) and any(v.abs().sum() > 0 for v in deltas.values())
    assert all(torch.equal(trainer.rule.control.client[k[len(CONTROL_PREFIX):]], v) for k, v in deltas.items()), \
        "from a zero control, delta c_i is the new control"


def test_mean_retrieval_gives_every_image_the_bank_mean_and_counts_nothing():
    bank = KnowledgeBank(dim=2)
    bank.insert(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    retriever = Retriever(bank, top_k=2, mode="mean")
    out = retriever(torch.randn(3, 2))
    assert out.ids is None and out.prototypes.shape == (3, 1, 2)
    torch.testing.assert_close(out.prototypes[1, 0], torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="retrieval mode must be"):
        Retriever(bank, 2, mode="max")


@pytest.mark.parametrize(
    "algorithm, eca, prompt",
    [("omnifm", True, True), ("omnifm-noeca", False, True), ("omnifm-noprompt", True, False), ("omnifm-noalign", True, True)],
)
def test_ablation_modules(algorithm, eca, prompt):
    trainer = _trainer(algorithm)
    assert (trainer.model.eca is not None, trainer.model.prompt is not None) == (eca, prompt)
    assert ("prompt.suffix" in trainer.personal_state()) == prompt


def test_noalign_has_no_alignment_loss_in_the_objective():
    bank = KnowledgeBank(dim=32)
    bank.insert(torch.nn.functional.normalize(torch.randn(3, 32), dim=1))
    metrics = _trainer("omnifm-noalign").train_round(bank, 0).metrics
    assert metrics["align_loss"] > 0 and metrics["loss"] == pytest.approx(metrics["task_loss"])


def test_central_pools_the_sites_and_is_not_a_federation():
    spec = make_run_spec("central", model=SMALL)
    config = TrainConfig(local_epochs=1, batch_size=4)
    seen = []
    trainer = train_central(spec, config, [_volumes(2, 0), _volumes(2, 5)], rounds=2, on_round=lambda r, t: seen.append(r))
    assert seen == [0, 1] and len(trainer.dataset) == len(_trainer("fedavg").dataset) == 10
    with pytest.raises(ValueError, match="use 'central'"):
        train_central(make_run_spec("fedavg", model=SMALL), config, [_volumes(1, 0)], rounds=1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        train_central(spec, config, [_volumes(1, 0)], rounds=0)


def test_fedper_fusion_has_the_fusion_layer_without_spectral_inputs_and_trains():
    """Control for OmniFM: FedPer + the same fusion transformer layer and suffix prompts, no spectral encoder/ECA/bank."""
    trainer = _trainer("fedper-fusion", lr=1e-2)
    model = trainer.model
    assert model.spectral_encoder is None and model.eca is None
    assert isinstance(model.fusion, torch.nn.TransformerEncoderLayer) and model.prompt is not None
    omnifm_fusion = _trainer("omnifm").model.fusion
    assert [p.shape for p in model.fusion.parameters()] == [p.shape for p in omnifm_fusion.parameters()]
    assert "prompt.suffix" in trainer.personal_state() and "prompt.suffix" not in trainer.shared_names
    assert any(n.startswith("fusion.") for n in trainer.shared_names), "the fusion layer is averaged like OmniFM's"
    before = trainer.shared_state()
    result = trainer.train_round(None, 0)
    assert np.isfinite(result.metrics["loss"]) and result.prototypes.numel() == 0 and result.retrieval_counts == {}
    fusion = [n for n in before if n.startswith("fusion.")]
    assert any(not torch.equal(before[n], result.weights[n]) for n in fusion), "the fusion layer receives gradient"
    initial_suffix = _trainer("fedper-fusion").personal_state()["prompt.suffix"]
    assert not torch.equal(trainer.personal_state()["prompt.suffix"], initial_suffix), "the suffix prompts train"
