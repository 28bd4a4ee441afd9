"""omnifm-prepare-data --paired: case folders of several modalities become paired datalist entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omnifm.data.ingest.paired import discover_paired, prepare_paired
from omnifm.data.integrity import resolve_cases, verify_cases
from omnifm.data.phantom.paired import write_paired_phantom_site
from omnifm.data.site_config import parse_site_config
from omnifm.tasks.segmentation import BRATS_CLASSES
from omnifm.tools import prepare_data

SHAPE = (24, 24, 8)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """Three patient folders (CT + T1CE NIfTI + label); patient b's T1CE is on another grid, c has no label."""
    phantom = tmp_path_factory.mktemp("phantom")
    entries = write_paired_phantom_site(phantom, ["ct", "t1ce"], 3, seed=0, shape=SHAPE)
    root = tmp_path_factory.mktemp("export")
    for name, entry in zip("abc", entries):
        folder = root / f"patient_{name}"
        folder.mkdir()
        for modality, path in entry["images"].items():
            shutil.copy(path, folder / f"{modality}.nii.gz")
        if name != "c":
            shutil.copy(entry["label"], folder / "label.nii.gz")
    shifted = nib.load(root / "patient_b" / "t1ce.nii.gz")
    affine = shifted.affine.copy()
    affine[0, 3] += 7.0
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), affine), root / "patient_b" / "t1ce.nii.gz")
    return root


def test_case_folders_are_found_with_their_modalities(export):
    cases = discover_paired(export)
    assert [sorted(c["images"]) for c in cases] == [["ct", "t1ce"]] * 3
    assert [c["label"] is not None for c in cases] == [True, True, False]


def test_paired_cases_are_prepared_and_pass_the_gate(export, tmp_path, capsys):
    summary = prepare_paired(export, tmp_path / "out", progress=True)
    printed = capsys.readouterr().out
    assert summary.converted == ["case_000", "case_001"] and [s.index for s in summary.skipped] == [2]
    assert "no label" in summary.skipped[0].reason
    assert any(note.startswith("case_001: t1ce left out (") for note in summary.notes)
    assert str(export) not in printed + summary.table(), "no path in what is printed"
    cases = json.loads((tmp_path / "out" / "datalist.json").read_text())["cases"]
    assert cases[0]["images"] == {"ct": "images/ct/case_000.nii.gz", "t1ce": "images/t1ce/case_000.nii.gz"}
    assert list(cases[1]["images"]) == ["ct"]
    config = parse_site_config({"format": "nifti", "data_root": str(tmp_path / "out"), "modalities": ["ct", "t1ce"],
                                "label_map": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}},
                               tmp_path)
    report = verify_cases(resolve_cases(config), config, list(BRATS_CLASSES), keep_loaded=True)
    assert report.good == [0, 1] and report.masked == [(1, "t1ce", "not in this case")]
    assert report.loaded[0]["present"].tolist() == [1, 1]


def test_the_command_line_prepares_paired_cases_and_refuses_mixed_flags(export, tmp_path, capsys):
    assert prepare_data.main(["--paired", "--input", str(export), "--output", str(tmp_path / "o"), "--quiet"]) == 0
    assert "cases converted | 2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--paired", "--modality", "ct", "--input", str(export), "--output", str(tmp_path / "p")])
    assert exit_info.value.code == 2 and "drop --format and --modality" in capsys.readouterr().err


def test_a_dicom_series_folder_named_by_its_modality_is_one_image_of_the_case(tmp_path):
    pytest.importorskip("pydicom")
    (entry,) = write_paired_phantom_site(tmp_path / "phantom", ["ct", "t1ce"], 1, seed=1, shape=SHAPE, fmt="dicom")
    folder = tmp_path / "export" / "patient"
    shutil.copytree(entry["images"]["ct"], folder / "ct")
    shutil.copy(entry["label"], folder / "label.nii.gz")
    summary = prepare_paired(tmp_path / "export", tmp_path / "out", progress=False)
    assert summary.converted == ["case_000"] and not summary.notes, summary.table()
    (case,) = json.loads((tmp_path / "out" / "datalist.json").read_text())["cases"]
    assert case["images"] == {"ct": "images/ct/case_000.nii.gz"}
    ct = np.asarray(nib.load(tmp_path / "out" / case["images"]["ct"]).dataobj)
    assert ct.shape == SHAPE and ct.min() < -500, "HU after the DICOM rescale"
