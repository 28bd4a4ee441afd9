"""The classification task: its labels, skew, mirroring, metrics and network do what they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthetic_cases import quadrant_cases as _quadrant_cases

from omnifm.algorithms import make_run_spec
from omnifm.engine import SiteTrainer, TrainConfig
from omnifm.tasks import get_task
from omnifm.tasks.classification import LOCATION_CLASSES, ClsTask, slice_classes
from omnifm.tasks.classification.dataset import MIRRORED, LabelledSliceDataset, skew_fractions
from omnifm.tasks.classification.metrics import class_scores
from omnifm.tasks.classification.network import build_cls_model

TINY = {"block_inplanes": [4, 8, 8, 16]}


def _box(rows: slice, cols: slice, size: int = 20, depth: int = 1) -> np.ndarray:
    label = np.zeros((1, size, size, depth), np.uint8)
    label[0, rows, cols, :] = 2
    return label


@pytest.mark.parametrize(
    "rows, cols, expected",
    [
        (slice(14, 17), slice(14, 17), "right_anterior"),
        (slice(14, 17), slice(2, 5), "right_posterior"),
        (slice(2, 5), slice(14, 17), "left_anterior"),
        (slice(2, 5), slice(2, 5), "left_posterior"),
        (slice(0, 0), slice(0, 0), "no_tumour"),
    ],
)
def test_slice_class_is_the_quadrant_of_the_tumour(rows, cols, expected):
    assert LOCATION_CLASSES[slice_classes(_box(rows, cols))[0]] == expected


@pytest.mark.parametrize(
    "rows, cols, why",
    [(slice(15, 16), slice(15, 16), "smaller than min_area"), (slice(8, 12), slice(14, 17), "on the midline")],
)
def test_ambiguous_slices_get_no_class(rows, cols, why):
    assert slice_classes(_box(rows, cols), min_area=0.005, margin=0.03)[0] == -1, why


def test_mirroring_a_slice_mirrors_its_class():
    rng = np.random.default_rng(0)
    for _ in range(100):
        y, x = rng.integers(0, 17, 2)
        label = _box(slice(y, y + 3), slice(x, x + 3))
        c = slice_classes(label)[0]
        for axis in (0, 1):
            flipped = slice_classes(np.flip(label, axis=1 + axis).copy())[0]
            assert (c == -1 and flipped == -1) or MIRRORED[axis][c] == flipped


def test_the_dataset_serves_four_mirror_images_with_mirrored_classes():
    label = _box(slice(14, 17), slice(14, 17))
    image = label.astype(np.float32)
    data = LabelledSliceDataset([{"image": image, "label": label}], [slice_classes(label)], np.ones(5), mirror=True)
    assert len(data) == 4
    for item in data:
        assert LOCATION_CLASSES[slice_classes(item["image"].numpy().astype(np.uint8)[..., None])[0]] == \
            LOCATION_CLASSES[int(item["label"])]
    assert data.class_counts(5) == [0, 1, 1, 1, 1]


def test_dirichlet_skew_is_per_site_deterministic_and_strong_at_small_alpha():
    assert skew_fractions(5, 0.0, "site-1").tolist() == [1.0] * 5
    a, b = skew_fractions(5, 0.1, "site-1"), skew_fractions(5, 0.1, "site-2")
    assert np.array_equal(a, skew_fractions(5, 0.1, "site-1")) and not np.array_equal(a, b)
    kept = [np.sort(skew_fractions(5, 0.1, f"site-{i}"))[-2] for i in range(20)]
    mild = [np.sort(skew_fractions(5, 0.5, f"site-{i}"))[-2] for i in range(20)]
    assert np.median(kept) < np.median(mild) < 1.0  # alpha 0.1 leaves sites fewer classes than 0.5


def test_scores_match_a_hand_computation():
    probs = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7]])
    scores = class_scores(probs, torch.tensor([0, 1, 0, 2]), ("a", "b", "c"))
    assert scores["accuracy"] == pytest.approx(0.75)
    # F1: a = 2*1/(2*1+0+1) = 2/3, b = 2/(2+1) = 2/3, c = 1
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert scores["acc_a"] == 0.5 and scores["acc_c"] == 1.0
    assert math.isnan(class_scores(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ("a", "b", "c"))["auc"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "classification", "colour": 1}, "unknown classification task keys"),
        ({"kind": "classification", "classes": ["a", "b"]}, "fixed by the location rule"),
        ({"kind": "classification", "class_skew": -1}, "class_skew"),
        ({"kind": "regression"}, "unknown task"),
    ],
)
def test_bad_task_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        get_task(spec)


def test_task_round_trips_through_the_run_spec():
    spec = make_run_spec("fedavg", task={"kind": "classification", "class_skew": 0.5}, model=TINY)
    assert get_task(spec["task"]) == ClsTask(class_skew=0.5) and spec["model"]["out_channels"] == 5
    with pytest.raises(ValueError, match="out_channels"):
        make_run_spec("fedavg", task={"kind": "classification"}, model={**TINY, "out_channels": 3})


def test_instance_norm_replaces_every_batch_norm():
    model = build_cls_model({**TINY, "norm": "instance_affine"})
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_the_head_is_personal_and_every_parameter_learns():
    model = build_cls_model(TINY)
    assert {n for n in model.personal_parameter_names() if "fc" in n} == {"network.fc.weight", "network.fc.bias"}
    x = torch.randn(4, 1, 32, 32)
    out = model(x, prototypes=torch.randn(4, 2, 32), values=torch.rand(4, 2, model.value_dim) + 0.1)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient: {silent}"


def test_retrieved_values_change_the_prediction():
    """The tap is live: what ECA retrieves reaches the classifier's logits."""
    model = build_cls_model(TINY).eval()
    x = torch.randn(4, 1, 32, 32)
    s = model.spectral_token(x)
    with torch.no_grad():
        a = model(x, prototypes=s[:, None], spectral_token=s, values=torch.rand(4, 1, model.value_dim) + 0.1).logits
        b = model(x, prototypes=s[:, None], spectral_token=s, values=torch.rand(4, 1, model.value_dim) + 0.1).logits
    assert float((a - b).abs().mean() / a.abs().mean()) > 1e-3


