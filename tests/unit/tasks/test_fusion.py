"""The CT+MRI fusion classifier: every modality combination runs, an absent modality is masked (never read)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_cases import assert_each_present_slot_reaches, quadrant_cases

from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.engine.diagnostics import ablation_effect
from omnifm.tasks import get_task
from omnifm.tasks.classification.fusion import with_presence
from omnifm.tasks.classification.network import build_fusion_model
from omnifm.tasks.classification.task import CT_MRI_INPUTS

TINY = {"block_inplanes": [4, 8, 8, 16], "heads": 2, "head_grid": 2}
TASK = {"kind": "classification", "inputs": {slot: list(kinds) for slot, kinds in CT_MRI_INPUTS}}
COMBINATIONS = {"ct+mri": (1, 1), "ct only": (1, 0), "mri only": (0, 1)}


def _inputs(present: tuple[int, int], fill: float | None = None, n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, 4, 32, 32) inputs; absent image planes hold ``fill`` noise instead of zeros when given."""
    g = torch.Generator().manual_seed(seed)
    x = with_presence(torch.randn(n, 2, 32, 32, generator=g), torch.tensor(present))
    if fill is not None:
        for s, p in enumerate(present):
            if not p:
                x[:, s] = fill * torch.randn(n, 32, 32, generator=g)
    return x


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_fusion_model(TINY)


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    s = model.spectral_token(x)
    values = torch.rand(x.shape[0], 1, model.value_dim, generator=torch.Generator().manual_seed(1)) + 0.1
    return model(x, prototypes=s[:, None], spectral_token=s, values=values).logits


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_absent_modality_is_masked_not_read(combo, mode):
    """Whatever an absent slot's image plane holds, the whole OmniFM model's output is the same."""
    present = COMBINATIONS[combo]
    model = _model()
    model.train(mode == "train")
    with torch.no_grad():
        zero, noise = _logits(model, _inputs(present)), _logits(model, _inputs(present, fill=5.0))
    assert torch.isfinite(zero).all()
    torch.testing.assert_close(zero, noise, rtol=0, atol=1e-5)


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_every_present_modality_reaches_the_output(combo):
    present = COMBINATIONS[combo]
    model = _model().eval()
    assert_each_present_slot_reaches(lambda x: _logits(model, x), _inputs(present), present,
                                     [f"slot {s}" for s in range(len(present))])


def test_the_absent_slots_encoder_never_runs():
    """No absent image enters the encoder: its batch-norm statistics and gradients stay untouched."""
    model = _model().train()
    ct_encoder = model.network.encoders[0]
    before = ct_encoder.bn1.running_mean.clone()
    loss = _logits(model, _inputs((0, 1))).sum()
    loss.backward()
    torch.testing.assert_close(ct_encoder.bn1.running_mean, before, rtol=0, atol=0)
    assert all(p.grad is None for p in ct_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.network.encoders[1].parameters())


def test_missing_modality_token_is_learned_where_a_key_is_absent():
    """A CT-only batch trains the CT direction's missing-MRI token, and not the MRI direction's."""
    model = _model().train()
    _logits(model, _inputs((1, 0))).sum().backward()
    ct_direction, mri_direction = model.network.fusions
    assert ct_direction.missing.grad is not None and ct_direction.missing.grad.abs().sum() > 0
    assert mri_direction.missing.grad is None


def test_a_mixed_batch_equals_its_samples_one_by_one():
    """Rows with different modality combinations in one batch do not leak into each other (eval mode)."""
    model = _model().eval()
    rows = [_inputs(p, fill=3.0, n=1, seed=i) for i, p in enumerate(COMBINATIONS.values())]
    with torch.no_grad():
        together = model(torch.cat(rows)).logits
        alone = torch.cat([model(r).logits for r in rows])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_a_sample_without_any_modality_is_refused():
    x = _inputs((1, 1))
    x[0, 2:] = 0
    with pytest.raises(ValueError, match="no present modality"):
        _model()(x)


def test_the_model_and_the_inputs_go_together():
    with pytest.raises(ValueError, match="needs the task's \"inputs\""):
        make_run_spec("fedavg", task={"kind": "classification"}, model={"name": "ct_mri_fusion"})
    with pytest.raises(ValueError, match="reads one image"):
        make_run_spec("fedavg", task=TASK, model={})
    with pytest.raises(ValueError, match="unknown classification model"):
        make_run_spec("fedavg", task=TASK, model={"kind": "vit"})
    with pytest.raises(ValueError, match="unknown .* or repeated modalities"):
        get_task({"kind": "classification", "inputs": {"ct": ["ct"], "mri": ["ct", "t1"]}})
    spec = make_run_spec("fedavg", task=TASK, model={"name": "ct_mri_fusion", **TINY})
    assert spec["model"]["kind"] == "ct_mri_fusion" and get_task(spec["task"]).input_slots == CT_MRI_INPUTS


def _cases(n: int, present: tuple[int, int], seed: int) -> list[dict[str, np.ndarray]]:
    """Slot cases (2x24x24x4): a box in a random quadrant, visible in each present slot, absent slots zero."""
    cases = quadrant_cases(n, seed, channels=2)
    for case in cases:
        case["image"][[s for s, p in enumerate(present) if not p]] = 0
        case["present"] = np.array(present, np.uint8)
    return cases


def test_a_site_with_every_combination_learns():
    """Through SiteTrainer (the executor's and the bench's path): paired, MRI-only and CT-only cases in one site."""
    torch.manual_seed(0)
    spec = make_run_spec("omnifm", task=TASK, model={"name": "ct_mri_fusion", **TINY})
    train = [c for i, p in enumerate(COMBINATIONS.values()) for c in _cases(3, p, i)]
    val = [c for i, p in enumerate(COMBINATIONS.values()) for c in _cases(2, p, 10 + i)]
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=3, batch_size=16, learning_rate=1e-2), train, val,
                          device=torch.device("cpu"))
    before = trainer.evaluate(None)["accuracy"]
    for round_num in range(2):
        result = trainer.train_round(None, round_num, {}, 2)
    after = trainer.evaluate(None)["accuracy"]
    assert after > max(before, 0.6), (before, after)
    assert {"ablate_without_ct_accuracy_delta", "ablate_without_mri_accuracy_delta"} <= set(result.diagnostics)
    effect = ablation_effect(trainer.model, val, torch.device("cpu"), None, trainer.task)
    assert set(effect) == {"ablate_without_ct_accuracy_delta", "ablate_without_mri_accuracy_delta"}
    assert all(-1 <= v <= 1 for v in effect.values())


def test_an_ablation_masks_one_slot_of_a_paired_case_only():
    task = get_task(TASK)
    without_ct = task.ablations()["without_ct"]
    (paired,), (ct_only,) = _cases(1, (1, 1), 0), _cases(1, (1, 0), 0)
    ablated = without_ct(paired)
    assert ablated["present"].tolist() == [0, 1] and not ablated["image"][0].any()
    np.testing.assert_array_equal(ablated["image"][1], paired["image"][1])
    assert paired["present"].tolist() == [1, 1], "the original case is untouched"
    assert without_ct(ct_only) is None, "a case with nothing left is not ablated"
    assert get_task({"kind": "classification"}).ablations() == {}
