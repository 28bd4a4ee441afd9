from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omnifm.modules import SpectralEncoder, fft_magnitude, low_pass_crop
from omnifm.modules.spectral_encoder import standardize_rows

SHAPE_CASES = [
    # (spatial_dims, batch, channels, spatial)
    (2, 1, 1, (8, 8)),
    (2, 2, 2, (7, 9)),
    (2, 3, 4, (16, 5)),
    (2, 4, 1, (1, 6)),
    (3, 1, 1, (8, 8, 8)),
    (3, 2, 2, (5, 7, 9)),
    (3, 3, 4, (6, 5, 4)),
    (3, 2, 1, (3, 1, 2)),
]


@pytest.mark.parametrize("spatial_dims,batch,channels,spatial", SHAPE_CASES)
@pytest.mark.parametrize("log_scale", [True, False])
def test_fft_magnitude_shape_and_sign(spatial_dims, batch, channels, spatial, log_scale):
    x = torch.randn(batch, channels, *spatial)
    spec = fft_magnitude(x, spatial_dims, log_scale=log_scale)
    assert spec.shape == x.shape
    assert spec.dtype == x.dtype
    assert torch.isfinite(spec).all() and (spec >= 0).all()


@pytest.mark.parametrize("spatial", [(4, 4), (5, 5), (6, 3), (4, 5, 6), (3, 3, 3)])
def test_fft_magnitude_constant_image_energy_at_dc(spatial):
    spatial_dims = len(spatial)
    x = torch.full((1, 1, *spatial), 2.0)
    spec = fft_magnitude(x, spatial_dims, log_scale=False)[0, 0]
    centre = tuple(n // 2 for n in spatial)
    numel = torch.tensor(spatial).prod().item()
    assert spec[centre].item() == pytest.approx(2.0 * numel)
    rest = spec.clone()
    rest[centre] = 0.0
    assert torch.allclose(rest, torch.zeros_like(rest), atol=1e-4)


def test_fft_magnitude_log_scale_is_log1p():
    x = torch.randn(2, 3, 6, 5)
    raw = fft_magnitude(x, 2, log_scale=False)
    assert torch.allclose(fft_magnitude(x, 2, log_scale=True), torch.log1p(raw))


def test_fft_magnitude_half_precision_keeps_dtype():
    x = torch.randn(1, 1, 4, 4).to(torch.bfloat16)
    assert fft_magnitude(x, 2).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "spatial,fraction,expected",
    [
        ((8, 8), 0.25, (2, 2)),
        ((8, 7), 0.5, (4, 4)),
        ((9, 5), 1.0, (9, 5)),
        ((16, 3), 0.01, (1, 1)),
        ((6, 6, 5), 0.5, (3, 3, 2)),
        ((7, 4, 10), 0.3, (2, 1, 3)),
    ],
)
def test_low_pass_crop_shape(spatial, fraction, expected):
    spec = torch.randn(2, 3, *spatial)
    assert low_pass_crop(spec, len(spatial), fraction).shape == (2, 3, *expected)


@pytest.mark.parametrize("spatial", [(8, 8), (7, 7), (6, 9), (4, 5, 7), (5, 5, 5)])
@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.75, 1.0])
def test_low_pass_crop_keeps_dc_at_crop_centre(spatial, fraction):
    spatial_dims = len(spatial)
    spec = fft_magnitude(torch.ones(1, 1, *spatial), spatial_dims, log_scale=False)
    crop = low_pass_crop(spec, spatial_dims, fraction)[0, 0]
    crop_centre = tuple(m // 2 for m in crop.shape)
    assert crop[crop_centre].item() == pytest.approx(spec.max().item())
    assert crop.sum().item() == pytest.approx(spec.sum().item(), rel=1e-4)


@pytest.mark.parametrize("spatial_dims,batch,channels,spatial", SHAPE_CASES)
@pytest.mark.parametrize("embed_dim", [4, 16])
def test_encoder_output_shape_and_unit_norm(spatial_dims, batch, channels, spatial, embed_dim):
    enc = SpectralEncoder(spatial_dims, channels, embed_dim=embed_dim, hidden_dim=8)
    s = enc(torch.randn(batch, channels, *spatial))
    assert s.shape == (batch, embed_dim)
    assert torch.isfinite(s).all()
    assert torch.allclose(s.norm(dim=-1), torch.ones(batch), atol=1e-5)


@pytest.mark.parametrize(
    "spatial_dims,channels,spatial,shift",
    [
        (2, 1, (16, 16), (3, -5)),
        (2, 2, (15, 12), (7, 1)),
        (3, 4, (8, 7, 6), (2, 3, -1)),
        (3, 1, (9, 9, 9), (4, 0, 5)),
    ],
)
def test_encoder_invariant_to_circular_shift(spatial_dims, channels, spatial, shift):
    enc = SpectralEncoder(spatial_dims, channels, embed_dim=8, hidden_dim=8, low_pass_fraction=0.5)
    x = torch.randn(2, channels, *spatial, dtype=torch.float64)
    enc = enc.double()
    rolled = torch.roll(x, shifts=shift, dims=tuple(range(2, 2 + spatial_dims)))
    assert torch.allclose(enc(x), enc(rolled), atol=1e-8)


def test_encoder_distinguishes_different_spectra():
    enc = SpectralEncoder(2, 1, embed_dim=8, hidden_dim=8, low_pass_fraction=1.0)
    smooth = torch.ones(1, 1, 8, 8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]).remainder(2).float()[None, None]
    assert not torch.allclose(enc(smooth), enc(checker))


