"""The super-resolution task: its degradation, metrics and network do what they claim, and a site learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.tasks import get_task
from omnifm.tasks.super_resolution import SRTask, kspace_lowpass, lowres_grid
from omnifm.tasks.super_resolution.dataset import SRSliceDataset, unit_range
from omnifm.tasks.super_resolution.degrade import band_weights
from omnifm.tasks.super_resolution.metrics import case_psnr_ssim
from omnifm.tasks.super_resolution.network import build_sr_model

TINY = {"channels": 8, "num_blocks": 1, "shuffle": 2}


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_the_lr_image_has_the_lr_grid_and_the_network_input_the_hr_grid(scale):
    x = torch.rand(3, 1, 64, 48)
    assert lowres_grid(x, scale).shape == (3, 1, 64 // scale, 48 // scale)
    assert kspace_lowpass(x, scale).shape == x.shape


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_kspace_truncation_keeps_the_central_band_and_removes_exactly_the_rest(scale):
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    before, after = torch.fft.fft2(x), torch.fft.fft2(kspace_lowpass(x, scale))
    k = torch.fft.fftfreq(32, dtype=torch.float64).abs() * 32
    cutoff = 32 / (2 * scale)
    ky, kx = k[:, None], k[None, :]
    inside, beyond = (ky < cutoff) & (kx < cutoff), (ky > cutoff) | (kx > cutoff)
    assert torch.allclose(after[..., inside], before[..., inside], atol=1e-9)
    assert after[..., beyond].abs().max() < 1e-9
    assert float(band_weights(32, scale).sum()) == 32 / scale  # exactly the central 1/scale per axis


def test_the_lr_grid_samples_the_band_limited_image_at_the_lr_pixel_centres():
    """A low frequency survives truncation; its LR samples are its values at the LR pixel centres (4j + 1.5)."""
    i = torch.arange(32, dtype=torch.float64)
    x = (torch.cos(2 * torch.pi * i / 32)[:, None] * torch.ones(32)[None, :])[None, None]
    lr = lowres_grid(x, 4)
    centres = torch.cos(2 * torch.pi * (4 * torch.arange(8, dtype=torch.float64) + 1.5) / 32)
    assert torch.allclose(lr[0, 0, :, 0], centres, atol=1e-9)


def test_psnr_and_ssim_match_a_hand_computation():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1.0
    pred = target.clone()
    pred[0, 0, 0, 0] = 0.5  # one error of 0.5 in 512 pixels: MSE 0.25 / 512
    psnr, ssim = case_psnr_ssim(pred, target)
    assert psnr == pytest.approx(10 * math.log10(512 / 0.25), abs=1e-3)
    assert case_psnr_ssim(target, target)[1] == pytest.approx(1.0)
    assert 1.0 >= ssim > case_psnr_ssim(kspace_lowpass(target, 2), target)[1] > 0.5  # one pixel vs blurred edges
    # a reconstruction is clipped to [0, 1]: all ones, wrong on the 3/4 of the pixels outside the square
    assert case_psnr_ssim(target + 2.0, target)[0] == pytest.approx(-10 * math.log10(0.75), abs=1e-4)


def _box_cases(n: int, seed: int, size: int = 32) -> list[dict[str, np.ndarray]]:
    """Noise-free cases of 1 x size x size x 4: a bright square and a dim bar at random places (sharp edges)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        image = np.zeros((1, size, size, 4), np.float32)
        label = np.zeros((1, size, size, 4), np.uint8)
        for z in range(4):
            y, x = rng.integers(4, size - 14, 2)
            image[0, y:y + 10, x:x + 10, z] = 1.0
            label[0, y + 3:y + 7, x + 3:x + 7, z] = 2
            r = rng.integers(2, size - 4)
            image[0, r:r + 2, 2:size - 2, z] = 0.5
        cases.append({"image": image, "label": label})
    return cases


