"""The image-fusion task: MI, the content weights, the loss, the network, unpaired cases, the run spec, a site learning."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.tasks import get_task
from omnifm.tasks.image_fusion import FusionTask
from omnifm.tasks.image_fusion.dataset import FusionSliceDataset
from monai.losses import SSIMLoss

from omnifm.tasks.image_fusion.loss import FusionLoss, information_weights
from omnifm.tasks.image_fusion.metrics import BINS, fusion_scores, mutual_information
from omnifm.tasks.image_fusion.network import build_fusion_net

TINY = {"channels": 8, "growth": 4, "dense_layers": 2, "shuffle": 4}


def _entropy_bits(x: torch.Tensor, bins: int = BINS) -> float:
    counts = torch.bincount((x.flatten() * bins).long().clamp_max(bins - 1), minlength=bins).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def test_mutual_information_is_the_entropy_for_one_image_and_about_zero_for_independent_ones():
    torch.manual_seed(0)
    x, y = torch.rand(256, 256), torch.rand(256, 256)
    assert mutual_information(x, x) == pytest.approx(_entropy_bits(x), abs=1e-9)
    assert mutual_information(x, x) == pytest.approx(math.log2(BINS), abs=0.01)  # uniform: 5 bits
    assert mutual_information(x, 1 - x) == pytest.approx(_entropy_bits(x), abs=1e-6)  # any bin-wise bijection
    assert 0 <= mutual_information(x, y) < 0.03  # the plug-in bias of 32 x 32 bins on 65536 pixels is ~0.01 bit
    half = (x > 0.5).float()  # a two-valued image: exactly 1 bit shared with itself
    assert mutual_information(half, half) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one shape"):
        mutual_information(x, y[:10])


def _sharp_and_smooth(batch: int = 4, size: int = 32) -> torch.Tensor:
    """(B, 2, H, W): source A a smooth ramp, source B a checkerboard (far more gradient energy)."""
    ramp = torch.linspace(0, 1, size).view(1, size).expand(size, size)
    checker = ((torch.arange(size).view(-1, 1) // 4 + torch.arange(size).view(1, -1) // 4) % 2).float()
    return torch.stack([ramp, checker]).expand(batch, 2, size, size).clone()


def test_the_loss_weights_favour_the_source_with_more_gradient_energy_and_the_loss_follows():
    sources = _sharp_and_smooth()
    weights = information_weights(sources)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4)) and bool((weights[:, 1] > 0.9).all())
    flat = information_weights(sources, temperature=1e6)
    assert torch.allclose(flat, torch.full_like(flat, 0.5), atol=1e-4)  # tau -> inf: equal weights
    assert float(information_weights(sources, 2.0)[0, 1]) < float(weights[0, 1])  # a higher tau evens them out
    swapped = information_weights(sources.flip(1))
    assert torch.allclose(swapped, weights.flip(1))  # the weights follow the content, not the slot
    loss = FusionLoss()
    keeps_b, keeps_a = loss(sources[:, 1:], sources), loss(sources[:, :1], sources)
    assert float(keeps_b) < float(keeps_a)  # keeping the sharper source is what the weights reward


def test_image_weighting_is_u2fusions_formula_and_pixel_weighting_keeps_each_source_where_its_structure_is():
    torch.manual_seed(0)
    sources, fused = torch.rand(3, 2, 32, 32), torch.rand(3, 1, 32, 32)
    w = information_weights(sources, 2.0)
    ssim = SSIMLoss(spatial_dims=2, data_range=1.0, reduction="none")
    expected = sum(w[:, k] * (ssim(fused, sources[:, k:k + 1]).view(-1)
                              + 20 * (fused - sources[:, k:k + 1]).square().mean(dim=(1, 2, 3))) for k in range(2))
    assert float(FusionLoss(20.0, 2.0)(fused, sources)) == pytest.approx(float(expected.mean()), rel=1e-5)
    # A: a smooth background with one sharp lesion on the left; B: a sharp edge on the right only
    a, b = torch.full((1, 1, 32, 32), 0.3), torch.zeros(1, 1, 32, 32)
    a[..., 14:18, 4:8] = 1.0
    b[..., :, 24:] = 1.0
    pair = torch.cat([a, b], dim=1)
    local = information_weights(pair, 1.0, "pixel")
    assert local.shape == (1, 2, 32, 32) and torch.allclose(local.sum(dim=1), torch.ones(1, 32, 32))
    assert float(local[0, 0, 16, 5]) > 0.9 and float(local[0, 1, 16, 24]) > 0.9
    keeps_lesion = pair.amax(dim=1, keepdim=True)  # both structures kept
    loses_lesion = b.clone()
    pixel, image = FusionLoss(20.0, 1.0, "pixel"), FusionLoss(20.0, 1.0, "image")
    assert float(pixel(keeps_lesion, pair)) < float(pixel(loses_lesion, pair))
    with pytest.raises(ValueError, match="weighting"):
        FusionLoss(weighting="voxel")
    assert image.weighting == "image"


def _pair_cases(n: int, seed: int, size: int = 32, depth: int = 4, unpaired: int = 0) -> list[dict[str, np.ndarray]]:
    """Paired cases in the task's slots: A a blurred bright blob (functional), B sharp anatomy (a ring and a bar)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cases = []
    for i in range(n):
        a = np.zeros((size, size, depth), np.float32)
        b = np.zeros((size, size, depth), np.float32)
        label = np.zeros((1, size, size, depth), np.uint8)
        for z in range(depth):
            cy, cx = rng.integers(10, size - 10, 2)
            a[..., z] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
            r = np.hypot(yy - size / 2, xx - size / 2)
            b[..., z] = 0.4 * (r < size / 2 - 3) + 0.6 * ((r > size / 2 - 6) & (r < size / 2 - 3))
            row = rng.integers(6, size - 8)
            b[row:row + 2, 6:size - 6, z] += 0.3
            label[0, cy - 2:cy + 2, cx - 2:cx + 2, z] = 1
        present = np.array([1, 0] if i < unpaired else [1, 1], np.uint8)
        image = np.stack([a, b]) * present[:, None, None, None]
        cases.append({"image": image, "present": present, "label": label})
    return cases


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_fusion_net(TINY, {"value_classes": 5})
    data = FusionSliceDataset(_pair_cases(2, 0), 0.05)
    batch = torch.stack([data[i]["image"] for i in range(len(data))])
    loss_fn, optimizer = FusionLoss(), torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = loss_fn(model(batch).logits, batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_output_is_a_unit_range_image_that_depends_on_both_sources():
    torch.manual_seed(0)
    model = build_fusion_net(TINY, {"value_classes": 5}).eval()
    x = torch.rand(3, 2, 16, 16)
    with torch.no_grad():
        fused = model(x).logits
        assert fused.shape == (3, 1, 16, 16) and fused.min() >= 0 and fused.max() <= 1
        r = model.bottleneck_features(x)
        for k in range(2):  # the shared features read each source, and so does the output
            changed = x.clone()
            changed[:, k] = torch.rand(3, 16, 16)
            assert float((model.bottleneck_features(changed) - r).abs().mean()) > 1e-3
            assert float((model(changed).logits - fused).abs().mean()) > 1e-3
    with pytest.raises(ValueError, match="both sources"):
        model.network(torch.rand(2, 1, 16, 16))


def test_the_reconstruction_head_is_personal_and_every_parameter_learns():
    model = build_fusion_net(TINY, {"value_classes": 5})
    assert {n for n in model.personal_parameter_names() if n.startswith("network.")} == {
        n for n, _ in model.named_parameters() if n.startswith("network.head.")
    }
    x = torch.rand(4, 2, 16, 16)
    out = model(x, prototypes=torch.randn(4, 2, 32), values=torch.rand(4, 2, model.value_dim) + 0.1)
    FusionLoss()(out.logits, x).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient: {silent}"


def test_a_case_with_a_masked_slot_is_left_out_and_counted(caplog):
    cases = _pair_cases(3, 0, unpaired=1)
    with caplog.at_level(logging.WARNING):
        data = FusionSliceDataset(cases, 0.05, site="site-9")
    assert data.unpaired == 1 and len(data) == 2 * 4  # two paired cases of four slices
    assert "site-9: 1 of 3 training case(s) lack one of the two fusion sources" in caplog.text
    with pytest.raises(ValueError, match="no paired case"):
        FusionSliceDataset(cases[:1], 0.05)
    task = FusionTask()
    model = build_fusion_net(TINY, {"value_classes": 5}).eval()
    assert task.case_inputs(model, cases[0]).shape[0] == 0
    preds = [task.reduce(model, model(task.case_inputs(model, c)).logits if i else torch.zeros(0), c)
             for i, c in enumerate(cases)]
    scores = task.score(preds, cases)
    assert scores["cases"] == 2 and scores["unpaired"] == 1
    assert "unpaired" not in task.metric_names(scores) and "cases" not in task.metric_names(scores)
    assert "(1 unpaired left out)" in task.describe(scores)


def test_the_scores_hold_each_source_the_baselines_and_a_copy_scores_perfectly_on_its_source():
    task = FusionTask()
    case = _pair_cases(1, 0)[0]
    sources = task.sources(case)
    copy_b = task.score([sources[:, 1:]], [case])
    assert copy_b["ssim_b"] == pytest.approx(1.0) and copy_b["l1_b"] == 0.0
    assert copy_b["mi_b"] == pytest.approx(_entropy_bits(sources[:, 1]), abs=1e-6) and copy_b["ssim_a"] < 1
    avg = task.score([sources.mean(dim=1, keepdim=True)], [case])
    assert avg["ssim"] == pytest.approx(avg["ssim_avg"]) and avg["mi"] == pytest.approx(avg["mi_avg"])
    assert avg["l1"] == pytest.approx(avg["l1_max"])  # any fusion between the sources has the same mean L1
    weights = information_weights(sources, task.temperature)
    assert bool((weights[:, 1] > weights[:, 0]).all())  # the sharp anatomy carries more gradient energy
    direct = fusion_scores(sources[:, 1:], sources, weights)
    assert direct["ssim_w"] == pytest.approx(copy_b["ssim_w"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "image_fusion", "colour": 1}, "unknown image_fusion task keys"),
        ({"kind": "image_fusion", "temperature": 0}, "temperature"),
        ({"kind": "image_fusion", "weighting": "voxel"}, "weighting"),
        ({"kind": "image_fusion", "inputs": {"a": ["ct"], "b": ["t1"], "c": ["pet"]}}, "two input slots"),
        ({"kind": "image_fusion", "inputs": {"a": ["ct"], "b": ["ct"]}}, "repeated"),
    ],
)
def test_bad_task_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        get_task(spec)


