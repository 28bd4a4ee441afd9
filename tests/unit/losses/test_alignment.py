from __future__ import annotations

import pytest
import torch

from omnifm.losses import (
    SpectralProximalAlignmentLoss,
    local_objective,
    spectral_proximal_alignment,
)


@pytest.mark.parametrize("batch,num_protos,dim", [(1, 1, 4), (2, 3, 8), (5, 7, 3), (3, 16, 32)])
@pytest.mark.parametrize("masked", [False, True])
def test_scalar_finite_non_negative(batch, num_protos, dim, masked):
    s, protos = torch.randn(batch, dim), torch.randn(batch, num_protos, dim)
    mask = torch.rand(batch, num_protos) < 0.5 if masked else None
    loss = spectral_proximal_alignment(s, protos, mask)
    assert loss.shape == ()
    assert torch.isfinite(loss) and loss >= 0


def test_zero_when_token_equals_prototype_mean():
    protos = torch.randn(4, 5, 6)
    loss = spectral_proximal_alignment(protos.mean(1), protos)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_hand_computed_value():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    protos = torch.tensor([[[0.0, 0.0], [0.0, 2.0]], [[2.0, 2.0], [4.0, 0.0]]])
    # row 0: mean (0, 1) -> |(1, -1)|^2 = 2 ; row 1: mean (3, 1) -> |(-3, -1)|^2 = 10
    assert spectral_proximal_alignment(s, protos).item() == pytest.approx(6.0)


def test_hand_computed_value_with_mask():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    protos = torch.tensor(
        [[[0.0, 0.0], [0.0, 2.0]], [[2.0, 2.0], [4.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]
    )
    mask = torch.tensor([[False, True], [False, False], [True, True]])
    # row 0: mean (0, 0) -> 1 ; row 1: 10 ; row 2: no valid prototype -> 0 ; mean over B=3
    loss = spectral_proximal_alignment(s, protos, mask)
    assert loss.item() == pytest.approx(11.0 / 3.0)
    assert torch.isfinite(loss)


def test_masked_prototypes_do_not_matter():
    s, protos = torch.randn(3, 4), torch.randn(3, 5, 4)
    mask = torch.tensor([[False, True, False, False, True]] * 3)
    changed = protos.clone()
    changed[mask] = 1e3
    reference = spectral_proximal_alignment(s, protos, mask)
    assert torch.allclose(reference, spectral_proximal_alignment(s, changed, mask))
    assert torch.allclose(reference, spectral_proximal_alignment(s, protos[:, ~mask[0]]))


def test_fully_masked_batch_is_zero_with_finite_grad():
    s = torch.randn(2, 4, requires_grad=True)
    protos = torch.randn(2, 3, 4, requires_grad=True)
    loss = spectral_proximal_alignment(s, protos, torch.ones(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(s.grad).all() and torch.isfinite(protos.grad).all()


def test_empty_prototypes_give_zero_connected_to_graph():
    s = torch.randn(3, 4, requires_grad=True)
    loss = spectral_proximal_alignment(s, torch.zeros(3, 0, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_gradient_matches_closed_form():
    s = torch.randn(4, 3, requires_grad=True)
    protos = torch.randn(4, 2, 3)
    spectral_proximal_alignment(s, protos).backward()
    expected = 2.0 * (s.detach() - protos.mean(1)) / 4
    assert torch.allclose(s.grad, expected, atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.1, 2.5])
def test_loss_module_scales_by_weight(weight):
    s, protos = torch.randn(3, 5), torch.randn(3, 4, 5)
    loss_fn = SpectralProximalAlignmentLoss(weight=weight)
    assert list(loss_fn.parameters()) == []
    expected = weight * spectral_proximal_alignment(s, protos)
    assert torch.allclose(loss_fn(s, protos), expected)


def test_loss_module_grad_reaches_upstream_parameters_deterministically():
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        proj = torch.nn.Linear(6, 4)
        loss = SpectralProximalAlignmentLoss(0.5)(proj(torch.randn(2, 6)), torch.randn(2, 3, 4))
        loss.backward()
        for name, p in proj.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        results.append(loss.detach())
    assert torch.equal(results[0], results[1])


def test_local_objective_value_and_grad():
    task = torch.tensor(1.5, requires_grad=True)
    align = torch.tensor(2.0, requires_grad=True)
    total = local_objective(task, align, lam=0.25)
    assert total.item() == pytest.approx(2.0)
    total.backward()
    assert task.grad.item() == 1.0 and align.grad.item() == 0.25


@pytest.mark.parametrize(
    "s_shape,p_shape,mask,match",
    [
        ((4,), (1, 2, 4), None, r"got shapes \(4,\) and \(1, 2, 4\)"),
        ((2, 4), (2, 4), None, r"got shapes \(2, 4\) and \(2, 4\)"),
        ((2, 4), (3, 2, 4), None, r"got shapes \(2, 4\) and \(3, 2, 4\)"),
        ((2, 4), (2, 2, 5), None, r"got shapes \(2, 4\) and \(2, 2, 5\)"),
        ((2, 4), (2, 3, 4), torch.zeros(2, 2, dtype=torch.bool), r"got shape \(2, 2\)"),
        ((2, 4), (2, 3, 4), torch.zeros(2, 3, dtype=torch.int64), "dtype torch.int64"),
    ],
)
def test_bad_shapes(s_shape, p_shape, mask, match):
    with pytest.raises(ValueError, match=match):
        spectral_proximal_alignment(torch.randn(*s_shape), torch.randn(*p_shape), mask)


@pytest.mark.parametrize("value", [-0.1, -5.0, float("nan")])
def test_negative_weight_and_lambda_rejected(value):
    with pytest.raises(ValueError, match=f"weight must be >= 0, got {value}"):
        SpectralProximalAlignmentLoss(weight=value)
    with pytest.raises(ValueError, match=f"lam must be >= 0, got {value}"):
        local_objective(torch.tensor(1.0), torch.tensor(1.0), lam=value)
