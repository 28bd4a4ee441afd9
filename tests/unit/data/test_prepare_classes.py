"""``omnifm-prepare-data --classes labels.csv``: per-case classes into the datalist; every CSV row or
case that cannot be used is reported by CSV line or case index (never by its name); exit codes;
the prepared site passes the integrity gate in case mode."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omnifm.data.ingest.case_classes import case_name, read_class_csv
from omnifm.data.ingest.paired import prepare_paired
from omnifm.tools import verify_data
from omnifm.tools.prepare_data import main

NAMES = ("DOE_JANE_01", "DOE_JOHN_02", "ROE_RICH_03", "ROE_RUTH_04")  # sorted: case_000 .. case_003


def _nifti(path: Path, seed: int, label: bool = False) -> None:
    rng = np.random.default_rng(seed)
    data = (rng.random((8, 8, 4)) > 0.7).astype(np.uint8) if label else rng.normal(100, 10, (8, 8, 4)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """Four NIfTI cases named like patients (``images/<name>.nii.gz`` with ``labels/<name>.nii.gz``)."""
    root = tmp_path / "export"
    for i, name in enumerate(NAMES):
        _nifti(root / "images" / f"{name}.nii.gz", i)
        _nifti(root / "labels" / f"{name}.nii.gz", i, label=True)
    return root


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _run(export: Path, tmp_path: Path, csv: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = main(["--input", str(export), "--output", str(out), "--classes", str(csv), "--quiet", *extra])
    datalist = json.loads((out / "datalist.json").read_text()) if (out / "datalist.json").is_file() else {}
    return code, datalist


def test_good_missing_and_unknown_rows(export: Path, tmp_path: Path, capsys):
    csv = _csv(tmp_path, "PatientID,Diagnosis,Comment\n"
                         "DOE_JANE_01,benign,\n"           # line 2: good
                         "DOE_JOHN_02, malignant ,x\n"     # line 3: good (trimmed)
                         "SMITH_ANNA_09,benign,\n"         # line 4: names no case
                         "ROE_RICH_03,glioma,\n"           # line 5: unknown class
                         "\n"                              # line 6: empty, ignored
                         "ROE_RUTH_04,,\n")                # line 7: blank class
    code, datalist = _run(export, tmp_path, csv, "--class-names", "benign", "malignant")
    out = capsys.readouterr().out
    assert code == 0
    assert [case.get("class") for case in datalist["cases"]] == ["benign", "malignant", None, None]
    assert [line for line in out.splitlines() if line.startswith("class: ")] == [
        "class: CSV line 4: names no case in the input folder; row ignored",
        "class: CSV line 5: class is not one of --class-names ['benign', 'malignant']; row ignored",
        "class: CSV line 7: blank class; row ignored",
        "class: case 2 (case_002): its CSV row was ignored (line 5); converted without a class",
        "class: case 3 (case_003): its CSV row was ignored (line 7); converted without a class",
    ]
    assert "note: 2 of 4 converted case(s) have a class from the CSV" in out
    assert not [secret for secret in ("DOE", "ROE", "SMITH", "glioma", str(tmp_path)) if secret in out]


def test_a_case_no_row_names_is_converted_without_a_class(export: Path, tmp_path: Path, capsys):
    csv = _csv(tmp_path, "case,class\nDOE_JANE_01,benign\nDOE_JOHN_02,malignant\nROE_RICH_03,benign\n")
    code, datalist = _run(export, tmp_path, csv)
    assert code == 0 and len(datalist["cases"]) == 4 and "class" not in datalist["cases"][3]
    assert "class: case 3 (case_003): no row of the CSV names it; converted without a class" in capsys.readouterr().out


def test_semicolons_named_columns_and_conflicting_rows(export: Path, tmp_path: Path, capsys):
    csv = _csv(tmp_path, "\ufeffclass;notes;case\nbenign;;DOE_JANE_01\nmalignant;;DOE_JANE_01\nbenign;;DOE_JOHN_02\n"
                         "benign;;DOE_JOHN_02\nmalignant;;ROE_RICH_03\nbenign;;ROE_RUTH_04\n")
    code, datalist = _run(export, tmp_path, csv)
    assert code == 0
    assert [case.get("class") for case in datalist["cases"]] == [None, "benign", "malignant", "benign"]
    assert "class: case 0 (case_000): CSV lines 2, 3 give it different classes; converted without a class" in \
        capsys.readouterr().out  # a repeated row with the same class (lines 4, 5) is fine


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("", "the CSV is empty"),
    ("case\nDOE_JANE_01\n", "needs two columns"),
    ("case,class\n", "has a header but no row"),
])
def test_an_unusable_csv_is_exit_code_2_before_anything_is_converted(export, tmp_path, capsys, text, message):
    csv = tmp_path / "labels.csv" if text is None else _csv(tmp_path, text)
    code, datalist = _run(export, tmp_path, csv)
    assert code == 2 and datalist == {} and message in capsys.readouterr().err


def test_no_converted_case_with_a_class_is_exit_code_1(export: Path, tmp_path: Path):
    code, datalist = _run(export, tmp_path, _csv(tmp_path, "case,class\nSMITH_ANNA_09,benign\n"))
    assert code == 1 and len(datalist["cases"]) == 4


def test_class_names_need_a_csv(export: Path, tmp_path: Path):
    with pytest.raises(SystemExit) as err:
        main(["--input", str(export), "--output", str(tmp_path / "out"), "--class-names", "a", "b"])
    assert err.value.code == 2


def test_a_name_in_two_folders_gives_neither_case_a_class(tmp_path: Path):
    root = tmp_path / "export"
    for i, site in enumerate(("north", "south")):
        _nifti(root / site / "P01" / "image.nii.gz", i)
    cases = [{"image": str(root / s / "P01" / "image.nii.gz")} for s in ("north", "south")]
    assert [case_name(c, root) for c in cases] == ["P01", "P01"]
    from omnifm.data.ingest.case_classes import attach_classes

    entries = [{"id": "case_000"}, {"id": "case_001"}]
    problems = attach_classes([{"id": e["id"], **c} for e, c in zip(entries, cases)], entries,
                              read_class_csv(_csv(tmp_path, "case,class\nP01,benign\n")), root)
    assert all("class" not in e for e in entries)
    assert problems[0] == ("case 0 (case_000): CSV line 2 names 2 cases (the same name in several folders; "
                           "rename them apart); converted without a class")


def test_paired_cases_get_their_class(tmp_path: Path):
    root = tmp_path / "export"
    for i, name in enumerate(("P01", "P02")):
        _nifti(root / name / "ct.nii.gz", i)
        _nifti(root / name / "t1ce.nii.gz", i + 5)
        _nifti(root / name / "label.nii.gz", i, label=True)
    table = read_class_csv(_csv(tmp_path, "case,class\nP02,malignant\nP01,benign\n"))
    summary = prepare_paired(root, tmp_path / "out", progress=False, class_table=table)
    entries = json.loads((tmp_path / "out" / "datalist.json").read_text())["cases"]
    assert [e["class"] for e in entries] == ["benign", "malignant"] and summary.classed == 2
    assert summary.to_dict()["class_problems"] == []


def test_the_prepared_site_passes_the_gate_in_case_mode(export: Path, tmp_path: Path):
    """prepare-data -> omnifm_site.json with case_classes -> verify-data: the class-less case is bad, by index."""
    csv = _csv(tmp_path, "case,class\nDOE_JANE_01,benign\nDOE_JOHN_02,malignant\nROE_RICH_03,malignant\n")
    assert _run(export, tmp_path, csv)[0] == 0
    site = tmp_path / "omnifm_site.json"
    site.write_text(json.dumps({"format": "nifti", "data_root": str(tmp_path / "out"), "modalities": ["t1"],
                                "case_classes": ["benign", "malignant"]}))
    report = verify_data.verify_site(site)
    assert report.good == [0, 1, 2] and [i for i, _ in report.bad] == [3] and report.usable
    assert report.bad[0][1].startswith('no "class" in the datalist')


def test_a_one_class_site_loads_for_the_classifier_and_its_log_line_says_so(export: Path, tmp_path: Path):
    """The FL client's path (load_site_data): classes reach the cases; one class only is a note, not a stop."""
    from omnifm.data.site import load_site_data
    from omnifm.data.site_config import load_site_config
    from omnifm.tasks.classification import ClsTask

    rows = "".join(f"{name},benign\n" for name in NAMES)
    assert _run(export, tmp_path, _csv(tmp_path, "case,class\n" + rows))[0] == 0
    site = tmp_path / "omnifm_site.json"
    site.write_text(json.dumps({"format": "nifti", "data_root": str(tmp_path / "out"), "modalities": ["t1"]}))
    task = ClsTask(labels="case", classes=("benign", "malignant"))
    data = load_site_data(load_site_config(site), tmp_path / "ws", "site-1", task)
    assert [case["class"] for case in data.train + data.val] == [0, 0, 0, 0]
    assert "cases per class: benign 4, malignant 0; NOTE: the usable cases cover only one class ('benign', 4 cases)" \
        in data.description
    assert not [secret for secret in ("DOE", "ROE", str(tmp_path)) if secret in data.description]
