"""FedRep (omnifm/algorithms/fedrep.py): head epochs with the body frozen, then body epochs with the head frozen."""

from __future__ import annotations

import pytest
import torch

import omnifm.engine.site as site_module
from omnifm.algorithms import get_algorithm, make_run_spec
from omnifm.algorithms.fedrep import head_steps
from omnifm.engine import SiteTrainer, TrainConfig
from synthetic_cases import SMALL, volumes as _volumes


def _trainer(epochs: int, head_epochs: int = 1) -> SiteTrainer:
    spec = make_run_spec("fedrep", model=SMALL, fedrep_head_epochs=head_epochs)
    config = TrainConfig(local_epochs=epochs, batch_size=4, learning_rate=1e-2)
    return SiteTrainer(spec, config, _volumes(3, 0), _volumes(1, 1), device=torch.device("cpu"))


@pytest.mark.parametrize(
    "head, epochs, steps, expected",
    [(1, 2, 3, 3), (2, 5, 4, 8), (1, 1, 3, 1), (1, 1, 4, 2), (3, 3, 2, 4), (10, 2, 4, 7), (1, 1, 1, 0), (1, 1, 2, 1)],
)
def test_head_steps(head, epochs, steps, expected):
    """k < E: k whole epochs; otherwise floor(E * S * k / (k + 1)), leaving >= 1 body step."""
    assert head_steps(head, epochs, steps) == expected


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names) -> list[bool]:
    return [not torch.equal(before[n], after[n]) for n in names]


def test_head_epochs_leave_the_body_unchanged_and_body_epochs_the_head(monkeypatch):
    trainer = _trainer(epochs=3, head_epochs=1)
    body = trainer.shared_names
    head = sorted(get_algorithm("fedrep").personal_parameter_names(trainer.model))
    assert body and head and set(body).isdisjoint(head)
    snapshots = [_snapshot(trainer.model)]
    real_epoch = site_module.train_epoch

    def recording_epoch(model, *args, **kwargs):
        stats = real_epoch(model, *args, **kwargs)
        snapshots.append(_snapshot(model))
        return stats

    monkeypatch.setattr(site_module, "train_epoch", recording_epoch)
    trainer.train_round(None, 0)
    assert len(snapshots) == 4
    first, second, third = zip(snapshots, snapshots[1:])
    assert not any(_changed(*first, body)) and any(_changed(*first, head)), "epoch 1: head only"
    for epoch in (second, third):
        assert not any(_changed(*epoch, head)) and any(_changed(*epoch, body)), "epochs 2-3: body only"
    assert all(p.requires_grad for p in trainer.model.parameters()), "nothing stays frozen after the round"


def test_one_local_epoch_splits_its_steps_and_adam_skips_the_frozen_part():
    """local_epochs 1, head_epochs 1: the first floor(S / 2) steps give gradients to the head only, the rest
    to the body only; Adam's per-parameter step counts show which steps updated which part."""
    trainer = _trainer(epochs=1)
    optimizer = trainer.optimizers["main"]
    names = [n for n, _ in trainer.model.named_parameters()]
    body = set(trainer.shared_names)
    with_grad: list[set[str]] = []
    real_step = optimizer.step

    def recording_step(*args, **kwargs):
        with_grad.append({n for n, p in trainer.model.named_parameters() if p.grad is not None})
        return real_step(*args, **kwargs)

    optimizer.step = recording_step
    trainer.train_round(None, 0)
    steps = len(trainer.loader)
    n_head = head_steps(1, 1, steps)
    assert steps >= 2 and len(with_grad) == steps
    assert all(g == set(names) - body for g in with_grad[:n_head])
    assert all(g == body for g in with_grad[n_head:])
    counts = {names[int(k.split("/")[2])]: float(v) for k, v in trainer.personal_state().items()
              if k.startswith("optim/main/") and k.endswith("/step")}
    assert {counts[n] for n in body} == {steps - n_head} and {counts[n] for n in set(names) - body} == {n_head}


def test_fedrep_spec_argument_is_validated():
    with pytest.raises(ValueError, match="fedrep_head_epochs must be an int >= 1, got 0"):
        make_run_spec("fedrep", fedrep_head_epochs=0)
