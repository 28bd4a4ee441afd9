"""Tests of the synthetic multi-modality phantom."""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest

from omnifm.data.phantom import (
    MODALITIES,
    TUMOUR_TISSUES,
    Tissue,
    make_phantom_tissues,
    make_phantom_volume,
    modality_for_site,
    write_phantom_site,
)

SHAPE = (64, 64, 24)


def _tumour_seeds(count: int) -> list[int]:
    """The first ``count`` seeds whose phantom has a tumour of a useful size."""
    seeds = []
    for seed in range(100):
        tissues = make_phantom_tissues(np.random.default_rng(seed), SHAPE)
        if np.isin(tissues, TUMOUR_TISSUES).sum() >= 50:
            seeds.append(seed)
        if len(seeds) == count:
            return seeds
    raise AssertionError("too few tumour-bearing phantoms")


SEEDS = _tumour_seeds(4)


@lru_cache(maxsize=None)
def _case(modality: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cached (image, label, tissue map) of one phantom case; callers must not modify them."""
    image, label = make_phantom_volume(modality, np.random.default_rng(seed), SHAPE)
    tissues = make_phantom_tissues(np.random.default_rng(seed), SHAPE)
    return image, label, tissues


def _mean(image: np.ndarray, tissues: np.ndarray, *codes: Tissue) -> float:
    return float(image[np.isin(tissues, codes)].mean())


# ------------------------------------------------------------------ site -> modality


@pytest.mark.parametrize(("site", "modality"), [(0, "t1"), (1, "t2"), (2, "ct"), (3, "flair"), (5, "t1ce"), (6, "t1"), (13, "t2")])
def test_modality_for_site_cycles(site: int, modality: str) -> None:
    assert modality_for_site(site) == modality


@pytest.mark.parametrize("site", [-1, 1.5, True, "0"])
def test_modality_for_site_rejects_bad_index(site: object) -> None:
    with pytest.raises(ValueError, match="site_index"):
        modality_for_site(site)  # type: ignore[arg-type]


# ------------------------------------------------------------------ volumes


def test_volume_dtypes_shapes_and_background() -> None:
    image, label, tissues = _case("t1", SEEDS[0])
    assert image.shape == label.shape == SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    assert np.all(image[tissues == Tissue.BACKGROUND] == 0)
    assert np.all(image[tissues != Tissue.BACKGROUND] >= 0)
    assert np.count_nonzero(image) > 0.9 * np.count_nonzero(tissues)


def test_label_is_the_tumour_of_the_tissue_map() -> None:
    _, label, tissues = _case("flair", SEEDS[1])
    np.testing.assert_array_equal(label, np.isin(tissues, TUMOUR_TISSUES))


def test_tumour_lies_inside_the_brain() -> None:
    for seed in SEEDS:
        tissues = _case("t1", seed)[2]
        tumour = np.isin(tissues, TUMOUR_TISSUES)
        # no tumour voxel touches the skull (6-neighbourhood)
        skull = tissues == Tissue.SKULL
        near_skull = skull.copy()
        for axis in range(3):
            near_skull |= np.roll(skull, 1, axis) | np.roll(skull, -1, axis)
        assert not np.any(tumour & near_skull)


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_same_volume_different_seed_differs(modality: str) -> None:
    a_img, a_lab = make_phantom_volume(modality, np.random.default_rng(7), SHAPE)
    b_img, b_lab = make_phantom_volume(modality, np.random.default_rng(7), SHAPE)
    c_img, _ = make_phantom_volume(modality, np.random.default_rng(8), SHAPE)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_anatomy_varies_between_cases() -> None:
    tumours = [_case("t1", s)[1].astype(bool) for s in SEEDS]
    sizes = [int(t.sum()) for t in tumours]
    centroids = np.array([np.argwhere(t).mean(axis=0) for t in tumours])
    assert len(set(sizes)) > 1
    assert centroids.std(axis=0).max() > 2.0


def test_about_fifteen_percent_of_cases_are_tumour_free() -> None:
    labels = [np.isin(make_phantom_tissues(np.random.default_rng(1000 + i), SHAPE), TUMOUR_TISSUES) for i in range(40)]
    n_free = sum(not lab.any() for lab in labels)
    assert 2 <= n_free <= 12, n_free


# ------------------------------------------------------------------ contrast


def test_tumour_vs_white_matter_sign_flips_between_t1_and_t2() -> None:
    for seed in SEEDS:
        t1, _, tissues = _case("t1", seed)
        t2, _, _ = _case("t2", seed)
        wm = _mean(t1, tissues, Tissue.WHITE_MATTER)
        assert _mean(t1, tissues, *TUMOUR_TISSUES) < 0.8 * wm
        assert _mean(t2, tissues, *TUMOUR_TISSUES) > 1.2 * _mean(t2, tissues, Tissue.WHITE_MATTER)


# (modality, brighter tissues, darker tissues): mean(brighter) > ratio * mean(darker)
CONTRAST_TABLE = [
    ("t1", (Tissue.WHITE_MATTER,), (Tissue.GREY_MATTER,), 1.2),
    ("t1", (Tissue.GREY_MATTER,), (Tissue.CSF,), 1.2),
    ("t2", (Tissue.CSF,), (Tissue.WHITE_MATTER,), 1.2),
    ("t2", (Tissue.GREY_MATTER,), (Tissue.WHITE_MATTER,), 1.1),
    ("flair", (Tissue.GREY_MATTER,), (Tissue.CSF,), 1.5),  # CSF suppressed
    ("flair", TUMOUR_TISSUES, (Tissue.WHITE_MATTER,), 1.3),
    ("ct", (Tissue.SKULL,), (Tissue.GREY_MATTER, Tissue.WHITE_MATTER), 1.5),
    ("ct", TUMOUR_TISSUES, (Tissue.WHITE_MATTER,), 1.0),  # slightly hyperdense
    ("pet", TUMOUR_TISSUES, (Tissue.GREY_MATTER,), 1.3),  # high uptake
    ("pet", (Tissue.GREY_MATTER,), (Tissue.WHITE_MATTER,), 1.0),
    ("t1ce", (Tissue.TUMOUR_RIM,), (Tissue.WHITE_MATTER,), 1.1),  # enhancing rim
    ("t1ce", (Tissue.TUMOUR_RIM,), (Tissue.TUMOUR_CORE,), 1.1),
]


@pytest.mark.parametrize(("modality", "bright", "dark", "ratio"), CONTRAST_TABLE)
def test_modality_contrast(modality: str, bright: tuple, dark: tuple, ratio: float) -> None:
    for seed in SEEDS:
        image, _, tissues = _case(modality, seed)
        assert _mean(image, tissues, *bright) > ratio * _mean(image, tissues, *dark), seed


def test_ct_is_in_shifted_hounsfield_units() -> None:
    image, _, tissues = _case("ct", SEEDS[0])
    brain = _mean(image, tissues, Tissue.GREY_MATTER, Tissue.WHITE_MATTER)
    assert 1024 < brain < 1024 + 80
    assert _mean(image, tissues, Tissue.SKULL) > 1024 + 500


def _high_frequency_fraction(image: np.ndarray, tissues: np.ndarray) -> float:
    """Norm of the image minus its 3x3x3 box average, relative to the image norm, in the head."""
    padded = np.pad(image.astype(np.float64), 1, mode="edge")
    box = sum(
        padded[1 + i : 1 + i + image.shape[0], 1 + j : 1 + j + image.shape[1], 1 + k : 1 + k + image.shape[2]]
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
        for k in (-1, 0, 1)
    ) / 27.0
    head = tissues != Tissue.BACKGROUND
    return float(np.linalg.norm((image - box)[head]) / np.linalg.norm(image[head]))


@pytest.mark.parametrize("mr", ["t1", "t2", "flair", "t1ce"])
def test_pet_is_blurrier_than_mr(mr: str) -> None:
    pet, _, tissues = _case("pet", SEEDS[0])
    image, _, _ = _case(mr, SEEDS[0])
    assert _high_frequency_fraction(pet, tissues) < 0.5 * _high_frequency_fraction(image, tissues)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modality": "mri"}, "modality"),
        ({"rng": 42}, "rng"),
        ({"shape": (64, 64)}, "shape"),
        ({"shape": (64, 64, 4)}, "shape"),
    ],
)
def test_make_phantom_volume_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"modality": "t1", "rng": np.random.default_rng(0), "shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_phantom_volume(**args)


# ------------------------------------------------------------------ writing a site


def test_write_phantom_site_writes_nifti_datalist(tmp_path) -> None:
    start = time.perf_counter()
    datalist = write_phantom_site(tmp_path / "site", "t2", num_cases=20, seed=3)
    assert time.perf_counter() - start < 5.0
    assert len(datalist) == 20
    assert os.path.basename(datalist[0]["image"]) == "case_000_image.nii.gz"
    assert os.path.basename(datalist[19]["label"]) == "case_019_label.nii.gz"
    img = nib.load(datalist[0]["image"])
    lab = nib.load(datalist[0]["label"])
    assert img.shape == lab.shape == SHAPE
    np.testing.assert_allclose(img.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert lab.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1}
    manifest = json.loads((tmp_path / "site" / "phantom_manifest.json").read_text())
    assert manifest["modality"] == "t2" and manifest["num_cases"] == 20 and manifest["seed"] == 3


def test_write_phantom_site_reuses_existing_files(tmp_path) -> None:
    first = write_phantom_site(tmp_path, "ct", num_cases=3, seed=1)
    mtimes = [os.stat(p).st_mtime_ns for case in first for p in case.values()]
    time.sleep(0.02)
    second = write_phantom_site(tmp_path, "ct", num_cases=3, seed=1)
    assert second == first
    assert [os.stat(p).st_mtime_ns for case in second for p in case.values()] == mtimes


def test_write_phantom_site_regenerates_on_change_or_missing_file(tmp_path) -> None:
    first = write_phantom_site(tmp_path, "ct", num_cases=2, seed=1)
    before = np.asarray(nib.load(first[0]["image"]).dataobj)
    write_phantom_site(tmp_path, "ct", num_cases=2, seed=2)
    assert not np.array_equal(before, np.asarray(nib.load(first[0]["image"]).dataobj))
    os.remove(first[1]["label"])
    write_phantom_site(tmp_path, "ct", num_cases=2, seed=2)
    assert os.path.isfile(first[1]["label"])


def test_site_cases_do_not_depend_on_num_cases(tmp_path) -> None:
    small = write_phantom_site(tmp_path / "a", "pet", num_cases=1, seed=5)
    large = write_phantom_site(tmp_path / "b", "pet", num_cases=2, seed=5)
    a = np.asarray(nib.load(small[0]["image"]).dataobj)
    b = np.asarray(nib.load(large[0]["image"]).dataobj)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modality": "xray"}, "modality"),
        ({"num_cases": 0}, "num_cases"),
        ({"seed": -1}, "seed"),
        ({"shape": (64, 64, 0)}, "shape"),
        ({"spacing": (1.0, 1.0, 0.0)}, "spacing"),
        ({"spacing": (1.0, float("nan"), 2.0)}, "spacing"),
        ({"spacing": (1.0, "1", 2.0)}, "spacing"),
    ],
)
def test_write_phantom_site_rejects_bad_arguments(tmp_path, kwargs: dict, match: str) -> None:
    args = {"out_dir": tmp_path, "modality": "t1", "num_cases": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        write_phantom_site(**args)
    assert not any(tmp_path.iterdir())
