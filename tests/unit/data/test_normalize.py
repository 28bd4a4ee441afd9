"""Properties of the per-modality intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from omnifm.data.modalities import MODALITIES, MR_SEQUENCES
from omnifm.data.normalize import CT_BRAIN_WINDOW, MR_CLIP, PET_MAX, SPECT_MAX, normalize_intensity


def _head(rng: np.random.Generator, scale: float = 1000.0) -> np.ndarray:
    """(1, 24, 24, 8): zero background, a 'head' of two tissues with noise."""
    image = np.zeros((1, 24, 24, 8), dtype=np.float32)
    image[0, 4:20, 4:20, 1:7] = scale * (0.6 + 0.05 * rng.standard_normal((16, 16, 6)))
    image[0, 8:16, 8:16, 2:6] = scale * (0.9 + 0.05 * rng.standard_normal((8, 8, 4)))
    return image


# ------------------------------------------------------------------ CT


def test_ct_window_maps_to_unit_interval_monotonically() -> None:
    hu = np.linspace(-1100, 2000, 4 * 5 * 6 * 7, dtype=np.float32).reshape(1, 20, 6, 7)
    out = normalize_intensity(hu, "ct")
    assert out.dtype == np.float32 and out.shape == hu.shape
    assert out.min() == 0.0 and out.max() == 1.0
    flat = out.ravel()
    assert np.all(np.diff(flat) >= 0)  # monotonic in HU
    edges = np.array([-10.0, 0.0, 40.0, 80.0, 90.0]).reshape(1, 5, 1, 1)
    np.testing.assert_allclose(normalize_intensity(edges, "ct").ravel(), [0, 0, 0.5, 1, 1])


def test_ct_default_is_the_brain_window() -> None:
    # grey matter ~40 HU and white matter ~30 HU must be far apart on the [0, 1] scale
    assert CT_BRAIN_WINDOW == (0.0, 80.0)
    gm_wm = normalize_intensity(np.array([40.0, 30.0]).reshape(1, 2, 1, 1), "ct").ravel()
    assert gm_wm[0] - gm_wm[1] == pytest.approx(0.125)


def test_ct_custom_window() -> None:
    hu = np.array([-1000.0, 0.0, 1000.0], dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(normalize_intensity(hu, "ct", ct_window=(-1000, 1000)).ravel(), [0.0, 0.5, 1.0])


# ------------------------------------------------------------------ MR


@pytest.mark.parametrize("modality", MR_SEQUENCES)
def test_mr_robust_z_score_over_foreground(modality: str) -> None:
    image = _head(np.random.default_rng(0))
    out = normalize_intensity(image, modality)
    head = image[0] > 0
    assert abs(float(np.median(out[0][head]))) < 0.05
    assert np.all(out[0][~head] == 0)  # zero background stays zero
    assert out.min() >= -MR_CLIP and out.max() <= MR_CLIP


def test_mr_is_robust_to_a_few_extreme_outliers() -> None:
    image = _head(np.random.default_rng(1))
    spiked = image.copy()
    spiked[0, 10, 10, 3] = 1e9
    spiked[0, 5, 5, 2] = 5e7
    spiked[0, 12, 6, 4] = -1e8
    a, b = normalize_intensity(image, "t1"), normalize_intensity(spiked, "t1")
    untouched = spiked == image
    np.testing.assert_allclose(a[untouched], b[untouched], rtol=0.01, atol=0.02)
    assert b.max() == MR_CLIP and b.min() == -MR_CLIP


@pytest.mark.parametrize("modality", ["t1", "flair", "pet", "spect"])
@pytest.mark.parametrize("factor", [0.001, 3.0, 250.0])
def test_mr_pet_and_spect_are_scale_invariant(modality: str, factor: float) -> None:
    image = _head(np.random.default_rng(2))
    np.testing.assert_allclose(
        normalize_intensity(factor * image, modality), normalize_intensity(image, modality), rtol=1e-4, atol=1e-4
    )


def test_mr_without_zero_background_uses_the_bright_foreground() -> None:
    rng = np.random.default_rng(3)
    image = _head(rng) + np.abs(rng.normal(0, 10, size=(1, 24, 24, 8))).astype(np.float32)  # noisy background
    out = normalize_intensity(image, "t2")
    tissue = image[0] > 300
    assert abs(float(np.median(out[0][tissue]))) < 0.1


# ------------------------------------------------------------------ PET


def test_pet_uptake_ratio() -> None:
    image = _head(np.random.default_rng(4), scale=5000.0)
    out = normalize_intensity(image, "pet")
    head = image[0] > 0
    assert float(out[0][head].mean()) == pytest.approx(1.0, abs=0.02)  # foreground mean uptake is 1
    assert out.min() >= 0 and out.max() <= PET_MAX
    hot = image.copy()
    hot[0, 12, 12, 4] = 1e12  # one absurd voxel saturates instead of rescaling everything
    np.testing.assert_allclose(np.delete(normalize_intensity(hot, "pet").ravel(), 12 * 24 * 8 + 12 * 8 + 4),
                               np.delete(out.ravel(), 12 * 24 * 8 + 12 * 8 + 4), atol=0.02)


# ------------------------------------------------------------------ SPECT


def _perfusion(halo: int, scale: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """(1, 32, 32, 8) perfusion-like image: a grey-matter shell (1), white matter (0.4) inside, and
    ``halo`` voxels of low extracerebral uptake (0.2) around it; plus the grey-matter mask."""
    rng = np.random.default_rng(6)
    image = np.zeros((1, 32, 32, 8), dtype=np.float32)
    image[0, 16 - 6 - halo : 16 + 6 + halo, 16 - 6 - halo : 16 + 6 + halo, :] = 0.2
    image[0, 10:22, 10:22, :] = 1.0
    image[0, 12:20, 12:20, :] = 0.4
    grey = image[0] == 1.0
    image *= scale * (1.0 + 0.05 * rng.standard_normal(image.shape)).astype(np.float32)
    return image, grey


def test_spect_is_relative_to_the_well_perfused_tissue() -> None:
    ratios, pet = [], []
    for halo in (1, 6):  # a wider field of view or blur halo adds low-uptake voxels
        image, grey = _perfusion(halo)
        out = normalize_intensity(image, "spect")
        assert out.min() >= 0 and out.max() <= SPECT_MAX
        ratios.append(float(out[0][grey].mean()))
        pet.append(float(normalize_intensity(image, "pet")[0][grey].mean()))
    assert ratios == pytest.approx([1.0, 1.0], abs=0.03)  # 1 = normal grey-matter perfusion
    assert abs(pet[0] - pet[1]) > 0.2  # the whole-foreground reference of PET would move
    image, grey = _perfusion(3)
    hot = image.copy()
    hot[0, 0, 0, 0] = 1e12  # one absurd voxel saturates instead of rescaling everything
    np.testing.assert_allclose(normalize_intensity(hot, "spect")[0][grey], normalize_intensity(image, "spect")[0][grey],
                               rtol=0.01)
    assert normalize_intensity(hot, "spect")[0, 0, 0, 0] == SPECT_MAX


# ------------------------------------------------------------------ shared


@pytest.mark.parametrize("modality", MODALITIES)
def test_degenerate_inputs_give_finite_float32(modality: str) -> None:
    for image in (np.zeros((1, 4, 4, 3)), np.full((1, 4, 4, 3), 7.0), np.full((2, 4, 4, 3), np.nan)):
        out = normalize_intensity(image, modality)
        assert out.dtype == np.float32 and out.shape == image.shape and np.isfinite(out).all()


def test_channels_are_normalised_independently() -> None:
    image = _head(np.random.default_rng(5))
    stacked = np.concatenate([image, 40 * image])
    out = normalize_intensity(stacked, "t1")
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)


@pytest.mark.parametrize(
    ("image", "modality", "window", "match"),
    [
        (np.zeros((4, 4, 3)), "t1", (-100, 200), "shape"),
        (np.zeros((1, 4, 4, 3)), "us", (-100, 200), "modality"),
        (np.zeros((1, 4, 4, 3)), "ct", (200, -100), "ct_window"),
        (np.zeros((1, 4, 4, 3)), "ct", (0, float("nan")), "ct_window"),
        (np.zeros((1, 4, 4, 3)), "ct", "wide", "ct_window"),
    ],
)
def test_rejects_bad_arguments(image, modality, window, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalize_intensity(image, modality, ct_window=window)
