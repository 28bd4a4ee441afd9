from __future__ import annotations

import math

import pytest
import torch

from omnifm.modules import EmbeddingCrossAttention


def _reference(eca: EmbeddingCrossAttention, r, s, mask=None):
    """Loop-over-heads transcription of the paper formula, for comparison."""
    heads = []
    for h in range(eca.num_heads):
        rows = slice(h * eca.head_dim, (h + 1) * eca.head_dim)
        q = r @ eca.to_q.weight[rows].T
        k = s @ eca.to_k.weight[rows].T
        v = s @ eca.to_v.weight[rows].T
        scores = q @ k.transpose(1, 2) / math.sqrt(eca.head_dim)
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        heads.append(torch.nan_to_num(scores.softmax(-1)) @ v)
    return torch.cat(heads, dim=-1) @ eca.to_out.weight.T


@pytest.mark.parametrize(
    "batch,num_tokens,num_protos,token_dim,proto_dim,head_dim,num_heads",
    [
        (1, 1, 1, 8, 8, 4, 1),
        (2, 7, 3, 16, 8, 8, 2),
        (3, 10, 5, 12, 32, 4, 3),
        (4, 6, 8, 5, 7, 3, 4),
        (2, 1, 16, 32, 1, 16, 1),
    ],
)
def test_output_shape_and_matches_reference(
    batch, num_tokens, num_protos, token_dim, proto_dim, head_dim, num_heads
):
    eca = EmbeddingCrossAttention(token_dim, proto_dim, head_dim=head_dim, num_heads=num_heads)
    r = torch.randn(batch, num_tokens, token_dim)
    s = torch.randn(batch, num_protos, proto_dim)
    z = eca(r, s)
    assert z.shape == (batch, num_tokens, token_dim)
    assert torch.isfinite(z).all()
    assert torch.allclose(z, _reference(eca, r, s), atol=1e-5)


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_partial_mask_matches_reference_and_ignores_masked_keys(num_heads):
    eca = EmbeddingCrossAttention(8, 6, head_dim=4, num_heads=num_heads)
    r, s = torch.randn(3, 5, 8), torch.randn(3, 4, 6)
    mask = torch.tensor([[False, True, False, True], [False] * 4, [True, True, True, False]])
    z = eca(r, s, mask)
    assert torch.allclose(z, _reference(eca, r, s, mask), atol=1e-5)
    s_changed = s.clone()
    s_changed[mask] = 100.0  # masked prototypes must not influence the output
    assert torch.allclose(eca(r, s_changed, mask), z, atol=1e-5)


def test_fully_masked_row_gives_zero_not_nan_and_finite_grads():
    eca = EmbeddingCrossAttention(8, 6, head_dim=4, num_heads=2)
    r = torch.randn(2, 3, 8, requires_grad=True)
    s = torch.randn(2, 4, 6, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False, True, False, False]])
    z = eca(r, s, mask)
    assert torch.isfinite(z).all()
    assert torch.equal(z[0], torch.zeros_like(z[0]))
    assert z[1].abs().sum() > 0
    z.sum().backward()
    for tensor in (r, s, *eca.parameters()):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    assert torch.equal(s.grad[0], torch.zeros_like(s.grad[0]))


def test_empty_prototype_set_gives_zero():
    eca = EmbeddingCrossAttention(8, 6, head_dim=4)
    z = eca(torch.randn(2, 3, 8), torch.randn(2, 0, 6))
    assert z.shape == (2, 3, 8)
    assert torch.equal(z, torch.zeros_like(z))


@pytest.mark.parametrize("num_heads,head_dim", [(1, 8), (2, 4), (3, 5)])
def test_single_prototype_gives_same_z_for_every_query(num_heads, head_dim):
    eca = EmbeddingCrossAttention(10, 6, head_dim=head_dim, num_heads=num_heads)
    r, s = torch.randn(2, 7, 10), torch.randn(2, 1, 6)
    z = eca(r, s)
    expected = eca.to_out(eca.to_v(s))  # softmax over one key is 1 -> Z = Wo(Wv s)
    assert torch.allclose(z, expected.expand_as(z), atol=1e-6)


def test_every_parameter_gets_finite_grad():
    eca = EmbeddingCrossAttention(12, 6, head_dim=4, num_heads=3, dropout=0.1)
    r, s = torch.randn(2, 5, 12), torch.randn(2, 3, 6)
    (eca(r, s) * torch.randn(2, 5, 12)).sum().backward()
    for name, p in eca.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dropout_inactive_in_eval():
    eca = EmbeddingCrossAttention(8, 8, head_dim=4, dropout=0.5).eval()
    r, s = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    assert torch.equal(eca(r, s), eca(r, s))


def test_fixed_seed_determinism():
    r, s = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(EmbeddingCrossAttention(16, 8, head_dim=4, num_heads=2)(r, s))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"token_dim": 0}, "token_dim must be an int >= 1, got 0"),
        ({"prototype_dim": -1}, "prototype_dim must be an int >= 1, got -1"),
        ({"head_dim": 0}, "head_dim must be an int >= 1, got 0"),
        ({"num_heads": 1.5}, "num_heads must be an int >= 1, got 1.5"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
    ],
)
def test_bad_constructor_args(kwargs, match):
    args = {"token_dim": 8, "prototype_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        EmbeddingCrossAttention(**args)


@pytest.mark.parametrize(
    "r_shape,s_shape,mask,match",
    [
        ((2, 5), (2, 3, 6), None, r"tokens must have shape \(B, L, 8\), got shape \(2, 5\)"),
        ((2, 5, 7), (2, 3, 6), None, r"got shape \(2, 5, 7\)"),
        ((2, 5, 8), (2, 3, 5), None, r"prototypes must have shape \(B, k, 6\), got shape \(2, 3"),
        ((2, 5, 8), (3, 6), None, r"got shape \(3, 6\)"),
        ((2, 5, 8), (3, 3, 6), None, r"batch size, got shapes \(2, 5, 8\) and \(3, 3, 6\)"),
        ((2, 5, 8), (2, 3, 6), torch.zeros(2, 4, dtype=torch.bool), r"got shape \(2, 4\)"),
        ((2, 5, 8), (2, 3, 6), torch.zeros(2, 3), "dtype torch.float32"),
    ],
)
def test_bad_forward_inputs(r_shape, s_shape, mask, match):
    eca = EmbeddingCrossAttention(8, 6, head_dim=4)
    with pytest.raises(ValueError, match=match):
        eca(torch.randn(*r_shape), torch.randn(*s_shape), mask)
