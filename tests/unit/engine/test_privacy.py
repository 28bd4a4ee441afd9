"""Case-level DP-SGD: accountant values, clipping, noise, budget, refusals, no bank upload."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifm.algorithms import initial_global, make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.engine import privacy
from omnifm.engine.privacy import CaseSampler, DPBudgetExhausted, DPConfig, clip_and_noise, epsilon_spent

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}
DP = {"noise_multiplier": 1.0, "delta": 1e-3, "cases_per_step": 2, "slices_per_case": 2, "noise_seed": 1}


def _volumes(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        label = np.zeros((1, 32, 32, 4), np.uint8)
        label[0, 10:20, 12:22, 1:3] = 1
        image = rng.normal(0, 0.3, (1, 32, 32, 4)).astype(np.float32) + label
        cases.append({"image": image, "label": label})
    return cases


def _trainer(algorithm: str = "fedavg", cases: int = 6, **dp) -> SiteTrainer:
    spec = make_run_spec(algorithm, model=SMALL, num_prototypes=2)
    config = TrainConfig(local_epochs=1, batch_size=4, min_prototype_count=2, dp={**DP, **dp})
    return SiteTrainer(spec, config, _volumes(cases), _volumes(1, 9), device=torch.device("cpu"))


def _closed_form_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Independent reference: RDP of the Poisson-subsampled Gaussian at integer orders (Mironov et al.
    2019, binomial expansion), converted with the bound of Balle et al. 2020 (the one Opacus uses)."""
    best = math.inf
    for a in range(2, 64):
        terms = [math.log(math.comb(a, k)) + (a - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
                 for k in range(a + 1)]
        top = max(terms)
        log_a = top + math.log(sum(math.exp(t - top) for t in terms))
        eps = steps * log_a / (a - 1) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


# ---- accountant ----------------------------------------------------------------------------
@pytest.mark.parametrize("sigma, q, steps, delta", [(1.0, 0.01, 1000, 1e-5), (0.8, 0.25, 40, 1e-3), (2.0, 0.1, 100, 1e-5)])
def test_rdp_epsilon_matches_the_closed_form_reference(sigma, q, steps, delta):
    reference = _closed_form_epsilon(sigma, q, steps, delta)
    eps = epsilon_spent(sigma, q, steps, delta)
    # Opacus also uses fractional orders, so it can only be (slightly) tighter than integer orders alone
    assert 0.98 * reference <= eps <= reference + 1e-9


def test_known_epsilon_value_and_prv_is_tighter():
    assert epsilon_spent(1.0, 0.01, 1000, 1e-5) == pytest.approx(2.1014, abs=1e-3)  # Opacus 1.6 RDP
    assert epsilon_spent(1.0, 0.01, 1000, 1e-5, "prv") < epsilon_spent(1.0, 0.01, 1000, 1e-5)
    assert epsilon_spent(1.0, 0.01, 0, 1e-5) == 0.0
    assert epsilon_spent(1.0, 0.01, 2000, 1e-5) > epsilon_spent(1.0, 0.01, 1000, 1e-5)


def test_target_epsilon_calibrates_sigma_to_spend_the_budget_over_the_job():
    trainer = _trainer(noise_multiplier=None, target_epsilon=4.0)
    weights, _ = initial_global(trainer.spec)
    for round_num in range(3):
        trainer.train_round(None, round_num, {}, num_rounds=3)
    eps = trainer.dp.epsilon()
    assert 3.9 <= eps <= 4.0
    assert trainer.dp.steps == 3 * trainer.dp.steps_per_epoch
    with pytest.raises(DPBudgetExhausted, match="target_epsilon 4.0"):  # a 4th round would overspend
        trainer.train_round(None, 3, {}, num_rounds=3)


def test_a_round_over_budget_is_refused_before_anything_changes():
    trainer = _trainer(target_epsilon=0.5)
    before = {k: v.clone() for k, v in trainer.shared_state().items()}
    with pytest.raises(DPBudgetExhausted, match="budget exhausted"):
        trainer.train_round(None, 0, {}, num_rounds=5)
    assert trainer.dp.steps == 0
    for name, value in trainer.shared_state().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


# ---- clipping and noise --------------------------------------------------------------------
def test_each_case_is_clipped_then_noised_and_divided_by_the_expected_batch():
    big, small = [torch.full((4,), 5.0), torch.zeros(2)], [torch.tensor([0.3, 0, 0, 0]), torch.tensor([0.4, 0])]
    gen = torch.Generator().manual_seed(0)
    out, norms = clip_and_noise([big, small], 1.0, 0.0, 2.0, gen)
    assert norms == pytest.approx([10.0, 0.5])
    torch.testing.assert_close(out[0], (torch.full((4,), 0.5) + torch.tensor([0.3, 0, 0, 0])) / 2)  # 10 -> 1
    torch.testing.assert_close(out[1], torch.tensor([0.4, 0.0]) / 2)  # under the norm: unchanged
    noisy, _ = clip_and_noise([[torch.zeros(20000)]], 1.0, 3.0, 2.0, gen)
    assert noisy[0].std().item() == pytest.approx(1.5, rel=0.03)  # sigma * C / expected batch


def test_a_dp_round_clips_every_case_gradient(monkeypatch):
    seen = []

    def spy(per_case, max_grad_norm, noise_std, expected_batch, generator):
        out, norms = clip_and_noise(per_case, max_grad_norm, noise_std, expected_batch, generator)
        seen.append((len(per_case) - 1, norms[1:], float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in out])))))
        return out, norms

    monkeypatch.setattr(privacy, "clip_and_noise", spy)
    trainer = _trainer(noise_multiplier=1e-6, max_grad_norm=0.01)
    trainer.train_round(None, 0, {}, num_rounds=1)
    assert seen and any(n > 0 for n, _, _ in seen)
    assert max(max(norms, default=0) for _, norms, _ in seen) > 0.01  # clipping was active
    for cases, _, norm in seen:  # the privatised mean: at most (cases * C) / expected batch
        assert norm <= cases * 0.01 / trainer.dp.expected_batch + 1e-4