def test_task_round_trips_through_the_run_spec():
    task = {"kind": "image_fusion", "inputs": {"pet": ["pet"], "mri": ["t2"]}, "temperature": 3.0, "weighting": "pixel"}
    spec = make_run_spec("omnifm", task=task, model=TINY)
    expected = FusionTask(inputs=(("pet", ("pet",)), ("mri", ("t2",))), temperature=3.0, weighting="pixel")
    assert get_task(spec["task"]) == expected and get_task(spec["task"]).loss().weighting == "pixel"
    assert get_task(get_task(spec["task"]).to_dict()) == get_task(spec["task"])
    assert spec["model"]["out_channels"] == 1 and spec["model"]["in_channels"] == 2
    with pytest.raises(ValueError, match="in_channels"):
        make_run_spec("fedavg", task={"kind": "image_fusion"}, model={**TINY, "in_channels": 3})


@pytest.mark.parametrize("weighting", ["image", "pixel"])
def test_a_site_learns_to_beat_the_average_on_the_weighted_ssim(weighting):
    torch.manual_seed(0)
    spec = make_run_spec("fedavg", task={"kind": "image_fusion", "weighting": weighting}, model=TINY)
    config = TrainConfig(local_epochs=8, batch_size=8, learning_rate=3e-3, lr_schedule="constant")
    trainer = SiteTrainer(spec, config, _pair_cases(4, 0), _pair_cases(2, 1), device=torch.device("cpu"))
    before = trainer.evaluate(None)
    for round_num in range(2):
        trainer.train_round(None, round_num, {}, 2)
    after = trainer.evaluate(None)
    assert before["ssim_w"] == pytest.approx(before["ssim_w_avg"], abs=0.02)  # untrained: about the average
    assert after["ssim_w"] > after["ssim_w_avg"] + 0.02 and after["ssim_w"] > after["ssim_w_max"], (before, after)
    assert after["ssim_b"] > before["ssim_b"]  # it keeps more of the source with more structure


def test_the_picture_is_a_png_grid():
    pytest.importorskip("matplotlib")
    task = FusionTask()
    cases = _pair_cases(2, 0, unpaired=1)
    png = task.figure(cases, lambda case: task.sources(case).mean(dim=1, keepdim=True), "site-1")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert task.figure(cases[:1], lambda case: None) is None  # no paired case: no picture
