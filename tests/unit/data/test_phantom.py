"""Tests of the MNI152-based multi-modality brain-tumour phantom."""

from __future__ import annotations

import dataclasses
import json
import os
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.optimize import minimize_scalar

from omnifm.data.modalities import MODALITIES
from omnifm.data.phantom import (
    BRATS_LABELS,
    DATALIST_NAME,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SITE_MODALITIES,
    Acquisition,
    PhantomAnatomy,
    Tissue,
    acquisition_spacing,
    make_phantom_anatomy,
    make_phantom_case,
    make_phantom_federation,
    modality_for_site,
    read_phantom_manifest,
    render_modality,
    site_acquisition,
    write_phantom_site,
)

SHAPE = (64, 64, 24)
SMALL = (32, 32, 8)


@lru_cache(maxsize=None)
def _anatomy(seed: int, shape: tuple[int, int, int] = SMALL, site: int = 0) -> PhantomAnatomy:
    """Cached anatomy (t1 geometry of ``site``); callers must not modify it."""
    return make_phantom_anatomy(np.random.default_rng(seed), shape, site_acquisition("t1", 0, site))


def _tumour_seed(shape: tuple[int, int, int], minimum: int) -> int:
    """The first seed whose anatomy has at least ``minimum`` voxels of every tumour label."""
    for seed in range(40):
        label = _anatomy(seed, shape).label
        if all((label == value).sum() >= minimum for value in BRATS_LABELS[1:]):
            return seed
    raise AssertionError("no tumour-bearing phantom among 40 seeds")


@lru_cache(maxsize=None)
def _rendered(modality: str, seed: int, site: int = 0) -> tuple[np.ndarray, PhantomAnatomy]:
    """(image, anatomy) of one full-size case; one generator, like make_phantom_case."""
    acquisition = site_acquisition(modality, 0, site)
    rng = np.random.default_rng(seed)
    anatomy = make_phantom_anatomy(rng, SHAPE, acquisition)
    return render_modality(anatomy, modality, acquisition, rng), anatomy


def _mean(image: np.ndarray, anatomy: PhantomAnatomy, tissue: Tissue, purity: float = 0.6) -> float:
    """Mean intensity over voxels made mostly of one tissue."""
    mask = anatomy.fractions[tissue] >= purity
    assert mask.sum() >= 5, f"too few {tissue.name} voxels"
    return float(image[mask].mean())