def test_noise_comes_from_a_secret_seed_unless_fixed():
    a, b = _trainer(noise_seed=None), _trainer(noise_seed=None)
    assert a.dp.noise_seed != b.dp.noise_seed
    assert _trainer(noise_seed=5).dp.noise_seed == 5


# ---- unit of privacy -----------------------------------------------------------------------
def test_a_case_slices_depend_on_that_case_alone():
    volumes = _volumes(4)
    base = CaseSampler(volumes, 0.5, seed=3)
    changed = [dict(v) for v in volumes]
    changed[0] = {"image": volumes[0]["image"], "label": np.zeros_like(volumes[0]["label"])}
    other = CaseSampler(changed, 0.5, seed=3)
    assert base.candidates[1:] == other.candidates[1:]
    gen = torch.Generator().manual_seed(0)
    image, label = base.batch(2, 3, gen)
    assert image.shape == (3, 1, 32, 32) and label.shape == (3, 1, 32, 32)


def test_cases_are_poisson_sampled_at_the_configured_rate():
    sampler = CaseSampler(_volumes(10), 0.3, seed=0)
    gen = torch.Generator().manual_seed(0)
    counts = [len(sampler.sample_cases(0.2, gen)) for _ in range(2000)]
    assert np.mean(counts) == pytest.approx(2.0, rel=0.05)
    assert min(counts) == 0 and max(counts) > 4  # a varying batch, not a fixed one


# ---- what leaves the site ------------------------------------------------------------------
def test_dp_omnifm_uploads_no_bank_entries_and_no_retrieval_counts():
    trainer = _trainer("omnifm")
    result = trainer.train_round(None, 0, {}, num_rounds=2)
    assert result.prototypes.shape[0] == 0 and result.prototype_counts.numel() == 0
    assert result.prototype_values is None and result.retrieval_counts == {}
    assert "token_cos_within" not in result.metrics and "retrieval_own_share" not in result.metrics
    assert not {"loss", "task_loss", "align_loss"} & set(result.metrics)  # training losses stay in the site log
    for key in ("dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_max_grad_norm", "dp_sample_rate"):
        assert key in result.metrics and key in result.diagnostics
    assert result.metrics["dp_epsilon"] == pytest.approx(trainer.dp.epsilon()) and result.metrics["dp_epsilon"] > 0
    assert result.n_samples == trainer.dp.expected_samples(1)  # expected, not the realised count


def test_dp_training_moves_the_weights_and_the_personal_state_holds_the_accountant(tmp_path):
    trainer = _trainer("fedper")
    start = {k: v.clone() for k, v in trainer.shared_state().items()}
    trainer.train_round(None, 0, {}, num_rounds=2)
    assert any(not torch.equal(start[k], v) for k, v in trainer.shared_state().items())
    trainer.save_personal(tmp_path / "p.pt", 0)
    rebuilt = _trainer("fedper")
    assert rebuilt.dp.steps == 0
    rebuilt.load_personal(tmp_path / "p.pt")
    assert rebuilt.dp.steps == trainer.dp.steps and rebuilt.dp.epsilon() == trainer.dp.epsilon()


# ---- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "algorithm, match",
    [("fedbn", "running statistics"), ("feddg", "amplitude spectra"), ("ditto", "personal model without DP"),
     ("moon", "model-contrastive term of the training images")],
)
def test_algorithms_dp_cannot_cover_are_refused_with_the_reason(algorithm, match):
    with pytest.raises(ValueError, match=match):
        _trainer(algorithm)


