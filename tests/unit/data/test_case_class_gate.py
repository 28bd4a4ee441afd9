"""Per-case class labels through the data path: the integrity gate reports every bad ``"class"`` by
case index with a reason (never the value, an id or a path), ``omnifm_site.json`` declares the
classes, ``omnifm-verify-data`` checks them, and the built-in phantom can carry them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omnifm.data.integrity import verify_cases
from omnifm.data.phantom.case_classes import HEMISPHERE_CLASSES, hemisphere_class, write_hemisphere_datalist
from omnifm.data.site import load_site_data, simulator_config
from omnifm.data.site_config import SiteConfigError, parse_site_config
from omnifm.tasks.classification import ClsTask
from omnifm.tools import verify_data

CLASSES = ("benign", "malignant")
PATIENT = "DOE^JANE 4711"  # what a careless export could put into a free-text field
SHAPE = (6, 5, 4)


def fake_loader(case: dict, spacing=None, label_values=None, normalize=True) -> dict:
    """A readable case; a label volume only when the case lists one."""
    image = np.random.default_rng(0).normal(size=(1, *SHAPE)).astype(np.float32)
    return {"image": image, **({"label": np.zeros((1, *SHAPE), np.uint8)} if case.get("label") else {})}


def _config(root: Path, **extra):
    data = {"format": "nifti", "data_root": str(root), "modalities": ["t1"], **extra}
    return parse_site_config(data, root, check_paths=False)


def _cases(root: Path, classes: list, label: bool = False) -> list[dict]:
    cases = []
    for i, value in enumerate(classes):
        folder = root / f"{PATIENT}_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "t1.nii.gz").touch()
        case = {"id": f"{PATIENT}_{i}", "image": str(folder / "t1.nii.gz"), "modality": "t1"}
        if label:
            (folder / "seg.nii.gz").touch()
            case["label"] = str(folder / "seg.nii.gz")
        if value is not _NO_CLASS:
            case["class"] = value
        cases.append(case)
    return cases


_NO_CLASS = object()

BAD_CLASSES = [
    (_NO_CLASS, 'no "class" in the datalist'),
    (None, 'no "class" in the datalist'),
    ("  ", '"class" is blank'),
    ("Malignant", "class name is not one of the task's classes ['benign', 'malignant'] (names are case-sensitive)"),
    (PATIENT, "class name is not one of the task's classes"),
    (2, "class index out of range: must be 0 to 1"),
    (-1, "class index out of range"),
    (4711, "class index out of range"),
    (1.0, '"class" must be a class name (string) or its integer index, got a number that is not an integer'),
    (True, "got true/false"),
    (["benign"], "got a list"),
    ({"name": "benign"}, "got an object"),
]


@pytest.mark.parametrize("value, reason", BAD_CLASSES)
def test_each_bad_class_is_reported_by_case_index_with_its_reason(tmp_path: Path, value, reason: str):
    cases = _cases(tmp_path, ["benign", value, "malignant"])
    report = verify_cases(cases, _config(tmp_path), ["background"], fake_loader, case_classes=CLASSES)
    assert report.good == [0, 2] and [index for index, _ in report.bad] == [1]
    assert reason in report.bad[0][1]
    text = "\n".join(report.lines()) + repr(report)
    assert "DOE" not in text and "4711" not in text and str(tmp_path) not in text
    assert f"case 1: {report.bad[0][1]}" in report.lines()


def test_names_and_indices_become_the_class_index_of_the_loaded_case(tmp_path: Path):
    cases = _cases(tmp_path, ["malignant", 0, " benign ", 1])
    report = verify_cases(cases, _config(tmp_path), ["background"], fake_loader, keep_loaded=True, case_classes=CLASSES)
    assert report.good == [0, 1, 2, 3] and report.notes == []
    assert [report.loaded[i]["class"] for i in range(4)] == [1, 0, 0, 1] == [report.case_class[i] for i in range(4)]
    assert all("label" not in loaded for loaded in report.loaded.values())  # no label volume needed


def test_a_site_whose_good_cases_cover_one_class_is_usable_and_says_so(tmp_path: Path):
    cases = _cases(tmp_path, ["benign", "benign", "tumour", "benign"])
    report = verify_cases(cases, _config(tmp_path), ["background"], fake_loader, case_classes=CLASSES)
    assert report.usable and report.good == [0, 1, 3]
    assert report.notes == ["the usable cases cover only one class ('benign', 3 cases): the site trains, "
                            "but its model sees no other class"]
    assert "site: note: the usable cases cover only one class ('benign', 3 cases)" in report.lines()[-2]


def test_location_mode_ignores_the_class_field_and_still_needs_labels(tmp_path: Path):
    """Without case classes the gate is what it was: ``"class"`` is not read, a label is required."""
    config = _config(tmp_path, label_map={"0": "background"})
    report = verify_cases(_cases(tmp_path, [PATIENT, 7], label=True), config, ["background"], fake_loader)
    assert report.good == [0, 1]
    report = verify_cases(_cases(tmp_path / "b", ["benign", "benign"]), config, ["background"], fake_loader)
    assert dict(report.bad) == {0: "no label in the datalist", 1: "no label in the datalist"}
    with pytest.raises(SiteConfigError, match='"label_map" is missing, but this job\'s task reads label volumes'):
        verify_cases(_cases(tmp_path / "c", ["benign", "benign"], label=True), _config(tmp_path), ["background"],
                     fake_loader)


def test_a_case_mode_site_without_label_map_does_not_read_its_label_volumes(tmp_path: Path):
    read = []

    def loader(case, **kwargs):
        read.append("label" in case)
        return fake_loader(case, **kwargs)

    cases = _cases(tmp_path, ["benign", "malignant"], label=True)
    report = verify_cases(cases, _config(tmp_path), ["background"], loader, case_classes=CLASSES)
    assert report.good == [0, 1] and read == [False, False]


def test_paired_case_mode_without_label_map_keeps_the_class_and_masks_an_image_on_another_grid(tmp_path: Path):
    def loader(case, **kwargs):
        shape = (1, 4, 4, 4) if "small" in case["image"] else (1, *SHAPE)
        return {"image": np.ones(shape, np.float32)}

    cases = []
    for i, ct in enumerate(("ct.nii.gz", "ct_small.nii.gz")):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        for name in ("t1.nii.gz", ct, "seg.nii.gz"):
            (folder / name).touch()
        cases.append({"id": f"case{i}", "images": {"t1": str(folder / "t1.nii.gz"), "ct": str(folder / ct)},
                      "label": str(folder / "seg.nii.gz"), "class": "malignant"})
    config = parse_site_config({"format": "nifti", "data_root": str(tmp_path), "modalities": ["t1", "ct"]}, tmp_path,
                               check_paths=False)
    report = verify_cases(cases, config, ["background"], loader, keep_loaded=True, case_classes=CLASSES)
    assert report.good == [0, 1] and [report.loaded[i]["present"].tolist() for i in (0, 1)] == [[1, 1], [1, 0]]
    assert report.masked == [(1, "ct", "image shape (4, 4, 4) differs from the case's other modalities' (6, 5, 4) "
                                       "(one grid needed)")]
    assert report.loaded[1]["class"] == 1 and "label" not in report.loaded[1]


def test_a_paired_entry_without_label_is_good_in_case_mode_only(tmp_path: Path):
    from omnifm.data.integrity import resolve_cases

    for name in ("t1_0.nii.gz", "ct_0.nii.gz", "t1_1.nii.gz", "ct_1.nii.gz"):
        (tmp_path / name).touch()
    entries = [{"images": {"t1": f"t1_{i}.nii.gz", "ct": f"ct_{i}.nii.gz"}, "class": i} for i in range(2)]
    (tmp_path / "datalist.json").write_text(json.dumps({"cases": entries}))
    data = {"format": "nifti", "data_root": str(tmp_path), "modalities": ["t1", "ct"]}
    case_mode = parse_site_config(data, tmp_path)
    cases = resolve_cases(case_mode)
    assert "label" not in cases[0]
    assert verify_cases(cases, case_mode, ["background"], fake_loader, case_classes=CLASSES).good == [0, 1]
    location = parse_site_config({**data, "label_map": {"0": "background"}}, tmp_path)
    report = verify_cases(resolve_cases(location), location, ["background"], fake_loader)
    assert dict(report.bad)[0] == "no usable modality (t1: no label in the datalist; ct: no label in the datalist)"


# --------------------------------------------------------------------------- omnifm_site.json


@pytest.mark.parametrize("value, fragment", [
    (["benign"], 'at least two class names'),
    ("benign,malignant", "must be a list"),
    (["benign", 3], "class names (strings)"),
    (["benign", "benign"], '"case_classes" lists a class twice'),
])
def test_bad_case_classes_in_the_site_config_name_the_field(tmp_path: Path, value, fragment: str):
    with pytest.raises(SiteConfigError, match='"case_classes"') as err:
        _config(tmp_path, case_classes=value)
    assert fragment in str(err.value)


def test_declared_case_classes_must_equal_the_jobs(tmp_path: Path):
    config = _config(tmp_path, case_classes=list(CLASSES))
    assert config.case_classes == CLASSES and config.label_map == () and "no label_map" in config.describe()
    config.check_case_classes(CLASSES)
    with pytest.raises(SiteConfigError, match=r'"case_classes" \[\'benign\', \'malignant\'\] differ from this job'):
        config.check_case_classes(("malignant", "benign"))


def test_verify_data_checks_classes_from_the_config_or_the_command_line(tmp_path: Path, capsys):
    root = tmp_path / "data"
    cases = _cases(root, ["benign", "glioma", _NO_CLASS, "malignant"])
    (root / "datalist.json").write_text(json.dumps({"cases": cases}))
    site = tmp_path / "omnifm_site.json"
    site.write_text(json.dumps({"format": "nifti", "data_root": str(root), "modalities": ["t1"],
                                "case_classes": list(CLASSES)}))
    report = verify_data.verify_site(site, loader=fake_loader)
    assert report.good == [0, 3] and [i for i, _ in report.bad] == [1, 2]
    assert verify_data.verify_site(site, loader=fake_loader, case_classes=list(CLASSES)).good == [0, 3]
    with pytest.raises(SiteConfigError, match="differ from this job's classes"):
        verify_data.verify_site(site, loader=fake_loader, case_classes=["malignant", "benign"])
    assert verify_data.main(["--site-config", str(site), "--case-classes", "malignant", "benign"]) == 2
    assert "error: omnifm_site.json: \"case_classes\"" in capsys.readouterr().err


# --------------------------------------------------------------------------- the phantom


def test_hemisphere_rule_is_the_side_of_the_tumour_centroid():
    label = np.zeros((10, 4, 3), np.uint8)
    assert hemisphere_class(label) == "no_tumour"
    label[7:9, 1, 1] = 2
    assert hemisphere_class(label) == "right"  # axis 0 points to the patient's right
    label[0:5, 2, 2] = 1
    assert hemisphere_class(label) == "left"


def test_a_case_mode_job_on_the_phantom_gets_hemisphere_classes_and_a_location_job_does_not(tmp_path: Path):
    config = simulator_config("site-1", 6, (32, 32, 8), 0.34, 0)
    task = ClsTask(labels="case", classes=HEMISPHERE_CLASSES, mirror=False)
    data = load_site_data(config, tmp_path, "site-1", task)
    site = tmp_path / "omnifm_phantom" / "site-1"
    entries = json.loads((site / "datalist.hemisphere.json").read_text())["cases"]
    plain = json.loads((site / "datalist.json").read_text())["cases"]
    assert [{k: v for k, v in e.items() if k != "class"} for e in entries] == plain  # the same cases, plus a class
    assert all("class" not in e for e in plain)
    assert sorted(c["class"] for c in data.train + data.val) == sorted(HEMISPHERE_CLASSES.index(e["class"]) for e in entries)
    assert "cases per class: no_tumour" in data.description
    before = (site / "datalist.hemisphere.json").stat().st_mtime_ns
    assert write_hemisphere_datalist(site) == "datalist.hemisphere.json"
    assert (site / "datalist.hemisphere.json").stat().st_mtime_ns == before  # unchanged content: not rewritten
    with pytest.raises(SiteConfigError, match="the built-in phantom labels each case by the hemisphere"):
        load_site_data(config, tmp_path, "site-1", ClsTask(labels="case", classes=CLASSES))