def _read_series(folder: str) -> tuple[np.ndarray, list]:
    """DICOM series -> (H, W, D) RAS volume after rescale, and the datasets sorted by position."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in Path(folder).iterdir()]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    slices = [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]
    # Rows run posterior and columns left (IOP 1\0\0\0\1\0); RAS flips both in-plane axes.
    volume = np.stack([s[::-1, ::-1].T for s in slices], axis=-1)
    return volume, datasets


# ------------------------------------------------------------------ site -> modality, acquisition


@pytest.mark.parametrize(
    ("site", "modality"),
    [(0, "t1ce"), (1, "ct"), (2, "t2"), (3, "pet"), (4, "flair"), (5, "t1"), (6, "t1ce"), (13, "ct")],
)
def test_modality_for_site(site: int, modality: str) -> None:
    assert modality_for_site(site) == modality


def test_spect_is_appended_and_keeps_the_site_cycle() -> None:
    # the acquisition seeds use MODALITIES.index: the earlier modalities keep their index (and output)
    assert MODALITIES == ("t1", "t1ce", "t2", "flair", "ct", "pet", "spect")
    assert SITE_MODALITIES == ("t1ce", "ct", "t2", "pet", "flair", "t1")
    assert "spect" not in {modality_for_site(i) for i in range(24)}


@pytest.mark.parametrize("site", [-1, 1.5, True, "0"])
def test_modality_for_site_rejects_bad_index(site: object) -> None:
    with pytest.raises(ValueError, match="site_index"):
        modality_for_site(site)  # type: ignore[arg-type]


def test_site_acquisition_is_fixed_per_site_and_differs_between_sites() -> None:
    assert site_acquisition("t1", 3, 1) == site_acquisition("t1", 3, 1)
    sites = [site_acquisition("t1", 0, i) for i in range(6)]
    assert len({a.noise for a in sites}) == 6
    assert len({a.slice_thickness for a in sites}) > 1
    assert all(2.0 <= a.slice_thickness <= 5.0 and a.bias > 0 and a.tr > 0 for a in sites)
    assert site_acquisition("flair", 0).ti > 0 and site_acquisition("t2", 0).ti == 0
    ct, pet = site_acquisition("ct", 0), site_acquisition("pet", 0)
    assert ct.bias == pet.bias == 0 and ct.tr == pet.tr == 0
    assert pet.psf_fwhm > max(site_acquisition(m, 0, i).psf_fwhm for m in ("t1", "t2", "ct") for i in range(4))


def test_spect_sites_differ_in_resolution_noise_calibration_and_attenuation_correction() -> None:
    spect = [site_acquisition("spect", 0, i) for i in range(6)]
    pet = [site_acquisition("pet", 0, i) for i in range(6)]
    assert all(12.0 <= a.psf_fwhm <= 18.0 and 0.08 <= a.noise <= 0.15 and -0.1 <= a.bias <= 0.2 for a in spect)
    assert min(a.psf_fwhm for a in spect) > max(a.psf_fwhm for a in pet)
    for field in ("psf_fwhm", "noise", "gain", "bias"):
        assert len({getattr(a, field) for a in spect}) == 6, field
    assert all(a.tr == a.te == a.ti == a.offset == 0 for a in spect)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"modality": "mri"}, "modality"), ({"seed": -1}, "seed"), ({"site_index": 1.0}, "site_index")]
)
def test_site_acquisition_rejects_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        site_acquisition(**{"modality": "t1", "seed": 0, **kwargs})


def test_acquisition_spacing_fits_the_head_in_square_pixels() -> None:
    acquisition = site_acquisition("t2", 0, 1)
    spacing = acquisition_spacing(acquisition, SHAPE)
    assert spacing[0] == spacing[1] and spacing[2] == acquisition.slice_thickness
    assert 214.0 <= spacing[1] * SHAPE[1] <= 1.3 * 214.0
    assert acquisition_spacing(acquisition, (32, 32, 8))[0] == pytest.approx(2 * spacing[0], rel=1e-3)


# ------------------------------------------------------------------ cases


def test_case_types_shapes_and_determinism() -> None:
    image, label, spacing = make_phantom_case("t1", 5, SMALL)
    again = make_phantom_case("t1", np.random.default_rng(5), SMALL)
    assert image.shape == label.shape == SMALL
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(BRATS_LABELS)
    assert spacing == acquisition_spacing(site_acquisition("t1", 0), SMALL)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(label, again[1])
    assert spacing == again[2]


def test_different_seeds_give_different_cases() -> None:
    first, second = make_phantom_case("t2", 1, SMALL), make_phantom_case("t2", 2, SMALL)
    assert not np.array_equal(first[0], second[0])
    assert not np.array_equal(_anatomy(1).fractions, _anatomy(2).fractions)


def test_case_reproduces_its_anatomy() -> None:
    _, label, _ = make_phantom_case("ct", 9, SMALL, site_acquisition("ct", 0))
    anatomy = make_phantom_anatomy(np.random.default_rng(9), SMALL, site_acquisition("ct", 0))
    np.testing.assert_array_equal(label, anatomy.label)


def test_fractions_are_a_partition_with_skull_around_the_brain() -> None:
    anatomy = _anatomy(_tumour_seed(SMALL, 1))
    assert anatomy.fractions.shape == (len(Tissue), *SMALL)
    assert anatomy.fractions.min() >= -1e-6
    np.testing.assert_allclose(anatomy.fractions.sum(axis=0), 1.0, atol=1e-5)
    brain = anatomy.brain >= 0.5
    skull = anatomy.fractions[Tissue.SKULL] >= 0.3
    assert brain.sum() > 0.2 * brain.size and skull.any()
    assert not (ndi.binary_erosion(brain, iterations=2) & skull).any()
    assert anatomy.fractions[Tissue.AIR][0, 0].mean() > 0.99  # field-of-view corners are air


def test_brats_labels_are_nested_inside_the_brain() -> None:
    seed = _tumour_seed(SHAPE, 5)
    anatomy = _anatomy(seed, SHAPE)
    label = anatomy.label
    assert set(np.unique(label)) == set(BRATS_LABELS)
    assert anatomy.brain[label > 0].min() >= 0.5
    core = (label == 1) | (label == 4)
    around_core = ndi.binary_dilation(core) & ~core
    assert (label[around_core] == 2).mean() > 0.8  # oedema surrounds the core
    around_necrosis = ndi.binary_dilation(label == 1) & (label != 1)
    assert (label[around_necrosis] == 4).mean() > 0.6  # the enhancing rim surrounds the necrosis
    assert (label[around_necrosis] == 0).mean() < 0.05
    tumour = anatomy.fractions[[Tissue.OEDEMA, Tissue.ENHANCING, Tissue.NECROSIS]].sum(axis=0)
    assert tumour[label == 0].max() < 0.75 and tumour[label > 0].mean() > 0.7
    assert anatomy.fractions[Tissue.NECROSIS][label == 1].mean() > 0.5
    assert anatomy.fractions[Tissue.ENHANCING][label == 4].mean() > 0.3


def test_about_fifteen_percent_of_cases_are_tumour_free() -> None:
    anatomies = [_anatomy(seed) for seed in range(40)]
    free = sum(a.tumour_free for a in anatomies)
    assert 1 <= free <= 12
    assert all(a.label.any() != a.tumour_free for a in anatomies)


def test_cases_differ_in_pose_size_and_slab() -> None:
    anatomies = [_anatomy(seed) for seed in range(8)]
    brain_sizes = {round(float(a.brain.sum()), 1) for a in anatomies}
    slab_offsets = {round(float(a.affine[2, 3]), 2) for a in anatomies}
    assert len(brain_sizes) == len(slab_offsets) == len(anatomies)
    tumour_sizes = {int((a.label > 0).sum()) for a in anatomies if not a.tumour_free}
    assert len(tumour_sizes) > 3


# ------------------------------------------------------------------ contrast


def test_t1_contrast() -> None:
    image, anatomy = _rendered("t1", _tumour_seed(SHAPE, 5))
    wm, gm, csf = (_mean(image, anatomy, t) for t in (Tissue.WHITE_MATTER, Tissue.GREY_MATTER, Tissue.CSF))
    assert wm > 1.1 * gm and gm > 1.2 * csf
    assert _mean(image, anatomy, Tissue.OEDEMA) < 0.95 * wm  # tumour is hypointense
    assert _mean(image, anatomy, Tissue.SCALP) > wm > _mean(image, anatomy, Tissue.SKULL)
    assert image.min() > 0  # Rician magnitude


def test_t1ce_enhancing_rim_is_bright() -> None:
    seed = _tumour_seed(SHAPE, 5)
    image, anatomy = _rendered("t1ce", seed)
    rim = image[anatomy.label == 4].mean()
    assert rim > 1.5 * _mean(image, anatomy, Tissue.WHITE_MATTER)
    plain, _ = _rendered("t1", seed)
    contrast = rim / image[anatomy.label == 2].mean()
    assert contrast > 1.5 * plain[anatomy.label == 4].mean() / plain[anatomy.label == 2].mean()


def test_t2_contrast() -> None:
    image, anatomy = _rendered("t2", _tumour_seed(SHAPE, 5))
    wm, gm, csf = (_mean(image, anatomy, t) for t in (Tissue.WHITE_MATTER, Tissue.GREY_MATTER, Tissue.CSF))
    assert csf > 1.3 * gm and gm > wm
    assert _mean(image, anatomy, Tissue.OEDEMA) > 1.5 * wm


def test_flair_suppresses_csf_and_shows_oedema() -> None:
    image, anatomy = _rendered("flair", _tumour_seed(SHAPE, 5))
    gm, csf = _mean(image, anatomy, Tissue.GREY_MATTER), _mean(image, anatomy, Tissue.CSF)
    assert csf < 0.6 * gm
    assert _mean(image, anatomy, Tissue.OEDEMA) > 1.4 * gm


def test_ct_is_in_hounsfield_units() -> None:
    image, anatomy = _rendered("ct", _tumour_seed(SHAPE, 5))
    assert _mean(image, anatomy, Tissue.SKULL) > 500
    assert 15 <= _mean(image, anatomy, Tissue.GREY_MATTER) <= 60
    assert 15 <= _mean(image, anatomy, Tissue.WHITE_MATTER) <= 60
    assert _mean(image, anatomy, Tissue.AIR, 0.99) < -950
    assert image.min() >= -1024 and image.max() <= 3071
    away_from_skull = ~ndi.binary_dilation(anatomy.fractions[Tissue.SKULL] > 0.1, iterations=2)
    csf = image[(anatomy.fractions[Tissue.CSF] >= 0.9) & away_from_skull].mean()
    assert -5 < csf < _mean(image, anatomy, Tissue.WHITE_MATTER)
    assert _mean(image, anatomy, Tissue.OEDEMA) < _mean(image, anatomy, Tissue.WHITE_MATTER)


def _high_frequency(image: np.ndarray, anatomy: PhantomAnatomy) -> float:
    head = anatomy.fractions[Tissue.AIR] < 0.5
    return float(np.std((image - ndi.gaussian_filter(image, 1.0))[head]) / np.std(image[head]))


def test_pet_tumour_is_hot_and_blurred() -> None:
    seed = _tumour_seed(SHAPE, 5)
    image, anatomy = _rendered("pet", seed)
    assert image.min() >= 0
    assert image[(anatomy.label == 1) | (anatomy.label == 4)].mean() > 1.3 * _mean(image, anatomy, Tissue.GREY_MATTER)
    assert _mean(image, anatomy, Tissue.GREY_MATTER) > _mean(image, anatomy, Tissue.CSF)
    mr, mr_anatomy = _rendered("t1", seed)
    assert _high_frequency(image, anatomy) < 0.5 * _high_frequency(mr, mr_anatomy)


def _fit_psf(image: np.ndarray, anatomy: PhantomAnatomy) -> tuple[float, np.ndarray, float]:
    """Resolution, uptake and noise measured from an image (PET/SPECT).

    Regresses the head's voxels on the tissue fractions blurred by a 3D Gaussian and picks the FWHM
    with the least squared residual. Returns ``(FWHM mm, uptake per tissue relative to grey matter,
    residual standard deviation relative to grey-matter uptake)``.
    """
    head = anatomy.fractions[Tissue.AIR] < 0.5
    fractions = anatomy.fractions.astype(float)

    def solve(fwhm: float) -> tuple[np.ndarray, np.ndarray]:
        sigma = [fwhm / 2.3548 / s for s in anatomy.spacing]
        columns = np.stack([ndi.gaussian_filter(f, sigma, mode="nearest")[head] for f in fractions], axis=1)
        coef = np.linalg.lstsq(columns, image[head].astype(float), rcond=None)[0]
        return coef, image[head] - columns @ coef

    best = minimize_scalar(lambda f: float(np.mean(solve(f)[1] ** 2)), bounds=(2.0, 30.0), method="bounded",
                           options={"xatol": 0.2})
    coef, residual = solve(best.x)
    grey = coef[Tissue.GREY_MATTER]
    return float(best.x), coef / grey, float(residual.std() / grey)


def test_spect_is_perfusion_with_lower_resolution_and_more_noise_than_pet() -> None:
    seed = _tumour_seed(SHAPE, 5)
    image, anatomy = _rendered("spect", seed)
    assert image.min() >= 0 and np.isfinite(image).all()
    gm, wm, csf = (_mean(image, anatomy, t) for t in (Tissue.GREY_MATTER, Tissue.WHITE_MATTER, Tissue.CSF))
    assert gm > wm > csf  # blurred, but in perfusion order
    fwhm, uptake, noise = _fit_psf(image, anatomy)
    pet_fwhm, _, pet_noise = _fit_psf(*_rendered("pet", seed))
    acquisition = site_acquisition("spect", 0)
    assert 0.25 <= uptake[Tissue.WHITE_MATTER] <= 0.6  # white matter ~1/3-1/2 of grey matter
    assert uptake[Tissue.CSF] < uptake[Tissue.WHITE_MATTER] and uptake[Tissue.SKULL] < 0.25
    assert fwhm == pytest.approx(acquisition.psf_fwhm, rel=0.25) and fwhm > 1.3 * pet_fwhm
    assert 0.5 * acquisition.noise <= noise <= 1.1 * acquisition.noise and noise > 1.8 * pet_noise
    assert _high_frequency(image, anatomy) < 0.5 * _high_frequency(*_rendered("t1", seed))


def test_spect_attenuation_correction_residual_is_radial() -> None:
    anatomy = _anatomy(_tumour_seed(SMALL, 2))
    base = site_acquisition("spect", 0)
    under, over = (render_modality(anatomy, "spect", dataclasses.replace(base, bias=b), np.random.default_rng(1))
                   for b in (0.2, -0.1))
    brain = anatomy.fractions[Tissue.GREY_MATTER] + anatomy.fractions[Tissue.WHITE_MATTER] > 0.5
    x, y = (np.arange(n) - (n - 1) / 2 for n in SMALL[:2])
    radius = np.broadcast_to(np.hypot(x[:, None], y[None, :])[:, :, None], SMALL)
    ratio = under / np.maximum(over, 1e-9)
    centre, rim = ratio[brain & (radius < 4)].mean(), ratio[brain & (radius > 10)].mean()
    assert centre == pytest.approx(0.8 / 1.1, rel=0.05) and rim > centre + 0.1


def test_sites_with_the_same_modality_differ() -> None:
    seed = _tumour_seed(SHAPE, 5)
    (first, anatomy), (second, other) = _rendered("t1", seed, 0), _rendered("t1", seed, 1)
    assert anatomy.spacing != other.spacing
    corner = (slice(0, 4), slice(0, 4), slice(None))  # air: pure Rician noise floor
    assert anatomy.fractions[Tissue.AIR][corner].min() > 0.99 and other.fractions[Tissue.AIR][corner].min() > 0.99
    pairs = ((first, anatomy), (second, other))
    ratio = [float(img[corner].mean() / _mean(img, a, Tissue.WHITE_MATTER)) for img, a in pairs]
    noise = [site_acquisition("t1", 0, i).noise for i in (0, 1)]
    assert (ratio[0] < ratio[1]) == (noise[0] < noise[1]) and abs(ratio[0] - ratio[1]) > 0.01


def test_render_modality_checks_the_acquisition() -> None:
    anatomy = _anatomy(0)
    with pytest.raises(ValueError, match="acquisition.modality"):
        render_modality(anatomy, "t2", site_acquisition("t1", 0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="modality"):
        render_modality(anatomy, "xray", None, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("args", "name"),
    [(("t1", -1), "seed"), (("t1", 0, (32, 32)), "shape"), (("t1", 0, (4, 32, 8)), "shape"), (("mri", 0), "modality")],
)
def test_make_phantom_case_rejects_bad_arguments(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_phantom_case(*args)


# ------------------------------------------------------------------ files


@pytest.fixture(scope="module")
def nifti_site(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("nifti") / "site"
    return out, write_phantom_site(out, "t2", 3, seed=4, shape=SMALL, site_index=1)


def test_nifti_site_layout_and_datalist(nifti_site) -> None:
    out, entries = nifti_site
    assert [e["id"] for e in entries] == ["case_000", "case_001", "case_002"]
    for entry in entries:
        assert set(entry) == {"id", "image", "label", "modality"} and entry["modality"] == "t2"
        assert os.path.isabs(entry["image"]) and os.path.isfile(entry["image"]) and os.path.isfile(entry["label"])
    datalist = json.loads((out / DATALIST_NAME).read_text())
    assert datalist["cases"][0] == {
        "id": "case_000",
        "image": "images/case_000.nii.gz",
        "label": "labels/case_000.nii.gz",
        "modality": "t2",
    }
    manifest = read_phantom_manifest(out)
    assert manifest["version"] == GENERATOR_VERSION and manifest["request"]["site_index"] == 1
    assert Acquisition(**manifest["acquisition"]) == site_acquisition("t2", 4, 1)
    assert len(manifest["cases"]) == 3


def test_nifti_files_load_with_geometry(nifti_site) -> None:
    _, entries = nifti_site
    spacing = acquisition_spacing(site_acquisition("t2", 4, 1), SMALL)
    for entry in entries:
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        assert image.shape == label.shape == SMALL
        np.testing.assert_allclose(image.header.get_zooms(), spacing, rtol=1e-5)
        np.testing.assert_allclose(np.diag(image.affine)[:3], spacing, rtol=1e-6)
        np.testing.assert_array_equal(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj))) <= set(BRATS_LABELS)
        assert float(np.asarray(image.dataobj).min()) > 0


def test_site_cases_do_not_depend_on_the_number_of_cases(nifti_site, tmp_path) -> None:
    _, entries = nifti_site
    single = write_phantom_site(tmp_path, "t2", 1, seed=4, shape=SMALL, site_index=1)
    np.testing.assert_array_equal(nib.load(single[0]["image"]).dataobj, nib.load(entries[0]["image"]).dataobj)


def test_reuse_is_idempotent_and_changes_regenerate(tmp_path) -> None:
    entries = write_phantom_site(tmp_path, "t1", 3, seed=1, shape=SMALL)
    files = [Path(e[k]) for e in entries for k in ("image", "label")] + [tmp_path / MANIFEST_NAME]
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert write_phantom_site(tmp_path, "t1", 3, seed=1, shape=SMALL) == entries
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    before = np.asarray(nib.load(entries[0]["image"]).dataobj)
    write_phantom_site(tmp_path, "t1", 2, seed=2, shape=SMALL)
    assert not np.array_equal(np.asarray(nib.load(entries[0]["image"]).dataobj), before)
    assert read_phantom_manifest(tmp_path)["request"]["seed"] == 2
    assert not Path(entries[2]["image"]).exists()  # stale case of the larger request removed
    Path(entries[0]["label"]).unlink()  # a missing file also triggers regeneration
    write_phantom_site(tmp_path, "t1", 2, seed=2, shape=SMALL)
    assert Path(entries[0]["label"]).is_file()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"modality": "T1"}, "modality"),
        ({"num_cases": 0}, "num_cases"),
        ({"seed": -1}, "seed"),
        ({"shape": (32, 32, 0)}, "shape"),
        ({"site_index": -2}, "site_index"),
        ({"fmt": "png"}, "fmt"),
    ],
)
def test_write_phantom_site_rejects_bad_arguments(tmp_path, kwargs: dict, name: str) -> None:
    arguments = {"modality": "t1", "num_cases": 1, "seed": 0, "shape": SMALL, **kwargs}
    with pytest.raises(ValueError, match=name):
        write_phantom_site(tmp_path, **arguments)
    assert not (tmp_path / MANIFEST_NAME).exists()


@pytest.mark.dicom
@pytest.mark.parametrize("modality", ["ct", "pet", "flair", "spect"])
def test_dicom_series_round_trip(tmp_path, modality: str) -> None:
    pytest.importorskip("pydicom")
    nifti = write_phantom_site(tmp_path / "n", modality, 1, seed=3, shape=SMALL, site_index=2)
    dicom = write_phantom_site(tmp_path / "d", modality, 1, seed=3, shape=SMALL, site_index=2, fmt="dicom")
    assert dicom[0]["image"].endswith("images/case_000") and dicom[0]["label"].endswith("labels/case_000.nii.gz")
    reference = nib.load(nifti[0]["image"])
    volume, datasets = _read_series(dicom[0]["image"])
    assert len(datasets) == SMALL[2]
    np.testing.assert_allclose(volume, reference.get_fdata(), atol=1.0)
    spacing = acquisition_spacing(site_acquisition(modality, 3, 2), SMALL)
    first = datasets[0]
    assert first.Modality == {"ct": "CT", "pet": "PT", "flair": "MR", "spect": "NM"}[modality]
    assert first.SOPClassUID.name == {"CT": "CT", "PT": "Positron Emission Tomography", "MR": "MR",
                                      "NM": "Nuclear Medicine"}[first.Modality] + " Image Storage"
    assert str(first.PatientName) == "PHANTOM^SITE3^CASE000"
    assert first.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # explicit VR little endian
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], spacing[:2], rtol=1e-4)
    assert float(first.SliceThickness) == pytest.approx(spacing[2])
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    corner = reference.affine @ np.array([SMALL[0] - 1, SMALL[1] - 1, 0, 1.0])
    position = [float(v) for v in first.ImagePositionPatient]
    np.testing.assert_allclose(position, [-corner[0], -corner[1], corner[2]], atol=1e-3)
    steps = np.diff([float(d.ImagePositionPatient[2]) for d in datasets])
    np.testing.assert_allclose(steps, spacing[2], atol=1e-3)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1 and len({d.SOPInstanceUID for d in datasets}) == SMALL[2]
    np.testing.assert_array_equal(nib.load(dicom[0]["label"]).affine, reference.affine)


@pytest.mark.dicom
def test_dicom_is_deterministic_and_ct_is_int16(tmp_path) -> None:
    pydicom = pytest.importorskip("pydicom")
    first = write_phantom_site(tmp_path / "a", "ct", 1, seed=0, shape=(16, 16, 2), fmt="dicom")
    second = write_phantom_site(tmp_path / "b", "ct", 1, seed=0, shape=(16, 16, 2), fmt="dicom")
    names = sorted(os.listdir(first[0]["image"]))
    for name in names:
        a = pydicom.dcmread(Path(first[0]["image"]) / name)
        b = pydicom.dcmread(Path(second[0]["image"]) / name)
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID
        assert a.PixelData == b.PixelData
        assert a.pixel_array.dtype == np.int16 and float(a.RescaleIntercept) == -1024
    write_phantom_site(tmp_path / "a", "ct", 1, seed=0, shape=(16, 16, 2))  # switching format replaces the series
    assert os.path.isfile(Path(tmp_path / "a" / "images" / "case_000.nii.gz"))
    assert not os.path.exists(first[0]["image"])


def test_make_phantom_federation(tmp_path) -> None:
    calls = []
    result = make_phantom_federation(tmp_path, 3, 1, seed=0, shape=(16, 16, 4), on_site=lambda *a: calls.append(a))
    assert list(result) == ["site-1", "site-2", "site-3"] == [c[0] for c in calls]
    assert [r[0]["modality"] for r in result.values()] == ["t1ce", "ct", "t2"]
    assert all(Path(r[0]["image"]).parent.parent == tmp_path / name for name, r in result.items())
    chosen = make_phantom_federation(tmp_path / "m", 3, 1, seed=0, modalities=["pet", "t1ce"], shape=(16, 16, 4))
    assert [r[0]["modality"] for r in chosen.values()] == ["pet", "t1ce", "pet"]
    with pytest.raises(ValueError, match="modalities"):
        make_phantom_federation(tmp_path / "x", 1, 1, seed=0, modalities=[])
    with pytest.raises(ValueError, match="modality"):
        make_phantom_federation(tmp_path / "x", 1, 1, seed=0, modalities=["xray"])
    assert not (tmp_path / "x").exists()


def test_every_modality_renders_finite_values() -> None:
    for modality in MODALITIES:
        image, label, _ = make_phantom_case(modality, 0, (16, 16, 4), site_acquisition(modality, 0))
        assert np.isfinite(image).all() and label.shape == image.shape