@pytest.mark.parametrize(
    "dp, match",
    [
        ({"max_grad_norm": 1.0}, "target_epsilon or noise_multiplier"),
        ({"noise_multiplier": 0}, "noise_multiplier must be"),
        ({"noise_multiplier": 1.0, "delta": 0}, "delta must be"),
        ({"noise_multiplier": 1.0, "accountant": "gdp"}, "accountant must be"),
        ({"noise_multiplier": 1.0, "epsilon": 3}, "unknown dp settings"),
        ({"noise_multiplier": 1.0, "cases_per_step": 0}, "cases_per_step"),
    ],
)
def test_bad_dp_settings_name_the_field(dp, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(dp=dp)


def test_delta_must_be_below_one_over_the_number_of_cases():
    with pytest.raises(ValueError, match=r"below 1 / number of training cases = 1/6"):
        _trainer(delta=0.2)


def test_target_epsilon_alone_needs_the_number_of_rounds():
    trainer = _trainer(noise_multiplier=None, target_epsilon=3.0)
    with pytest.raises(ValueError, match="number of rounds"):
        trainer.train_round(None, 0, {}, num_rounds=None)


def test_dp_config_round_trips_through_a_dict():
    config = DPConfig(target_epsilon=3.0, max_grad_norm=0.5)
    assert DPConfig.from_value(config.to_dict()) == config
    assert TrainConfig(dp=config.to_dict()).dp == config
    assert TrainConfig().dp is None


JOBS = Path(__file__).resolve().parents[3] / "jobs"


def test_the_dp_job_is_the_default_job_with_dp_on():
    for name in ("config_fed_server.json",):
        assert json.loads((JOBS / "omnifm_seg_dp/app/config" / name).read_text()) == json.loads(
            (JOBS / "omnifm_seg/app/config" / name).read_text()), f"{name} differs from jobs/omnifm_seg: copy it over"
    dp_client = json.loads((JOBS / "omnifm_seg_dp/app/config/config_fed_client.json").read_text())
    plain = json.loads((JOBS / "omnifm_seg/app/config/config_fed_client.json").read_text())
    args = dp_client["executors"][0]["executor"]["args"]
    dp = DPConfig.from_value(args.pop("dp"))
    assert dp.target_epsilon == 8.0 and dp.noise_seed is None  # a real secret seed in the job
    args.pop("local_epochs")
    plain["executors"][0]["executor"]["args"].pop("local_epochs")
    assert dp_client == plain


# ---- combinations --------------------------------------------------------------------------
def test_dp_combines_with_he_and_int8_but_he_and_int8_stay_refused():
    from omnifm.fl import combinations
    from omnifm.fl.executor import OmniFMExecutor

    dp_site = OmniFMExecutor(dp={"target_epsilon": 3.0})
    assert combinations.mechanisms([dp_site]) == {combinations.DP}
    assert combinations.mechanisms([OmniFMExecutor()]) == set()
    assert combinations.refusal({combinations.DP, combinations.HE}) is None
    assert combinations.refusal({combinations.DP, combinations.INT8}) is None
    assert combinations.refusal({combinations.DP, combinations.HE, combinations.INT8}) == combinations.HE_INT8


def test_a_dp_update_survives_int8_compression_within_the_block_bound():
    """int8 after DP is post-processing: the site's DP weights go through the real codec unchanged in kind."""
    from omnifm.fl.quantize import compress, decompress

    trainer = _trainer("fedavg")
    result = trainer.train_round(None, 0, {}, num_rounds=1)
    weights = {k: v.numpy() for k, v in result.weights.items()}
    data, layout = compress(weights, 256)
    restored = decompress(data, layout)
    for name, value in weights.items():
        scale = np.abs(value).max() / 127 if value.size else 0
        assert np.abs(restored[name] - value).max() <= scale / 2 + 1e-7, name


def test_rolling_back_to_the_previous_personal_file_keeps_the_privacy_spent(tmp_path):
    """After a server crash the site may resume from its previous file; the epsilon spent since must stay."""
    from omnifm.engine.site import previous_personal_path

    trainer = _trainer()
    path = tmp_path / "p.pt"
    trainer.train_round(None, 0)
    trainer.save_personal(path, 0)
    trainer.train_round(None, 1)
    trainer.save_personal(path, 1)
    spent = trainer.dp.steps
    assert spent > 0
    rebuilt = _trainer()
    rebuilt.load_personal(previous_personal_path(path), spent_from=path)
    assert rebuilt.dp.steps == spent, "the rollback un-spent privacy budget"
    plain = _trainer()
    plain.load_personal(previous_personal_path(path))
    assert plain.dp.steps < spent, "without spent_from the previous file's (smaller) count is restored"