@pytest.mark.parametrize("spatial_dims,spatial", [(2, (7, 8)), (3, (5, 4, 6))])
def test_encoder_every_parameter_gets_finite_grad(spatial_dims, spatial):
    enc = SpectralEncoder(spatial_dims, 2, embed_dim=6, hidden_dim=5, low_pass_fraction=0.5)
    x = torch.randn(3, 2, *spatial, requires_grad=True)
    (enc(x) * torch.randn(3, 6)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_encoder_no_nan_on_zero_input():
    enc = SpectralEncoder(2, 1, embed_dim=4, hidden_dim=4)
    s = enc(torch.zeros(2, 1, 8, 8))
    assert torch.isfinite(s).all()


@pytest.mark.parametrize("spatial_dims,spatial", [(2, (9, 8)), (3, (4, 5, 6))])
def test_encoder_fixed_seed_determinism(spatial_dims, spatial):
    x = torch.randn(2, 3, *spatial)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        enc = SpectralEncoder(spatial_dims, 3, embed_dim=8, hidden_dim=8)
        outputs.append(enc(x))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3, got 4"),
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3, got 1"),
        ({"in_channels": 0}, "in_channels must be an int >= 1, got 0"),
        ({"in_channels": 2.5}, "in_channels must be an int >= 1, got 2.5"),
        ({"embed_dim": -3}, "embed_dim must be an int >= 1, got -3"),
        ({"hidden_dim": 0}, "hidden_dim must be an int >= 1, got 0"),
        ({"low_pass_fraction": 0.0}, r"low_pass_fraction must be in \(0, 1\], got 0.0"),
        ({"low_pass_fraction": 1.5}, r"low_pass_fraction must be in \(0, 1\], got 1.5"),
    ],
)
def test_encoder_bad_constructor_args(kwargs, match):
    args = {"spatial_dims": 2, "in_channels": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        SpectralEncoder(**args)


@pytest.mark.parametrize(
    "spatial_dims,in_channels,shape,match",
    [
        (2, 1, (1, 8, 8), r"got shape \(1, 8, 8\)"),
        (2, 1, (1, 1, 8, 8, 8), r"got shape \(1, 1, 8, 8, 8\)"),
        (3, 1, (1, 1, 8, 8), r"got shape \(1, 1, 8, 8\)"),
        (2, 3, (2, 1, 8, 8), r"3 channels, got shape \(2, 1, 8, 8\)"),
    ],
)
def test_encoder_bad_input_shape(spatial_dims, in_channels, shape, match):
    enc = SpectralEncoder(spatial_dims, in_channels, embed_dim=4, hidden_dim=4)
    with pytest.raises(ValueError, match=match):
        enc(torch.randn(*shape))


@pytest.mark.parametrize(
    "x,spatial_dims,match",
    [
        (torch.ones(1, 1, 4, 4, dtype=torch.int64), 2, "got dtype torch.int64"),
        (torch.ones(1, 1, 4, 4, dtype=torch.complex64), 2, "got dtype torch.complex64"),
        (torch.ones(1, 1, 4, 4), 5, "spatial_dims must be 2 or 3, got 5"),
        (torch.ones(4, 4), 3, r"at least 3 axes, got shape \(4, 4\)"),
    ],
)
def test_fft_magnitude_bad_args(x, spatial_dims, match):
    with pytest.raises(ValueError, match=match):
        fft_magnitude(x, spatial_dims)


@pytest.mark.parametrize(
    "spatial_dims,fraction,match",
    [
        (2, 0.0, r"low_pass_fraction must be in \(0, 1\], got 0.0"),
        (2, -0.5, r"got -0.5"),
        (2, 1.01, r"got 1.01"),
        (1, 0.5, "spatial_dims must be 2 or 3, got 1"),
    ],
)
def test_low_pass_crop_bad_args(spatial_dims, fraction, match):
    with pytest.raises(ValueError, match=match):
        low_pass_crop(torch.ones(1, 1, 4, 4), spatial_dims, fraction)


def test_token_depends_on_which_frequency_holds_which_magnitude():
    """Permuting the spectral positions (same multiset of values) must change the token."""
    torch.manual_seed(0)
    enc = SpectralEncoder(spatial_dims=2, in_channels=1, embed_dim=16, grid=4, low_pass_fraction=1.0)
    spectrum = torch.rand(1, 1, 4, 4) * 5
    permuted = spectrum.flatten(2)[..., torch.randperm(16)].reshape(1, 1, 4, 4)
    a, b = (enc.mlp(standardize_rows(enc.pool(s).flatten(1))) for s in (spectrum, permuted))
    assert float((F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm()) > 0.1


def _phantom_slices(modality: str) -> torch.Tensor:
    from omnifm.data import volume_slices
    from omnifm.data.normalize import normalize_intensity
    from omnifm.data.phantom import make_phantom_case

    slices = []
    for seed in range(2):
        image, _, _ = make_phantom_case(modality, seed, (48, 48, 12))
        slices.append(volume_slices(normalize_intensity(image[None], modality))[2:10:2])
    return torch.cat(slices)


def test_phantom_tokens_of_three_modalities_are_diverse_at_initialisation():
    torch.manual_seed(0)
    enc = SpectralEncoder(spatial_dims=2, in_channels=1, embed_dim=32)
    with torch.no_grad():
        tokens = torch.cat([enc(_phantom_slices(m)) for m in ("t1ce", "t2", "ct")])
    cos = tokens @ tokens.T
    n = tokens.shape[0]
    mean_cos = float((cos.sum() - cos.diag().sum()) / (n * (n - 1)))
    assert mean_cos < 0.9, f"mean pairwise cosine {mean_cos:.3f}: the tokenizer maps different images to one token"
