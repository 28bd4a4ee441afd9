"""``omnifm-prepare-data``: a DICOM series round-trips to anonymous RAS NIfTI; exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omnifm.tools.prepare_data import main

pydicom = pytest.importorskip("pydicom")

from omnifm.data.dicom_series import write_dicom_series  # noqa: E402

PATIENT = "DOE^JANE^FAKE"
SLOPE, INTERCEPT = 1.5, -200.0
ROWS, COLS, SLICES = 24, 18, 10
REPO = Path(__file__).resolve().parents[3]


def _write_series(folder: Path, stored: np.ndarray, seed: int = 0) -> list[Path]:
    """Axial series, 0.8 x 0.8 mm pixels, 3 mm apart, written in shuffled order with shuffled InstanceNumber."""
    rng = np.random.default_rng(seed)
    order, instances = rng.permutation(len(stored)), rng.permutation(len(stored)) + 1
    return write_dicom_series(
        folder,
        stored,
        (0.8, 0.8, 3.0),
        "MR",
        origin=(10.0, -30.0, 0.0),
        slope=SLOPE,
        intercept=INTERCEPT,
        patient_name=PATIENT,
        patient_id="DOE-0001",
        series_description="DOE AX FLAIR",
        file_order=order,
        instance_numbers=instances,
        file_name="DOE_JANE_{count:03d}.dcm",
    )


@pytest.fixture
def stored() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 3000, size=(SLICES, ROWS, COLS)).astype(np.int16)


@pytest.fixture
def export(tmp_path: Path, stored: np.ndarray) -> Path:
    root = tmp_path / "DOE_JANE_export"
    _write_series(root / "DOE_JANE", stored)
    return root


def _leaks(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets if s in text]


@pytest.mark.dicom
def test_cli_round_trips_a_series_to_anonymous_ras_nifti(tmp_path: Path, export: Path, stored, capsys) -> None:
    out = tmp_path / "prepared"
    assert main(["--input", str(export), "--output", str(out)]) == 0
    printed = capsys.readouterr()
    assert "[1/1] case_000 ok (flair, 10 slices, unlabelled" in printed.out
    assert "| cases converted | 1 |" in printed.out and "| slices read | 10 |" in printed.out

    image = nib.load(out / "images" / "case_000.nii.gz")
    assert image.shape == (COLS, ROWS, SLICES) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.8, 3.0), rtol=1e-5)
    np.testing.assert_allclose(image.affine[:3, 3], [-10.0 - 0.8 * (COLS - 1), 30.0 - 0.8 * (ROWS - 1), 0.0], atol=1e-4)
    # RAS: i runs right (DICOM columns reversed), j anterior (rows reversed), k superior (by position)
    expected = SLOPE * np.transpose(stored[:, ::-1, ::-1], (2, 1, 0)).astype(np.float64) + INTERCEPT
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)

    datalist = json.loads((out / "datalist.json").read_text())
    entry = {"id": "case_000", "image": "images/case_000.nii.gz", "label": None, "modality": "flair"}
    assert datalist == {"cases": [entry]}
    public = printed.out + printed.err + json.dumps(datalist) + " ".join(p.name for p in out.rglob("*"))
    assert not _leaks(public, "DOE", "JANE", str(export), str(tmp_path), ".dcm")


@pytest.mark.dicom
def test_cli_spacing_modality_and_quiet(tmp_path: Path, export: Path, capsys) -> None:
    out = tmp_path / "prepared"
    assert main(["--input", str(export), "--output", str(out), "--format", "dicom", "--spacing", "1.6", "1.6", "3",
                 "--modality", "t1ce", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1]" not in printed and "| cases converted | 1 |" in printed
    image = nib.load(out / "images" / "case_000.nii.gz")
    assert image.shape[2] == SLICES and abs(image.shape[0] - 9) <= 1 and abs(image.shape[1] - 12) <= 1  # MONAI rounding
    np.testing.assert_allclose(image.header.get_zooms(), (1.6, 1.6, 3.0), rtol=1e-5)
    assert json.loads((out / "datalist.json").read_text())["cases"][0]["modality"] == "t1ce"


@pytest.mark.dicom
def test_cli_exits_1_when_no_case_converts(tmp_path: Path, stored, capsys) -> None:
    files = _write_series(tmp_path / "in" / "DOE_JANE", stored[:4])
    for path in files:
        path.write_bytes(path.read_bytes()[:-200])  # every slice loses part of its pixel data
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr()
    assert "case_000 skipped" in printed.out and "| cases converted | 0 |" in printed.out
    assert not _leaks(printed.out + printed.err, "DOE", str(tmp_path))
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out2"), "--format", "nifti"]) == 1


def test_cli_exits_2_on_invalid_arguments(tmp_path: Path, capsys) -> None:
    assert main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert "input_dir" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "out")]) == 2
    with pytest.raises(SystemExit) as err:
        main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--format", "png"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--spacing", "1", "1"])


def test_entry_point_is_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()  # (tomllib needs Python 3.11; the package supports 3.10)
    assert 'omnifm-prepare-data = "omnifm.tools.prepare_data:main"' in text


def _nifti_export(tmp_path: Path) -> Path:
    import nibabel as nib

    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4), np.float32), np.eye(4)), tmp_path / "in" / "c_image.nii.gz")
    return tmp_path / "in"


@pytest.mark.parametrize(
    ("make_output", "message"),
    [
        (lambda t: (t / "out").write_text("x") and t / "out", "is a file, not a folder"),
        (lambda t: (t / "f").write_text("x") and t / "f" / "out", r"cannot be created or written \(Not a directory\)"),
        (lambda t: ((t / "out").mkdir(), (t / "out" / "images").write_text("x")) and t / "out",
         r"cannot be created or written \(File exists\)"),
    ],
    ids=["output-is-a-file", "output-below-a-file", "images-is-a-file"],
)
def test_unusable_output_is_a_one_line_error_with_exit_2(tmp_path: Path, make_output, message, capsys) -> None:
    assert main(["--input", str(_nifti_export(tmp_path)), "--output", str(make_output(tmp_path)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_read_only_output_is_a_one_line_error_with_exit_2(tmp_path: Path, capsys) -> None:
    target = Path("/sys/omnifm-prepare-data-test")  # /sys refuses new entries, even for root
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("this machine's /sys accepts new folders")
    assert main(["--input", str(_nifti_export(tmp_path)), "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be created or written (Operation not permitted)" in err, err


def test_implausible_spacing_is_an_argument_error(tmp_path: Path, capsys) -> None:
    assert main(["--input", str(_nifti_export(tmp_path)), "--output", str(tmp_path / "out"),
                 "--spacing", "0.001", "0.001", "0.001"]) == 2
    assert "spacing[0] (mm) must be in [0.05, 20.0]" in capsys.readouterr().err


def test_a_write_failure_after_the_start_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from omnifm.data.ingest import prepare  # prepare_dataset looks _write_datalist up there

    def full_disk(out, entries):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare, "_write_datalist", full_disk)
    assert main(["--input", str(_nifti_export(tmp_path)), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