def test_samples_are_unit_range_slices_with_their_lr_acquisition_and_value_classes():
    cases = _box_cases(2, 0)
    data = SRSliceDataset(cases, scale=4, min_head_fraction=0.05)
    assert len(data) == 8  # every slice holds more than 5 % "head" (the square)
    item = data[1]
    assert item["label"].min() == 0 and item["label"].max() == 1
    assert torch.allclose(item["image"], kspace_lowpass(item["label"], 4))
    assert set(item["classes"].unique().tolist()) == {0, 1, 3}  # air, tissue, label class 2 -> value class 3
    with pytest.raises(ValueError, match="no slice"):
        SRSliceDataset(cases, 4, min_head_fraction=0.9)
    assert torch.equal(unit_range(np.full((1, 2, 2, 1), 3.0)), torch.zeros(1, 2, 2, 1))


def test_the_tail_is_personal_and_every_parameter_learns():
    model = build_sr_model(TINY, {"value_classes": 5})
    assert {n for n in model.personal_parameter_names() if n.startswith("network.")} == {
        n for n, _ in model.named_parameters() if n.startswith("network.tail.")
    }
    x = torch.rand(4, 1, 16, 16)
    out = model(x, prototypes=torch.randn(4, 2, 32), values=torch.rand(4, 2, model.value_dim) + 0.1)
    (out.logits - torch.rand_like(x)).abs().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient: {silent}"


def test_retrieved_values_change_the_reconstruction():
    """The tap is live: what ECA retrieves reaches the SR output (the part the network adds to its input)."""
    torch.manual_seed(0)
    model = build_sr_model(TINY, {"value_classes": 5}).eval()
    x = torch.rand(4, 1, 16, 16)
    s = model.spectral_token(x)
    with torch.no_grad():
        a, b = (model(x, prototypes=s[:, None], spectral_token=s, values=torch.rand(4, 1, model.value_dim) + 0.1)
                .logits - x for _ in range(2))
        c = model(x, prototypes=torch.randn(4, 1, 32), spectral_token=s).logits - x  # keys only
        d = model(x, prototypes=torch.randn(4, 1, 32), spectral_token=s).logits - x
    assert float((a - b).abs().mean() / a.abs().mean()) > 1e-3
    assert float((c - d).abs().mean() / c.abs().mean()) > 1e-3


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "super_resolution", "scale": 3}, "scale must be one of"),
        ({"kind": "super_resolution", "colour": 1}, "unknown super_resolution task keys"),
        ({"kind": "super_resolution", "min_head_fraction": 2}, "min_head_fraction"),
    ],
)
def test_bad_task_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        get_task(spec)


def test_task_round_trips_through_the_run_spec_and_refuses_a_channel_mismatch():
    spec = make_run_spec("fedavg", task={"kind": "super_resolution", "scale": 8}, model=TINY)
    assert get_task(spec["task"]) == SRTask(scale=8) and spec["model"]["out_channels"] == 1
    with pytest.raises(ValueError, match="out_channels"):
        make_run_spec("fedavg", task={"kind": "super_resolution"}, model={**TINY, "out_channels": 2})


def test_a_site_learns_to_beat_interpolation():
    torch.manual_seed(0)
    spec = make_run_spec("fedavg", task={"kind": "super_resolution", "scale": 2}, model=TINY)
    config = TrainConfig(local_epochs=10, batch_size=8, learning_rate=3e-3, lr_schedule="constant")
    trainer = SiteTrainer(spec, config, _box_cases(4, 0), _box_cases(2, 1), device=torch.device("cpu"))
    before = trainer.evaluate(None)
    for round_num in range(2):
        trainer.train_round(None, round_num, {}, 2)
    after = trainer.evaluate(None)
    assert before["psnr"] < before["psnr_interp"] + 0.1, before  # untrained: about its input
    assert after["psnr"] > after["psnr_interp"] + 0.5 and after["psnr_interp"] == before["psnr_interp"], (before, after)
    assert after["psnr_interp"] > after["psnr_bicubic"]  # the band-limited interpolation is the stronger baseline


def test_dp_is_refused_for_super_resolution_with_the_reason():
    spec = make_run_spec("fedavg", task={"kind": "super_resolution"}, model=TINY)
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-3}
    with pytest.raises(ValueError, match="no case-level DP-SGD sampler"):
        SiteTrainer(spec, TrainConfig(dp=dp), _box_cases(2, 0), _box_cases(1, 1))
