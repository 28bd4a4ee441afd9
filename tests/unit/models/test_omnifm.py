from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from omnifm.models import OmniFM
from omnifm.tasks.segmentation.network import build_seg_model

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}


def _model(spatial_dims: int = 2, in_channels: int = 1, **cfg) -> OmniFM:
    return build_seg_model({**SMALL, "spatial_dims": spatial_dims, "in_channels": in_channels}, cfg)


def _values(model: OmniFM, batch: int, k: int, seed: int = 0) -> torch.Tensor:
    """Random class means (every class present, fractions 1/C) in the layout the bank's values use."""
    gen = torch.Generator().manual_seed(seed)
    classes = model.config.value_classes
    means = torch.randn(batch, k, classes * model.token_dim, generator=gen)
    return torch.cat([means, torch.full((batch, k, classes), 1.0 / classes)], dim=-1)


@pytest.mark.parametrize(
    "spatial_dims, in_channels, batch, size, k",
    [
        (2, 1, 2, 32, 2),
        (2, 3, 1, 48, 1),
        (2, 4, 3, 32, 0),
        (3, 1, 2, 16, 2),
        (3, 2, 1, 16, 3),
    ],
)
def test_output_shapes(spatial_dims, in_channels, batch, size, k):
    model = _model(spatial_dims, in_channels)
    x = torch.randn(batch, in_channels, *([size] * spatial_dims))
    out = model(x, prototypes=torch.randn(batch, k, 32))
    assert out.logits.shape == (batch, 2, *([size] * spatial_dims))
    assert out.spectral_token.shape == (batch, 32)
    assert torch.isfinite(out.logits).all()


def test_every_parameter_gets_a_gradient():
    model = _model()
    x = torch.randn(2, 1, 32, 32)
    s = model.spectral_token(x)
    protos = torch.nn.functional.normalize(torch.randn(2, 2, 32), dim=-1)
    out = model(x, prototypes=protos, spectral_token=s, values=_values(model, 2, 2))
    (out.logits.square().mean() + (s - 0.1).square().sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_task_loss_alone_trains_the_spectral_encoder():
    """The local token is an ECA key, so the encoder learns from the task, not only from SPAlign."""
    model = _model()
    model(torch.randn(2, 1, 32, 32)).logits.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.spectral_encoder.parameters())


def test_fixed_seed_is_deterministic():
    x = torch.randn(2, 1, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(_model()(x).logits)
    torch.testing.assert_close(outs[0], outs[1])


def test_all_switches_off_is_the_plain_unet():
    torch.manual_seed(3)
    model = _model(spectral=False, eca=False, prompting=False)
    torch.manual_seed(3)
    unet = UNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.spectral_token is None
    torch.testing.assert_close(out.logits, unet(x))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in unet.parameters())


@pytest.mark.parametrize(
    "switches",
    [
        {"eca": False},
        {"prompting": False},
        {"eca": False, "prompting": False},
    ],
)
def test_each_module_can_be_switched_off(switches):
    model = _model(**switches)
    assert (model.eca is None) == (not switches.get("eca", True))
    assert (model.prompt is None) == (not switches.get("prompting", True))
    assert model(torch.randn(1, 1, 32, 32)).logits.shape == (1, 2, 32, 32)


def test_prototypes_change_the_prediction():
    model = _model().eval()
    x = torch.randn(1, 1, 32, 32)
    a = model(x, prototypes=torch.nn.functional.normalize(torch.randn(1, 2, 32), dim=-1)).logits
    b = model(x, prototypes=torch.nn.functional.normalize(torch.randn(1, 2, 32), dim=-1)).logits
    assert not torch.allclose(a, b)


def test_personal_parameters_are_the_decoder_and_suffix():
    model = _model()
    personal = model.personal_parameter_names()
    assert "prompt.suffix" in personal
    assert "network.model.2.0.conv.weight" in personal  # outermost up-sampling conv
    assert not any(n.startswith(("spectral_encoder", "eca", "fusion")) for n in personal)
    assert "network.model.0.conv.unit0.conv.weight" not in personal  # first encoder conv


@pytest.mark.parametrize(
    "model_args, cfg, match",
    [
        ({"depth": 3}, {}, "unknown model keys"),
        ({}, {"spectral": False, "eca": True}, "eca=True needs spectral=True"),
        ({}, {"no_such_switch": True}, "bad omnifm config"),
    ],
)
def test_bad_arguments(model_args, cfg, match):
    with pytest.raises(ValueError, match=match):
        build_seg_model(model_args, cfg)


def test_values_change_the_prediction_and_absent_classes_are_masked():
    torch.manual_seed(0)
    model = _model().eval()
    x = torch.randn(2, 1, 32, 32)
    protos = torch.nn.functional.normalize(torch.randn(2, 2, 32), dim=-1)
    assert model.value_dim == 2 * (32 + 1)  # 2 classes x (32 features + 1 fraction)
    base = _values(model, 2, 2)
    with torch.no_grad():
        a = model(x, prototypes=protos, values=base).logits
        b = model(x, prototypes=protos, values=_values(model, 2, 2, seed=1)).logits
        absent = base.clone()
        absent[..., -1] = 0.0  # class 1 absent from every entry ...
        moved = absent.clone()
        moved[..., 32:64] += 5.0  # ... so moving its mean must not matter
        c = model(x, prototypes=protos, values=absent).logits
        d = model(x, prototypes=protos, values=moved).logits
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean(), "retrieved values must change the prediction"
    torch.testing.assert_close(c, d)


def test_bottleneck_features_are_the_unconditioned_encoder_output():
    model = _model().eval()
    x = torch.randn(3, 1, 32, 32)
    feats = model.bottleneck_features(x)
    assert feats.shape == (3, 32, 8, 8)
    with torch.no_grad():
        out = model(x, prototypes=torch.nn.functional.normalize(torch.randn(3, 1, 32), dim=-1))
    assert out.logits.shape == (3, 2, 32, 32), "the tap is restored after capturing"