def test_a_site_learns_the_location_classes():
    torch.manual_seed(0)
    spec = make_run_spec("fedavg", task={"kind": "classification"}, model={**TINY, "head_grid": 2})
    trainer = SiteTrainer(spec, TrainConfig(local_epochs=4, batch_size=16, learning_rate=1e-2), _quadrant_cases(8, 0),
                          _quadrant_cases(6, 1), device=torch.device("cpu"))
    before = trainer.evaluate(None)["accuracy"]
    for round_num in range(2):
        result = trainer.train_round(None, round_num, {}, 2)
    after = trainer.evaluate(None)
    assert after["accuracy"] > max(before, 0.6), (before, after)
    assert result.prototype_values is None or result.prototype_values.shape[1] == trainer.model.value_dim


def test_dp_is_refused_for_classification_with_the_reason():
    spec = make_run_spec("fedavg", task={"kind": "classification"}, model={**TINY, "norm": "instance_affine"})
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-3}
    with pytest.raises(ValueError, match="no case-level DP-SGD sampler"):
        SiteTrainer(spec, TrainConfig(dp=dp), _quadrant_cases(2, 0), _quadrant_cases(1, 1))


def test_label_skew_survives_mirroring_and_never_empties_a_site():
    """Mirroring balances the quadrants; the skew is applied after it, so a site's classes stay skewed."""
    cases = _quadrant_cases(6, 3)
    task = ClsTask(class_skew=0.1)
    counts, total = {}, sum(ClsTask().dataset(cases, keep_empty_fraction=1.0, seed=0).class_counts(5))
    for site in ("site-1", "site-2", "site-3", "site-4"):
        data = task.dataset(cases, keep_empty_fraction=1.0, seed=0, site=site)
        counts[site] = data.class_counts(5)
        top = skew_fractions(5, 0.1, site).argmax()
        assert counts[site][top] == max(counts[site]) and sum(counts[site]) < 0.8 * total, counts[site]
    assert len({tuple(c) for c in counts.values()}) > 1, "sites differ in their classes"
    balanced = ClsTask().dataset(cases, keep_empty_fraction=1.0, seed=0).class_counts(5)
    assert len(set(balanced[1:])) == 1, "without skew the mirrored quadrants are balanced"
