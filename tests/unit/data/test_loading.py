"""Tests of MONAI volume loading, case splitting and the axial slice dataset."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from omnifm.data.ingest import CaseError
from omnifm.data.loading import SliceDataset, load_volumes, split_cases, volume_slices
from omnifm.data.normalize import FOREGROUND_FRACTION
from omnifm.data.phantom import write_phantom_site

SHAPE = (64, 64, 24)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> list[dict[str, str]]:
    return write_phantom_site(tmp_path_factory.mktemp("site"), "t1", num_cases=4, seed=11, shape=SHAPE)


@pytest.fixture(scope="module")
def volumes(site) -> list[dict[str, np.ndarray]]:
    return load_volumes(site)


def _raw(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


# ------------------------------------------------------------------ load_volumes


def test_load_volumes_types_and_shapes(site, volumes) -> None:
    assert len(volumes) == 4
    for paths, case in zip(site, volumes):
        assert type(case["image"]) is np.ndarray and type(case["label"]) is np.ndarray
        assert case["image"].shape == (1, *SHAPE) and case["image"].dtype == np.float32
        assert case["label"].shape == (1, *SHAPE) and case["label"].dtype == np.uint8
        assert set(np.unique(case["label"])) <= set(np.unique(_raw(paths["label"])))  # raw classes kept


def test_load_volumes_normalises_mr_robustly_over_the_foreground(site, volumes) -> None:
    for paths, case in zip(site, volumes):
        raw = _raw(paths["image"])
        head = raw != 0
        foreground = raw > FOREGROUND_FRACTION * np.percentile(raw[raw > 0], 99)
        image = case["image"][0]
        q25, median, q75 = np.percentile(image[foreground], [25, 50, 75])
        assert abs(median) < 1e-3
        assert (q75 - q25) / 1.349 == pytest.approx(1.0, abs=1e-2)
        assert np.all(image[~head] == 0)


def test_load_volumes_normalisation_follows_each_entry_modality(site) -> None:
    ct = load_volumes([{**site[0], "modality": "ct"}])[0]["image"]
    assert 0 <= ct.min() and ct.max() <= 1
    default_ct = load_volumes([{"image": site[0]["image"], "label": site[0]["label"]}], default_modality="ct")
    np.testing.assert_array_equal(default_ct[0]["image"], ct)
    with pytest.raises(ValueError, match="default_modality"):
        load_volumes(site[:1], default_modality="xray")


def test_load_volumes_preserves_data_without_normalisation(site) -> None:
    case = load_volumes(site[:1], normalize=False)[0]
    np.testing.assert_allclose(case["image"][0], _raw(site[0]["image"]), rtol=1e-6)
    np.testing.assert_array_equal(case["label"][0], _raw(site[0]["label"]))


def test_load_volumes_reorients_to_ras(tmp_path) -> None:
    data = np.arange(8 * 10 * 6, dtype=np.float32).reshape(8, 10, 6) + 1.0
    label = (data > 300).astype(np.uint8)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS: first two axes flipped relative to RAS
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    datalist = [{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}]
    case = load_volumes(datalist, normalize=False)[0]
    np.testing.assert_array_equal(case["image"][0], data[::-1, ::-1, :])
    np.testing.assert_array_equal(case["label"][0], label[::-1, ::-1, :])


def test_load_volumes_binarises_multiclass_labels_on_request(tmp_path) -> None:
    data = np.ones((8, 8, 4), dtype=np.float32)
    label = np.zeros((8, 8, 4), dtype=np.uint8)
    label[1, 1, 1], label[2, 2, 2], label[3, 3, 3] = 1, 2, 4
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "lab.nii.gz")
    datalist = [{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}]
    out = load_volumes(datalist, binarize_labels=True)[0]["label"][0]
    np.testing.assert_array_equal(out, label > 0)
    np.testing.assert_array_equal(load_volumes(datalist)[0]["label"][0], label)  # default: raw values kept
    mapped = load_volumes(datalist, label_values={1: 1, 2: 2, 4: 3})[0]["label"][0]
    np.testing.assert_array_equal(mapped, np.select([label == 1, label == 2, label == 4], [1, 2, 3], 0))
    with pytest.raises(CaseError, match=r"datalist\[0\]: label value 4 is not in label_values"):
        load_volumes(datalist, label_values={1: 1, 2: 1})


def test_load_volumes_rejects_bad_datalist_and_mismatched_label(tmp_path, site) -> None:
    with pytest.raises(ValueError, match="datalist"):
        load_volumes([{"image": site[0]["image"]}])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), tmp_path / "small.nii.gz")
    with pytest.raises(ValueError, match="label shape"):
        load_volumes([{"image": site[0]["image"], "label": str(tmp_path / "small.nii.gz")}])


# ------------------------------------------------------------------ split_cases


@pytest.mark.parametrize(
    ("n", "val_fraction", "n_val"),
    [(1, 0.2, 0), (2, 0.01, 1), (2, 0.99, 1), (5, 0.2, 1), (10, 0.2, 2), (10, 0.5, 5), (20, 0.25, 5), (3, 0.9, 2)],
)
def test_split_cases_sizes_and_partition(n: int, val_fraction: float, n_val: int) -> None:
    train, val, test = split_cases(n, val_fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val and test == []
    assert sorted(train + val) == list(range(n))
    assert train == sorted(train) and val == sorted(val)


@pytest.mark.parametrize(
    ("n", "val_fraction", "test_fraction", "sizes"),
    [(10, 0.2, 0.2, (6, 2, 2)), (20, 0.25, 0.25, (10, 5, 5)), (12, 0.25, 0.01, (8, 3, 1)), (3, 0.3, 0.6, (1, 1, 1)),
     (2, 0.3, 0.6, (1, 1, 0)), (1, 0.3, 0.6, (1, 0, 0))],
)
def test_split_cases_three_way(n, val_fraction, test_fraction, sizes) -> None:
    train, val, test = split_cases(n, val_fraction, seed=3, test_fraction=test_fraction)
    assert (len(train), len(val), len(test)) == sizes
    assert sorted(train + val + test) == list(range(n))


def test_a_test_split_keeps_the_permutation_and_leaves_validation_disjoint() -> None:
    two_way = split_cases(20, 0.25, seed=1)
    train, val, test = split_cases(20, 0.25, seed=1, test_fraction=0.2)
    assert set(test) | set(val) | set(train) == set(range(20)) and not set(test) & set(val)
    assert set(train) <= set(two_way[0]) | set(two_way[1])
    assert split_cases(20, 0.25, seed=1, test_fraction=0.0) == two_way


def test_split_cases_is_deterministic_per_seed() -> None:
    assert split_cases(20, 0.3, seed=4) == split_cases(20, 0.3, seed=4)
    assert split_cases(20, 0.3, seed=4) != split_cases(20, 0.3, seed=5)


@pytest.mark.parametrize(
    ("n", "val_fraction", "seed", "match"),
    [
        (0, 0.2, 0, "n must"),
        (-3, 0.2, 0, "n must"),
        (2.5, 0.2, 0, "n must"),
        (True, 0.2, 0, "n must"),
        (10, 0.0, 0, "val_fraction"),
        (10, 1.0, 0, "val_fraction"),
        (10, -0.1, 0, "val_fraction"),
        (10, math.nan, 0, "val_fraction"),
        (10, "0.2", 0, "val_fraction"),
        (10, 0.2, -1, "seed"),
        (10, 0.2, 1.5, "seed"),
    ],
)
def test_split_cases_rejects_bad_arguments(n, val_fraction, seed, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_cases(n, val_fraction, seed)


@pytest.mark.parametrize(
    ("test_fraction", "match"),
    [(-0.1, "test_fraction"), (1.0, "test_fraction"), (0.8, "val_fraction \\+ test_fraction"), ("0.1", "test_fraction")],
)
def test_split_cases_rejects_bad_test_fraction(test_fraction, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_cases(10, 0.2, 0, test_fraction=test_fraction)


# ------------------------------------------------------------------ SliceDataset


def _toy_volumes() -> list[dict[str, np.ndarray]]:
    """Two (2, 6, 5, D) volumes with tumour in known slices; image value encodes (volume, slice)."""
    volumes = []
    for v, (depth, tumour_slices) in enumerate([(10, (2, 3, 7)), (8, (0, 5))]):
        image = np.zeros((2, 6, 5, depth), dtype=np.float32)
        image[...] = 100 * v + np.arange(depth)
        image[1] *= -1
        label = np.zeros((1, 6, 5, depth), dtype=np.uint8)
        for z in tumour_slices:
            label[0, 2:4, 1:3, z] = 1
        volumes.append({"image": image, "label": label})
    return volumes


def _slice_ids(dataset: SliceDataset) -> list[tuple[int, int]]:
    ids = []
    for i in range(len(dataset)):
        value = int(dataset[i]["image"][0, 0, 0])
        ids.append((value // 100, value % 100))
    return ids


@pytest.mark.parametrize(("fraction", "n_empty_kept"), [(0.0, 0), (0.3, 4), (0.5, 6), (1.0, 13)])
def test_slice_dataset_keeps_all_tumour_and_fraction_of_empty(fraction: float, n_empty_kept: int) -> None:
    dataset = SliceDataset(_toy_volumes(), keep_empty_fraction=fraction, seed=0)
    ids = _slice_ids(dataset)
    tumour = {(0, 2), (0, 3), (0, 7), (1, 0), (1, 5)}
    assert tumour <= set(ids)
    assert len(ids) == len(set(ids)) == dataset.num_slices == len(dataset) == 5 + n_empty_kept
    assert dataset.num_tumour_slices == 5


def test_slice_dataset_items_are_axial_slices() -> None:
    volumes = _toy_volumes()
    dataset = SliceDataset(volumes, keep_empty_fraction=1.0)
    item = dataset[3]  # sorted index: volume 0, slice 3 (a tumour slice)
    assert item["image"].shape == (2, 6, 5) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 6, 5) and item["label"].dtype == torch.float32
    np.testing.assert_array_equal(item["image"].numpy(), volumes[0]["image"][..., 3])
    np.testing.assert_array_equal(item["label"].numpy(), volumes[0]["label"][..., 3])
    assert item["label"].sum() == 4


def test_slice_dataset_selection_is_seeded() -> None:
    same = [_slice_ids(SliceDataset(_toy_volumes(), 0.3, seed=1)) for _ in range(2)]
    assert same[0] == same[1]
    others = {tuple(_slice_ids(SliceDataset(_toy_volumes(), 0.3, seed=s))) for s in range(6)}
    assert len(others) > 1


def test_slice_dataset_on_loaded_phantoms(volumes) -> None:
    dataset = SliceDataset(volumes, keep_empty_fraction=0.3, seed=0)
    per_slice = [case["label"][0].any(axis=(0, 1)) for case in volumes]
    n_tumour = int(sum(flags.sum() for flags in per_slice))
    n_empty = sum(flags.size for flags in per_slice) - n_tumour
    assert n_tumour > 0
    assert dataset.num_tumour_slices == n_tumour
    assert dataset.num_slices == n_tumour + round(0.3 * n_empty)
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["label"].shape == (4, 1, 64, 64)


def test_slice_dataset_counts_any_positive_class_as_tumour() -> None:
    volumes = _toy_volumes()
    volumes[0]["label"][0, 0, 0, 8] = 4  # class 4 only: still a tumour slice
    volumes[1]["label"][volumes[1]["label"] > 0] = 2
    dataset = SliceDataset(volumes, keep_empty_fraction=0.0)
    assert set(_slice_ids(dataset)) == {(0, 2), (0, 3), (0, 7), (0, 8), (1, 0), (1, 5)}
    assert dataset.num_tumour_slices == 6
    assert float(dataset[len(dataset) - 1]["label"].max()) == 2.0  # class indices are kept


@pytest.mark.parametrize(
    ("volumes", "kwargs", "match"),
    [
        ([], {}, "volumes"),
        (None, {"keep_empty_fraction": -0.1}, "keep_empty_fraction"),
        (None, {"keep_empty_fraction": 1.5}, "keep_empty_fraction"),
        (None, {"seed": -2}, "seed"),
        ([{"image": np.zeros((1, 4, 4, 3)), "label": np.zeros((1, 4, 4, 2))}], {}, r"volumes\[0\]"),
        ([{"image": np.zeros((4, 4, 3))}], {}, r"volumes\[0\]"),
    ],
)
def test_slice_dataset_rejects_bad_arguments(volumes, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SliceDataset(_toy_volumes() if volumes is None else volumes, **kwargs)


# ------------------------------------------------------------------ volume_slices


@pytest.mark.parametrize("as_tensor", [False, True])
def test_volume_slices_batches_axial_slices(as_tensor: bool) -> None:
    volume = np.random.default_rng(0).normal(size=(2, 6, 5, 4))
    batch = volume_slices(torch.as_tensor(volume) if as_tensor else volume)
    assert batch.shape == (4, 2, 6, 5) and batch.dtype == torch.float32 and batch.is_contiguous()
    for d in range(4):
        np.testing.assert_allclose(batch[d].numpy(), volume[..., d], rtol=1e-6)


def test_volume_slices_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="volume must have shape"):
        volume_slices(np.zeros((6, 5, 4)))
