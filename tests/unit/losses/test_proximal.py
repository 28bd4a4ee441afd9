from __future__ import annotations

import pytest
import torch

from omnifm.losses import proximal_term


def test_gradient_is_mu_times_the_distance_to_the_anchor():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    anchor = {"w": torch.tensor([0.0, 1.0, 0.5])}
    proximal_term([("w", w)], anchor, mu=0.3).backward()
    torch.testing.assert_close(w.grad, 0.3 * (w.detach() - anchor["w"]))


def test_value_and_zero_at_the_anchor():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    assert proximal_term([("w", w)], {"w": torch.zeros(2)}, mu=2.0).item() == pytest.approx(25.0)
    assert proximal_term([("w", w)], {"w": w.detach().clone()}, mu=2.0).item() == 0.0


def test_parameters_outside_the_anchor_are_not_pulled():
    shared, personal = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    proximal_term([("shared", shared), ("personal", personal)], {"shared": torch.zeros(2)}, mu=1.0).backward()
    assert personal.grad is None and shared.grad is not None


@pytest.mark.parametrize("mu, match", [(-0.1, "mu"), (float("nan"), "mu")])
def test_bad_mu(mu, match):
    with pytest.raises(ValueError, match=match):
        proximal_term([("w", torch.ones(1))], {"w": torch.ones(1)}, mu)


def test_no_overlap_is_an_error():
    with pytest.raises(ValueError, match="nothing to be proximal to"):
        proximal_term([("w", torch.ones(1))], {"v": torch.ones(1)}, 1.0)
