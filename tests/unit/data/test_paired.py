"""Paired cases (one anatomy in several modalities): the phantom renders them, the gate masks a bad modality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omnifm.data.integrity import resolve_cases, verify_cases
from omnifm.data.phantom.paired import write_paired_phantom_site
from omnifm.data.site import load_site_data, simulator_config
from omnifm.data.site_config import SiteConfigError, parse_site_config
from omnifm.tasks import get_task
from omnifm.tasks.classification.task import CT_MRI_INPUTS
from omnifm.tasks.segmentation import BRATS_CLASSES

SHAPE = (24, 24, 8)
FUSION = get_task({"kind": "classification", "inputs": {slot: list(kinds) for slot, kinds in CT_MRI_INPUTS}})
LABEL_MAP = {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}


@pytest.fixture(scope="module")
def paired_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paired")
    write_paired_phantom_site(root, ["ct", "t1ce"], 4, seed=0, shape=SHAPE, site_index=0)
    return root


def _copy(paired_site: Path, tmp_path: Path) -> Path:
    root = tmp_path / "site"
    shutil.copytree(paired_site, root)
    return root


def _config(root: Path, modalities=("ct", "t1ce")):
    raw = {"format": "nifti", "data_root": str(root), "modalities": list(modalities), "label_map": LABEL_MAP,
           "split": {"val_fraction": 0.25}}
    return parse_site_config(raw, root)


def _verify(root: Path, modalities=("ct", "t1ce")):
    config = _config(root, modalities)
    return verify_cases(resolve_cases(config), config, list(BRATS_CLASSES), keep_loaded=True)


def test_the_modalities_of_a_case_share_anatomy_and_grid(paired_site):
    entry = json.loads((paired_site / "datalist.json").read_text())["cases"][0]
    ct, t1ce = (nib.load(paired_site / entry["images"][m]) for m in ("ct", "t1ce"))
    np.testing.assert_array_equal(ct.affine, t1ce.affine)
    assert ct.shape == t1ce.shape == SHAPE
    ct_img, mr_img = np.asarray(ct.dataobj), np.asarray(t1ce.dataobj)
    assert ct_img.min() < -500 and mr_img.min() >= 0, "CT in HU (air), MR positive: two renderings, not one copied"
    brain = np.asarray(nib.load(paired_site / entry["label"]).dataobj) >= 0
    assert abs(np.corrcoef(ct_img[brain], mr_img[brain])[0, 1]) > 0.3, "the same head in both"


def test_an_identical_request_reuses_the_files(paired_site):
    before = {p: p.stat().st_mtime_ns for p in paired_site.rglob("*.nii.gz")}
    write_paired_phantom_site(paired_site, ["ct", "t1ce"], 4, seed=0, shape=SHAPE, site_index=0)
    assert before == {p: p.stat().st_mtime_ns for p in paired_site.rglob("*.nii.gz")}


def test_a_complete_paired_site_passes_with_every_modality_present(paired_site):
    report = _verify(paired_site)
    assert report.usable and report.good == [0, 1, 2, 3] and not report.masked
    case = report.loaded[0]
    assert case["image"].shape == (2, *SHAPE) and case["present"].tolist() == [1, 1]


def _write_like(reference: Path, target: Path, data: np.ndarray) -> None:
    img = nib.load(reference)
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), target)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("delete", "image file missing"),
        ("nan", "non-finite"),
        ("grid", "does not match"),
    ],
)
def test_a_bad_second_modality_is_masked_and_reported_by_case_index(paired_site, tmp_path, damage, reason):
    root = _copy(paired_site, tmp_path)
    entry = json.loads((root / "datalist.json").read_text())["cases"][1]
    t1ce = root / entry["images"]["t1ce"]
    if damage == "delete":
        t1ce.unlink()
    elif damage == "nan":
        data = np.asarray(nib.load(t1ce).dataobj, dtype=np.float32)
        data[3, 3, 3] = np.nan
        _write_like(t1ce, t1ce, data)
    else:
        _write_like(t1ce, t1ce, np.ones((SHAPE[0] - 2, SHAPE[1], SHAPE[2])))
    report = _verify(root)
    assert report.good == [0, 1, 2, 3], "the case stays, with its CT"
    (masked,) = report.masked
    assert masked[:2] == (1, "t1ce") and reason in masked[2]
    assert report.loaded[1]["present"].tolist() == [1, 0] and not report.loaded[1]["image"][1].any()
    assert any(line.startswith("case 1: t1ce masked (") for line in report.lines())
    assert str(root) not in "\n".join(report.lines()), "no path in the report"


def test_a_case_with_no_good_modality_is_bad(paired_site, tmp_path):
    root = _copy(paired_site, tmp_path)
    entry = json.loads((root / "datalist.json").read_text())["cases"][2]
    for path in entry["images"].values():
        (root / path).unlink()
    report = _verify(root)
    assert 2 not in report.good and report.bad[0][0] == 2 and "no usable modality" in report.bad[0][1]


def test_a_modality_the_case_lacks_is_masked(paired_site, tmp_path):
    root = _copy(paired_site, tmp_path)
    datalist = json.loads((root / "datalist.json").read_text())
    del datalist["cases"][0]["images"]["ct"]
    (root / "datalist.json").write_text(json.dumps(datalist))
    report = _verify(root)
    assert (0, "ct", "not in this case") in report.masked and report.loaded[0]["present"].tolist() == [0, 1]


def test_paired_cases_fill_the_fusion_slots(paired_site, tmp_path):
    root = _copy(paired_site, tmp_path)
    config = _config(root, ("t1ce", "ct"))  # the site's order is not the slots' order
    data = load_site_data(config, tmp_path, "site-1", FUSION)
    case = data.train[0]
    assert case["image"].shape == (2, *SHAPE) and case["present"].tolist() == [1, 1]
    ct_slot = case["image"][0]
    assert ct_slot.min() >= -1.0 and ct_slot.max() <= 1.0, "slot 0 holds the CT, brain-windowed to [-1, 1]"


@pytest.mark.parametrize("modalities, present", [(["ct"], [1, 0]), (["t1ce"], [0, 1])])
def test_a_single_modality_site_fills_one_slot(tmp_path, modalities, present):
    config = simulator_config("site-2", 4, SHAPE, 0.25, 0, modalities=modalities)
    data = load_site_data(config, tmp_path, "site-2", FUSION)
    assert all(c["present"].tolist() == present and not c["image"][present.index(0)].any() for c in data.train)


def test_modalities_the_slots_cannot_take_are_refused(paired_site, tmp_path):
    with pytest.raises(SiteConfigError, match="no input slot for modality 'pet'"):
        load_site_data(simulator_config("site-3", 4, SHAPE, 0.25, 0, modalities=["pet"]), tmp_path, "site-3", FUSION)
    with pytest.raises(SiteConfigError, match=r"would all fill the model's 'mri' slot"):
        load_site_data(simulator_config("site-3", 4, SHAPE, 0.25, 0, modalities=["t1", "t2"]), tmp_path, "site-3", FUSION)


def test_a_single_image_task_refuses_paired_cases(paired_site, tmp_path):
    with pytest.raises(SiteConfigError, match="paired cases"):
        load_site_data(_config(_copy(paired_site, tmp_path)), tmp_path, "site-1", get_task(None))


def test_the_datalist_refuses_a_malformed_paired_entry(tmp_path):
    (tmp_path / "datalist.json").write_text(json.dumps({"cases": [{"images": {"ct": ""}, "label": "l.nii.gz"}]}))
    with pytest.raises(SiteConfigError, match=r'"cases\[0\].images" must be an object'):
        resolve_cases(_config(tmp_path))
    (tmp_path / "datalist.json").write_text(json.dumps({"cases": [{"images": {"ct": "a"}, "image": "b", "label": "l"}]}))
    with pytest.raises(SiteConfigError, match='has "images" and also'):
        resolve_cases(_config(tmp_path))


def test_a_phantom_site_config_may_list_several_modalities():
    config = parse_site_config({"format": "phantom", "modalities": ["ct", "t1ce"], "label_map": LABEL_MAP}, ".")
    assert config.modalities == ("ct", "t1ce")
