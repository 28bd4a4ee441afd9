from __future__ import annotations

import pytest
import torch

from omnifm.modules import PrefixSuffixPrompt


@pytest.mark.parametrize(
    "batch,num_tokens,prefix_len,token_dim,num_suffix",
    [
        (1, 1, 0, 4, 1),
        (2, 7, 3, 8, 4),
        (3, 10, 10, 16, 2),
        (4, 5, 1, 3, 8),
        (2, 16, None, 8, 4),
    ],
)
def test_output_shape_and_layout(batch, num_tokens, prefix_len, token_dim, num_suffix):
    psp = PrefixSuffixPrompt(token_dim, num_suffix_tokens=num_suffix)
    r = torch.randn(batch, num_tokens, token_dim)
    z = None if prefix_len is None else torch.randn(batch, prefix_len, token_dim)
    lp = 0 if z is None else prefix_len
    out = psp(r, z)
    assert out.shape == (batch, lp + num_tokens + num_suffix, token_dim)
    if z is not None:
        assert torch.equal(out[:, :lp], z)
    assert torch.equal(out[:, psp.token_slice(lp, num_tokens)], r)
    expected_suffix = psp.suffix.unsqueeze(0).expand(batch, -1, -1)
    assert torch.equal(out[:, -num_suffix:], expected_suffix)
    assert torch.equal(out[:, psp.suffix_slice(lp, num_tokens)], expected_suffix)


def test_token_slice_values():
    psp = PrefixSuffixPrompt(4, num_suffix_tokens=2)
    assert psp.token_slice(0, 5) == slice(0, 5)
    assert psp.token_slice(3, 5) == slice(3, 8)
    assert psp.suffix_slice(3, 5) == slice(8, 10)


def test_suffix_parameter_name_shape_and_init():
    psp = PrefixSuffixPrompt(64, num_suffix_tokens=32, init_std=0.02)
    assert dict(psp.named_parameters()).keys() == {"suffix"}
    assert psp.suffix.shape == (32, 64)
    assert 0.01 < psp.suffix.std().item() < 0.03
    assert torch.equal(PrefixSuffixPrompt(4, init_std=0.0).suffix, torch.zeros(4, 4))


def test_every_parameter_gets_finite_grad_and_inputs_too():
    psp = PrefixSuffixPrompt(6, num_suffix_tokens=3)
    r = torch.randn(2, 4, 6, requires_grad=True)
    z = torch.randn(2, 2, 6, requires_grad=True)
    out = psp(r, z)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in psp.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(r.grad).all() and torch.isfinite(z.grad).all()
    assert torch.isfinite(out).all()


def test_dtype_follows_tokens():
    psp = PrefixSuffixPrompt(4)
    assert psp(torch.randn(2, 3, 4, dtype=torch.float64)).dtype == torch.float64


def test_fixed_seed_determinism():
    r = torch.randn(2, 5, 8)
    outputs = []
    for _ in range(2):
        torch.manual_seed(11)
        outputs.append(PrefixSuffixPrompt(8, num_suffix_tokens=3)(r))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"token_dim": 0}, "token_dim must be an int >= 1, got 0"),
        ({"token_dim": 2.0}, "token_dim must be an int >= 1, got 2.0"),
        ({"num_suffix_tokens": 0}, "num_suffix_tokens must be an int >= 1, got 0"),
        ({"num_suffix_tokens": -2}, "num_suffix_tokens must be an int >= 1, got -2"),
        ({"init_std": -0.1}, "init_std must be >= 0, got -0.1"),
    ],
)
def test_bad_constructor_args(kwargs, match):
    args = {"token_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        PrefixSuffixPrompt(**args)


@pytest.mark.parametrize(
    "r_shape,z_shape,match",
    [
        ((2, 8), None, r"tokens must have shape \(B, L, 8\), got shape \(2, 8\)"),
        ((2, 3, 4), None, r"got shape \(2, 3, 4\)"),
        ((2, 3, 8), (3, 1, 8), r"prefix must have shape \(2, Lp, 8\), got shape \(3, 1, 8\)"),
        ((2, 3, 8), (2, 1, 5), r"got shape \(2, 1, 5\)"),
        ((2, 3, 8), (2, 8), r"got shape \(2, 8\)"),
    ],
)
def test_bad_forward_inputs(r_shape, z_shape, match):
    psp = PrefixSuffixPrompt(8)
    z = None if z_shape is None else torch.randn(*z_shape)
    with pytest.raises(ValueError, match=match):
        psp(torch.randn(*r_shape), z)


@pytest.mark.parametrize(
    "prefix_len,num_tokens,match",
    [
        (-1, 4, "prefix_len must be an int >= 0, got -1"),
        (0, -3, "num_tokens must be an int >= 0, got -3"),
        (1.5, 2, "prefix_len must be an int >= 0, got 1.5"),
    ],
)
def test_bad_token_slice_args(prefix_len, num_tokens, match):
    with pytest.raises(ValueError, match=match):
        PrefixSuffixPrompt(8).token_slice(prefix_len, num_tokens)
